"""The study report of a run dir or a folder of runs: the compare table and plots, then each run in detail.

The numbers come from ``compare.compare`` (never recomputed here): it writes compare.csv, compare.md and its
plots into the page's files folder (``compare/``), and the table cells carry the compare.csv value they show
(``data-col``, ``data-value``), so the page and the CSV cannot disagree. Per run, the page shows what the run
directory holds: curves.png, per-class IoU from metrics.json (bars in the label scheme's colours), the
confusion matrix PNG, group tables, and the sample overlays (downscaled copies).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import pandas as pd

from ..compare import ci, compare, pm
from ..console import fmt
from ..images import atomic_write_bytes, encode_image
from ..runs import read_json_lenient, split_filename
from .gallery import fit, read_preview
from .page import Built, Page, esc, legend_html, swatch

MAX_SAMPLES = 6  # sample overlays shown per run
WIDE = ' class="wide"'  # a figure spanning the whole row (the per-class bars are wide)
RUN_COLUMNS = [  # (header, compare.csv column, format)
    ("status", "status", ""),
    ("init", "init", ""),
    ("self-training", "self_training", ""),
    ("schedule", "schedule", ""),
    ("train frac.", "train_fraction", "g"),
    ("seed", "seed", ".0f"),
    ("epochs", "epochs_run", ".0f"),
    ("train s", "train_time_s", ".0f"),
    ("img/s", "img_per_s", ".1f"),
    ("best val", "best_val", ".3f"),
    ("mIoU", "miou", ".3f"),
    ("damage mIoU", "damage_miou", ".3f"),
    ("damage IoU", "damage_iou", ".3f"),
    ("damage F1", "damage_f1", ".3f"),
    ("pixel acc.", "pixel_accuracy", ".3f"),
]
FIGURES = [  # compare's plots, with what they show
    ("per_class_iou.png", "Per-class test IoU per run or seed group (mean ± std)."),
    ("val_curves.png", "Validation score per epoch, every run (colour: encoder weights)."),
    ("score_vs_time.png", "Test score against training time: what each run's score cost."),
    ("data_efficiency.png", "Test score against the fraction of training images (log scale), per setting."),
]


def build_study(source: Path, page: Page, *, split: str, metric: str, thumb_size: int) -> Built:
    """Run compare into the page folder, copy each run's figures, return the page body."""
    result = compare([source], metric=metric, split=split, out=page.staging / "compare", console=None)
    table = pd.read_csv(page.staging / "compare" / "compare.csv", dtype=str, keep_default_na=False)
    runs = table[table["row_type"] == "run"].to_dict("records")
    groups = table[table["row_type"] != "run"].to_dict("records")
    by_name = {r["name"]: r for r in result.runs.to_dict("records")}
    order = sorted(
        runs, key=lambda r: (-_num(r["metric"]) if not math.isnan(_num(r["metric"])) else math.inf, r["name"])
    )
    best = order[0]["name"] if order and not math.isnan(_num(order[0]["metric"])) else None
    scheme = first_scheme([Path(r["path"]) for r in runs])
    sections = [
        run_section(k, r, by_name[r["name"]], page, split, scheme, thumb_size, r["name"] == best)
        for k, r in enumerate(order)
    ]

    name = source.resolve().name
    title = f"Study report — {name}"
    metric_label = f"{split} {metric}"
    meta = [f"{len(runs)} run(s)", f"split <code>{esc(split)}</code>", f"metric <code>{esc(metric)}</code>"]
    if scheme:
        meta.append(f"label scheme <code>{esc(scheme.get('name', ''))}</code>")
    figures = "".join(
        figure_html(page.url("compare/" + f), cap, wide=f == "per_class_iou.png")
        for f, cap in FIGURES
        if (page.staging / "compare" / f).is_file()
    )
    body = f"""<header class="top"><h1>{esc(title)}</h1><p class="meta">{" · ".join(meta)}</p>
{legend_html(scheme_classes(scheme)) if scheme else ""}</header>
<main id="content">
<section class="panel" id="comparison" aria-labelledby="h-compare"><h2 id="h-compare">Comparison</h2>
<p class="hint">Sorted by {esc(metric_label)}, best first (highlighted). Click a column header to sort.
The same numbers are in <a href="{page.url("compare/compare.csv")}">compare.csv</a> and
<a href="{page.url("compare/compare.md")}">compare.md</a>.</p>
{runs_table(order, metric, best)}
{groups_table(groups, metric)}
{class_iou_table(order, [c for c in result.runs.columns if c.startswith("iou_")], scheme)}
<ul class="hint">{"".join(f"<li>{esc(n)}</li>" for n in result.notes)}</ul>
</section>
{f'<section class="panel" id="plots" aria-labelledby="h-plots"><h2 id="h-plots">Plots</h2><div class="figs">{figures}</div></section>' if figures else ""}
<section id="runs" aria-labelledby="h-runs"><h2 id="h-runs">Runs</h2>{"".join(sections)}</section>
</main>"""  # noqa: E501
    return Built(title, body, {"kind": "study"}, len(runs), len(runs), list(result.notes))


