"""The gallery page's HTML: the collection summary, the toolbar, one card per scan and the viewer dialog.

Server-rendered, so the scans, their areas and the summary read without JavaScript; report.js adds the overlays,
sorting, filtering and the viewer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..labels import LabelScheme
from .batch import Batch, Scan
from .page import Page, esc, fmt_pct, hex_color, legend_html, swatch

CARD_SIDE = 480  # long side of the card thumbnails (CSS shows them ~300 px wide; sharp on 1.5x screens)


CARD_ROWS = 5  # classes listed on a card; the viewer lists them all


@dataclass
class Rendered:
    """One scan's files in the page's folder: preview size, its compressed mask, or the problem."""

    width: int = 0
    height: int = 0
    mask: list | None = None  # [w, h, base64 zlib bytes]
    error: str = ""
    levels: dict = field(default_factory=dict)  # the confidence maps' previews: {kind: [w, h, base64 zlib bytes]}
    level_error: str = ""  # a confidence map that could not be read


def area_table(scan: Scan, scheme: LabelScheme) -> str:
    """The scan's damage classes, largest first: % of the object and pixels (CSS shows CARD_ROWS on a card)."""
    rows = []
    present = [(scan.pixels.get(scheme.names[i], 0), i) for i in scheme.damage_indices]
    for px, i in sorted((p for p in present if p[0] > 0), reverse=True):
        c = scheme.classes[i]
        pct = 100.0 * px / scan.object_px if scan.object_px else math.nan
        size = f"{px:,} px" if scan.mm2_per_px is None else f"{fmt_area(px * scan.mm2_per_px)} ({px:,} px)"
        rows.append(
            f'<tr><th scope="row">{swatch(hex_color(c.shown))}{esc(c.name)}</th>'
            f'<td class="num">{fmt_pct(pct)} %</td><td class="num">{size}</td></tr>'
        )
    if not rows:
        return '<p class="empty">no damage found</p>'
    more = len(rows) - CARD_ROWS
    foot = (
        f'<tfoot class="more"><tr><td colspan="3">+ {more} more (open the scan)</td></tr></tfoot>' if more > 0 else ""
    )
    return (
        '<table class="areas"><thead><tr><th scope="col">class</th><th scope="col" class="num">% of object'
        f'</th><th scope="col" class="num">{"area" if scan.mm2_per_px else "pixels"}</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody>{foot}</table>"
    )


def fmt_area(mm2: float) -> str:
    """An area in mm² below 100 mm², else in cm² (condition reports' units)."""
    return f"{mm2:.3g} mm²" if mm2 < 100 else f"{mm2 / 100:.3g} cm²"


def fit_box(w: int, h: int, box: float = 4 / 3) -> str:
    """Inline style placing a w x h picture centred in a 4:3 frame (percentages of the frame)."""
    if not w or not h:
        return "left:0;top:0;width:100%;height:100%"
    if w / h >= box:
        height = 100 * box * h / w
        return f"left:0;width:100%;top:{(100 - height) / 2:.3f}%;height:{height:.3f}%"
    width = 100 * (w / h) / box
    return f"top:0;height:100%;left:{(100 - width) / 2:.3f}%;width:{width:.3f}%"


def card_html(k: int, scan: Scan, r: Rendered, scheme: LabelScheme, page: Page, width: int) -> str:
    name = esc(scan.name)
    if r.width:
        folder = "thumbs" if max(r.width, r.height) > CARD_SIDE else "previews"  # as gallery.render_scan writes
        thumb = page.url(f"{folder}/{k:0{width}d}.jpg")
        tw, th = (r.width, r.height) if max(r.width, r.height) <= CARD_SIDE else _scaled(r.width, r.height)
        picture = (
            f'<img src="{thumb}" loading="lazy" decoding="async" width="{tw}" height="{th}" '
            f'alt="Scan {name}"><canvas width="0" height="0" aria-hidden="true"></canvas>'
        )
    else:
        picture = f'<span class="empty">no preview: {esc(r.error)}</span>'
    return (
        f'<article class="card" data-i="{k}" id="scan-{k}">'
        f'<button type="button" class="open" aria-label="Open {name} larger">'
        f'<span class="frame"><span class="fit" style="{fit_box(r.width, r.height)}">{picture}</span></span>'
        f'</button><div class="body"><h3><span class="rank">#{k + 1}</span> {name}</h3>'
        f'<p class="total">damage <b>{fmt_pct(scan.damage_pct)} %</b> of the object'
        f'<span class="dims">{scan.width}×{scan.height} px</span></p>{area_table(scan, scheme)}</div></article>'
    )


def _scaled(w: int, h: int) -> tuple[int, int]:
    s = CARD_SIDE / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def summary_html(batch: Batch) -> str:
    """Damage per class over the whole collection (summed pixels / summed object area) as CSS bars."""
    scheme, scans = batch.scheme, batch.scans
    obj = sum(s.object_px for s in scans)
    rows = []
    for i in scheme.damage_indices:
        name = scheme.names[i]
        px = sum(s.pixels.get(name, 0) for s in scans)
        n = sum(s.pixels.get(name, 0) > 0 for s in scans)
        rows.append((100.0 * px / obj if obj else 0.0, n, i))
    top = max((p for p, _, _ in rows), default=0) or 1
    body = []
    for pct, n, i in sorted(rows, key=lambda r: (-r[0], r[2])):
        if n == 0:
            continue
        c = scheme.classes[i]
        color = hex_color(c.shown)
        body.append(
            f'<tr><th scope="row">{swatch(color)}{esc(c.name)}</th><td class="barcell"><span class="bar">'
            f'<i style="--w:{max(0.3, 100 * pct / top):.2f}%;--c:{color}"></i>{fmt_pct(pct)} %</span></td>'
            f'<td class="num">{n} of {len(scans)}</td></tr>'
        )
    absent = [scheme.names[i] for p, n, i in rows if n == 0]
    damage_px = sum(s.pixels.get(scheme.names[i], 0) for s in scans for i in scheme.damage_indices)
    damaged = sum(s.damage_pct > 0 for s in scans)
    pcts = sorted(s.damage_pct for s in scans if not math.isnan(s.damage_pct))
    median = pcts[len(pcts) // 2] if pcts else math.nan
    worst = max(scans, key=lambda s: s.damage_pct if not math.isnan(s.damage_pct) else -1)
    kpis = [
        (f"{len(scans)}", "scans predicted"),
        (f"{damaged}", "with damage"),
        (f"{fmt_pct(100.0 * damage_px / obj if obj else math.nan)} %", "damage, whole collection"),
        (f"{fmt_pct(median)} %", "median scan"),
        (f"{fmt_pct(worst.damage_pct)} %", f"worst: {esc(worst.name)}"),
    ]
    table = (
        '<table class="bars"><caption>Damaged area per class, as % of all objects\' area together '
        '(background excluded)</caption><thead><tr><th scope="col">class</th><th scope="col">% of area</th>'
        f'<th scope="col" class="num">scans with it</th></tr></thead><tbody>{"".join(body)}</tbody></table>'
    )
    if not body:
        table = '<p class="empty">No damage found in any scan.</p>'
    hint = f'<p class="hint">Not found in any scan: {esc(", ".join(absent))}.</p>' if absent else ""
    items = "".join(f"<li><b>{v}</b><span>{t}</span></li>" for v, t in kpis)
    return f'<div class="summary-grid"><ul class="kpis">{items}</ul><div>{table}{hint}</div></div>'


def gallery_body(
    title: str,
    batch: Batch,
    shown: list[Scan],
    rendered: list[Rendered],
    classes: list[dict],
    max_images: int | None,
    notes: list[str],
    page: Page,
    width: int,
    layers: list[dict] | None = None,
) -> str:
    """The page body; ``layers`` (confidence.layer_list): the confidence maps the layer menu offers, if any."""
    scheme = batch.scheme
    present = damage_present(scheme, shown)
    meta = [f"{len(batch.scans)} scans", f"label scheme <code>{esc(scheme.name)}</code>"]
    if batch.run_dir:
        meta.append(f"model <code>{esc(Path(batch.run_dir).name)}</code>")
    cap = ""
    if len(shown) < len(batch.scans):
        cap = (
            f'<p class="note" id="cap">Showing the {len(shown)} {_first(shown)} of {len(batch.scans)} scans '
            f"(--max-images {max_images}); the summary above covers all {len(batch.scans)}.</p>"
        )
    cards = "".join(
        card_html(k, s, r, scheme, page, width) for k, (s, r) in enumerate(zip(shown, rendered, strict=True))
    )
    legend = legend_html([c for i, c in enumerate(classes) if i in present])
    return f"""<header class="top"><h1>{esc(title)}</h1><p class="meta">{" · ".join(meta)}</p></header>
<main id="content">
<section class="panel" id="summary" aria-labelledby="h-summary"><h2 id="h-summary">Collection summary</h2>
{notes_html(batch, notes)}{summary_html(batch)}</section>
<section id="gallery" aria-labelledby="h-gallery"><h2 id="h-gallery">Scans</h2>{cap}
{toolbar_html(scheme, present, classes, len(shown), any(s.uncertainty is not None for s in shown), layers)}
<noscript><p class="note">JavaScript is off: the damage overlays, sorting and filters need it.</p></noscript>
<div class="grid" id="grid">{cards}</div>
<p class="hint">Click a scan (or focus it and press Enter) to see it large; ← and → step through the shown scans.
Areas are % of the object (every pixel but background), from areas.csv. Legend: {legend}</p>
</section>
</main>
{viewer_html(layers)}"""


def damage_present(scheme: LabelScheme, shown: list[Scan]) -> list[int]:
    """Indices of the damage classes found in at least one shown scan: the toolbar offers only these."""
    return sorted(
        {
            int(i)
            for s in shown
            for i, _ in enumerate(scheme.names)
            if i in scheme.damage_indices and s.pixels.get(scheme.names[i], 0) > 0
        }
    )


def notes_html(batch: Batch, notes: list[str]) -> str:
    """The caller's notes, then the scans predict could not read (the first 20; all are in failures.csv)."""
    note_html = "".join(f'<p class="note">{esc(n)}</p>' for n in notes)
    if batch.failures:
        items = "".join(f"<li><code>{esc(p)}</code>: {esc(e)}</li>" for p, e in batch.failures[:20])
        more = f"<li>… and {len(batch.failures) - 20} more (failures.csv)</li>" if len(batch.failures) > 20 else ""
        note_html += (
            f'<div class="note"><b>{len(batch.failures)} scan(s) failed in predict</b> (failures.csv):'
            f"<ul>{items}{more}</ul></div>"
        )
    return note_html


def _first(shown: list[Scan]) -> str:
    return "most uncertain" if any(s.uncertainty is not None for s in shown) else "most damaged"


def toolbar_html(scheme: LabelScheme, present: list[int], classes: list[dict], n_shown: int,
                 uncertain: bool = False, layers: list[dict] | None = None) -> str:  # fmt: skip
    """Sort, filter and opacity controls, the layer menu when the batch has confidence maps, and one overlay chip
    per present class (and background, if any)."""
    bg = scheme.background_index
    toggles = present + ([bg] if bg is not None else [])
    chips = "".join(
        f'<label class="chip"><input type="checkbox" data-class="{i}"{" checked" if classes[i]["draw"] else ""}>'
        f"{swatch(classes[i]['color'])}{esc(classes[i]['name'])}</label>"
        for i in toggles
    )
    sort_opts = ['<option value="damage">most damaged first</option>', '<option value="name">name</option>']
    if uncertain:  # the server's order: look first where the model hesitates
        sort_opts.insert(0, '<option value="uncertainty" selected>most uncertain first</option>')
    sort_opts += [f'<option value="class:{i}">{esc(scheme.names[i])} area, largest first</option>' for i in present]
    filter_opts = ['<option value="">all scans</option>', '<option value="any">any damage</option>']
    filter_opts += [f'<option value="{i}">{esc(scheme.names[i])}</option>' for i in present]
    return f"""<form class="toolbar" id="toolbar" aria-label="Sort, filter and overlay" onsubmit="return false">
<label>Sort <select id="sort">{"".join(sort_opts)}</select></label>
<label>Show <select id="fclass">{"".join(filter_opts)}</select></label>
<label>above <input id="fmin" type="number" min="0" max="100" step="0.01" value="0"> %</label>
<label>Name <input id="fname" type="search" placeholder="contains…" size="12"></label>
<label>Overlay opacity <input id="opacity" type="range" min="0" max="100" value="70"></label>
{layer_html("layer", layers)}<output id="count" aria-live="polite">{n_shown} of {n_shown} scans shown</output>
<fieldset class="chips" id="classes"><legend>Draw</legend>{chips}
<button type="button" id="all-classes">all</button><button type="button" id="no-classes">none</button></fieldset>
</form>"""


def layer_html(select_id: str, layers: list[dict] | None) -> str:
    """The layer menu (classes, or a confidence map) and a colour bar 0..1 per map; nothing without maps."""
    if not layers:
        return ""
    options = '<option value="classes" selected>classes</option>' + "".join(
        f'<option value="{x["kind"]}">{esc(x["label"])}</option>' for x in layers
    )
    bars = "".join(
        f'<span class="cbar" data-layer="{x["kind"]}" role="img" aria-label="{esc(x["label"])}: dark 0 to light 1"'
        f' hidden>0<i style="background:{x["gradient"]}"></i>1</span>'
        for x in layers
    )
    return f'<label>Layer <select id="{select_id}">{options}</select></label>{bars}\n'


def viewer_html(layers: list[dict] | None) -> str:
    """The viewer dialog, with its own layer menu when the batch has confidence maps."""
    if not layers:
        return VIEWER_HTML
    at = VIEWER_HTML.index('<fieldset id="viewer-classes">')
    return VIEWER_HTML[:at] + layer_html("viewer-layer", layers) + VIEWER_HTML[at:]


# the viewer dialog: static; report.js fills it with the scan that is opened
VIEWER_HTML = """<dialog id="viewer" aria-labelledby="viewer-title"><div class="viewer">
<div class="stage"><div class="frame" id="viewer-frame"><span class="fit" style="left:0;top:0;width:100%;height:100%">
<img id="viewer-img" alt=""><canvas id="viewer-canvas" aria-hidden="true"></canvas></span></div></div>
<div class="side"><h2 id="viewer-title">scan</h2><p class="total" id="viewer-total"></p>
<div class="nav"><button type="button" id="viewer-prev">← previous</button>
<button type="button" id="viewer-next">next →</button><button type="button" id="viewer-close">close</button></div>
<label>Overlay opacity <input id="viewer-opacity" type="range" min="0" max="100" value="70"></label>
<fieldset id="viewer-classes"><legend>Draw</legend></fieldset>
<table class="areas" id="viewer-areas"></table>
</div></div></dialog>"""