def figure_html(url: str, caption: str, wide: bool = False, alt: str | None = None) -> str:
    """A linked, lazily loaded figure with a caption (the image opens full size on click)."""
    img = f'<img src="{url}" loading="lazy" alt="{esc(alt or caption)}">'
    return f'<figure{WIDE if wide else ""}><a href="{url}">{img}</a><figcaption>{esc(caption)}</figcaption></figure>'


def _num(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def cell(row: dict, col: str, spec: str) -> str:
    """A table cell showing compare.csv's value, formatted as compare.md does, with the raw value attached."""
    raw = row.get(col, "")
    value = _num(raw) if spec else raw
    text = fmt(value, spec) if spec else (raw or "—")
    cls = ' class="num"' if spec else (f' class="status-{esc(raw)}"' if col == "status" else "")
    return f'<td{cls} data-col="{esc(col)}" data-value="{esc(raw)}">{esc(text)}</td>'


SETTING_COLUMNS = {"status", "init", "self_training", "schedule", "train_fraction", "seed", "epochs_run", "img_per_s"}


def runs_table(rows: list[dict], metric: str, best: str | None) -> str:
    """The run table; settings equal in every run move to one line above it, so the table fits a laptop."""
    same = {
        col
        for _, col, _ in RUN_COLUMNS
        if col in SETTING_COLUMNS and len(rows) > 1 and len({r.get(col, "") for r in rows}) == 1
    }
    columns = [c for c in RUN_COLUMNS if c[1] not in same]
    common = "; ".join(
        f'{esc(h)} <span data-col="{esc(col)}" data-value="{esc(rows[0].get(col, ""))}">'
        f"{esc(fmt(_num(rows[0].get(col)), spec) if spec else rows[0].get(col, '') or '—')}</span>"
        for h, col, spec in RUN_COLUMNS
        if col in same
    )
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h, _, _ in columns)
    body = []
    for r in rows:
        delta = "baseline" if r.get("baseline") == r["name"] else None
        cells = "".join(cell(r, col, spec) for _, col, spec in columns)
        cells += (
            f'<td class="num" data-col="delta" data-value="{esc(r.get("delta", ""))}">{delta}</td>'
            if delta
            else cell(r, "delta", "+.3f")
        )
        cells += f"<td>{esc(ci({k: _num(r.get(k)) for k in ('ci_low', 'ci_high')}))}</td>"
        cls = ' class="best"' if r["name"] == best else ""
        body.append(
            f'<tr{cls} data-name="{esc(r["name"])}"><th scope="row"><a href="#run-{esc(_slug(r["name"]))}">'
            f"{esc(r['name'])}</a></th>{cells}</tr>"
        )
    common = f'<p class="hint" id="common">Every run: {common}.</p>' if common else ""
    return (
        f'{common}<div class="scroll"><table class="data sortable" id="compare-runs"><caption>Runs'
        f'</caption><thead><tr><th scope="col">run</th>{head}<th scope="col">Δ {esc(metric)}</th>'
        f'<th scope="col">95% CI</th></tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    )


def groups_table(groups: list[dict], metric: str) -> str:
    """Seed and fold groups: mean ± std (n), as compare.md shows them."""
    if not groups:
        return ""
    cols = [
        ("train s", "train_time_s", ".0f"),
        ("best val", "best_val", ".3f"),
        ("mIoU", "miou", ".3f"),
        ("damage mIoU", "damage_miou", ".3f"),
        ("damage F1", "damage_f1", ".3f"),
        (f"Δ {metric}", "delta", "+.3f"),
    ]
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h, _, _ in cols)
    body = []
    for g in groups:
        # compare.pm wants numbers, and whole counts for the "(n)"
        parsed = {k: _num(v) if k.endswith("_std") or k in {c for _, c, _ in cols} else v for k, v in g.items()}
        parsed.update({k: int(_num(v)) if v else 0 for k, v in g.items() if k.endswith("_n")})
        cells = "".join(
            f'<td class="num" data-col="{c}" data-value="{esc(g.get(c, ""))}">{esc(pm(parsed, c, s))}</td>'
            for _, c, s in cols
        )
        arm = f"<td>{esc(g.get('init') or '—')}</td><td>{esc(g.get('self_training') or '—')}</td>"
        body.append(
            f'<tr data-name="{esc(g["name"])}"><th scope="row">{esc(g["name"])}</th><td>{esc(g["row_type"])}</td>'
            f'<td class="num">{esc(g.get("n", ""))}</td>{arm}{cells}</tr>'
        )
    return (
        f'<div class="scroll"><table class="data sortable" id="compare-groups"><caption>Seed and '
        f'fold groups: mean ± std (n)</caption><thead><tr><th scope="col">group</th><th scope="col">kind</th>'
        f'<th scope="col">n</th><th scope="col">init</th><th scope="col">self-training</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def class_iou_table(rows: list[dict], cols: list[str], scheme: dict | None) -> str:
    """Per-class test IoU per run (``cols``: compare's iou_<class> run columns), headed by the class colours."""
    if not rows:
        return ""
    absent = [c for c in cols if all(math.isnan(_num(r.get(c))) for r in rows)]
    cols = [c for c in cols if c not in absent]
    if not cols:
        return ""
    note = f" Absent from every run's test split: {esc(', '.join(c[4:] for c in absent))}." if absent else ""
    colours = {c["name"]: c.get("display", c.get("color", "#888888")) for c in (scheme or {}).get("classes", [])}
    head = "".join(f'<th scope="col">{swatch(colours.get(c[4:], "#888888"))}{esc(c[4:])}</th>' for c in cols)
    body = "".join(
        f'<tr data-name="{esc(r["name"])}"><th scope="row">{esc(r["name"])}</th>'
        + "".join(cell(r, c, ".3f") for c in cols)
        + "</tr>"
        for r in rows
    )
    return (
        f'<div class="scroll"><table class="data sortable" id="compare-classes"><caption>Per-class '
        f"test IoU (—: absent from targets and predictions).{note}</caption>"
        f'<thead><tr><th scope="col">run</th>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    )


def first_scheme(run_dirs: list[Path]) -> dict | None:
    for d in run_dirs:
        config, _ = read_json_lenient(d / "config.json")
        if config and isinstance(config.get("label_scheme"), dict):
            return config["label_scheme"]
    return None


def scheme_classes(scheme: dict) -> list[dict]:
    return [
        {"name": c.get("name", "?"), "color": c.get("display", c.get("color", "#888888"))}
        for c in scheme.get("classes", [])
    ]


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)


def run_section(
    k: int, row: dict, info: dict, page: Page, split: str, scheme: dict | None, thumb_size: int, best: bool
) -> str:
    """One run: its settings, test numbers, per-class IoU bars, curves, confusion matrix and samples."""
    run_dir = Path(row["path"])
    config = read_json_lenient(run_dir / "config.json")[0] or {}
    run_scheme = config.get("label_scheme") or scheme or {}
    colours = {c.get("name"): c.get("display", c.get("color", "#888888")) for c in run_scheme.get("classes", [])}
    metrics = (read_json_lenient(run_dir / "metrics.json")[0] or {}).get(split) or {}
    facts = run_facts(row, run_dir)
    if row.get("note"):
        facts.append(("note", row["note"]))
    dl = "".join(f"<dt>{esc(a)}</dt><dd>{esc(b)}</dd>" for a, b in facts if b not in ("", None))
    per_class = metrics.get("per_class") or []
    bars = iou_bars(per_class, colours) if per_class else '<p class="empty">not evaluated on this split</p>'
    parts = [f'<div class="run-grid"><dl class="facts">{dl}</dl>{bars}</div>']
    figs = []
    for name, caption in (
        ("curves.png", "Loss and validation mIoU per epoch."),
        (
            split_filename("confusion_matrix", split, ".png"),
            f"Confusion matrix on {split}, row-normalised (rows: ground truth).",
        ),
    ):
        url = copy_file(run_dir / name, page, f"runs/{k:03d}/{name}")
        if url:
            figs.append(figure_html(url, caption))
    if figs:
        parts.append(f'<div class="figs">{"".join(figs)}</div>')
    parts.append(groups_html(metrics.get("groups") or {}))
    samples = sorted((run_dir / "samples").glob("*.jpg"))[:MAX_SAMPLES] if (run_dir / "samples").is_dir() else []
    shots = []
    for j, path in enumerate(samples):
        url = copy_sample(path, page, f"runs/{k:03d}/samples/{j:02d}.jpg", 2 * thumb_size)
        if url:
            alt = f"Validation sample {path.stem}: image, prediction overlay, ground-truth overlay"
            shots.append(figure_html(url, f"{path.stem}: image · prediction · ground truth", alt=alt))
    if shots:
        parts.append(f'<h3>Validation samples</h3><div class="samples">{"".join(shots)}</div>')
    score = fmt(_num(row.get("metric")))
    return (
        f'<details class="run" id="run-{esc(_slug(row["name"]))}"{" open" if best else ""}><summary>'
        f'{esc(row["name"])}<span class="meta">{esc(row.get("status", ""))} · score {esc(score)}'
        f'{" · best" if best else ""}</span></summary><div class="inner">{"".join(parts)}</div></details>'
    )


def run_facts(row: dict, run_dir: Path) -> list[tuple[str, str]]:
    """The settings list of a run section: architecture, initialisation, self-training, budget, paths."""
    return [
        ("architecture", f"{row.get('arch', '')} / {row.get('encoder', '')}"),
        ("encoder weights", row.get("weights_path") or row.get("weights", "")),
        ("initialisation", row.get("init", "")),
        ("self-training", row.get("self_training", "")),
        ("schedule", row.get("schedule", "")),
        ("train fraction", row.get("train_fraction", "")),
        ("seed", row.get("seed", "")),
        ("epochs", f"{fmt(_num(row.get('epochs_run')), '.0f')} of {fmt(_num(row.get('epochs')), '.0f')}"),
        ("training time", f"{fmt(_num(row.get('train_time_s')), '.0f')} s"),
        (
            "parameters",
            f"{fmt(_num(row.get('params_trainable')), ',.0f')} trainable of "
            f"{fmt(_num(row.get('params_total')), ',.0f')}",
        ),
        ("manifest", row.get("manifest", "")),
        ("run directory", str(run_dir)),
    ]


def iou_bars(per_class: list[dict], colours: dict) -> str:
    rows = []
    for c in per_class:
        iou = c.get("iou")
        value = float(iou) if isinstance(iou, int | float) and not math.isnan(float(iou)) else math.nan
        colour = colours.get(c.get("name"), "#888888")
        bar = (
            '<span class="empty">absent</span>'
            if math.isnan(value)
            else f'<span class="bar"><i style="--w:{max(0.3, 100 * value):.2f}%;--c:{esc(colour)}"></i>'
            f"{value:.3f}</span>"
        )
        rows.append(
            f'<tr><th scope="row">{swatch(colour)}{esc(c.get("name", ""))}</th><td class="barcell">{bar}</td>'
            f'<td class="num">{int(c.get("support", 0) or 0):,}</td></tr>'
        )
    return (
        '<table class="bars iou"><caption>Per-class IoU on the test split (bar: 0 to 1)</caption><thead><tr>'
        '<th scope="col">class</th><th scope="col">IoU</th><th scope="col" class="num">target pixels</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def groups_html(groups: dict) -> str:
    """evaluate's per-group summaries (one table per manifest group column), when there are any."""
    out = []
    for column, rows in groups.items():
        if not rows:
            continue
        body = "".join(
            f'<tr><th scope="row">{esc(r.get("group", ""))}</th><td class="num">{esc(r.get("n_images", ""))}</td>'
            + "".join(f'<td class="num">{esc(fmt(_num(r.get(k))))}</td>' for k in ("miou", "damage_miou", "damage_f1"))
            + "</tr>"
            for r in rows
        )
        out.append(
            f'<div class="scroll"><table class="data sortable"><caption class="hint">By {esc(column)}</caption>'
            '<thead><tr><th scope="col">group</th><th scope="col">images</th><th scope="col">mIoU</th>'
            '<th scope="col">damage mIoU</th><th scope="col">damage F1</th></tr></thead>'
            f"<tbody>{body}</tbody></table></div>"
        )
    return "".join(out)


def copy_file(path: Path, page: Page, rel: str) -> str | None:
    """Copy a figure into the page folder; its relative URL, or None when the run has no such file."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    atomic_write_bytes(page.staging / rel, data)
    return page.url(rel)


def copy_sample(path: Path, page: Page, rel: str, long_side: int) -> str | None:
    try:
        rgb = fit(read_preview(path, long_side), long_side, cv2.INTER_AREA)
    except Exception:  # an unreadable sample costs its picture, not the report
        return None
    atomic_write_bytes(page.staging / rel, encode_image(rgb, ".jpg", 85))
    return page.url(rel)
