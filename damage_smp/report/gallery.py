"""The gallery report of a predict batch: scans worst first, damage drawn on top, class toggles and filters.

Reads what ``damage-smp predict`` writes (predict.json for the label scheme, areas.csv or the per-image
``*_areas.json`` for the areas, ``*_index.png`` or ``*_mask.png`` for the masks, the original scans named in the
``image`` column for the previews) and writes into the page's files folder:

- ``previews/NNNN.jpg`` (the viewer, ``thumb_size`` long side) and ``thumbs/NNNN.jpg`` (the cards, 480 px long
  side; only for previews larger than that, smaller ones serve as their own thumbnail)
- ``masks/NNNN.js``: the class-index masks of 64 scans each, at preview size, zlib-compressed and base64'd in a
  small script (``DSMP_MASKS(chunk, {scan: [w, h, data]})``) that the page loads when a scan scrolls into view.
  Masks travel as bytes, not images, because a canvas that reads pixels of a file:// image is tainted in
  Chromium and Firefox; the page never reads pixels back, it only writes them.
- ``conf/NNNN.js``: when the batch saved confidence maps (``predict --save ...,prob,uncertainty``), their previews
  at the same size for the page's layer menu (confidence.py; a batch without them gets no menu and no folder).

A mask is shrunk so that damage stays visible: a preview pixel whose block holds any damage shows a damage class
(the highest class index among those in the block), others take the nearest pixel. Thin hairs and scratches of
a 10,000-pixel scan would vanish from a 1,024-pixel preview under plain nearest-neighbour sampling.
"""

from __future__ import annotations

import base64
import json
import math
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps
from rich.console import Console

from ..console import progress_bar
from ..images import atomic_write_bytes, encode_image, read_image
from ..labels import LabelScheme
from .batch import Scan, gallery_order, read_batch, read_index
from .confidence import CHUNK as LEVEL_CHUNK
from .confidence import layer_list, render_levels, write_level_chunks
from .gallery_html import CARD_SIDE, Rendered, gallery_body
from .page import Built, Page

CHUNK = 64  # masks per script file: few files, and one file's worth decoded when a scan scrolls into view


# ============================================================================================ images
def read_preview(path: Path, long_side: int) -> np.ndarray:
    """A scan -> (h, w, 3) uint8 RGB with its long side at most ``long_side`` (EXIF rotation applied).

    JPEGs are decoded at a reduced scale (libjpeg's DCT scaling), which makes a 2,000-scan report of large
    JPEGs several times faster; other formats are decoded whole and shrunk.
    """
    if path.suffix.lower() in (".jpg", ".jpeg"):
        try:
            with Image.open(path) as im:
                w, h = im.size
                scale = long_side / max(w, h)
                if scale < 1:
                    im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
                rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except Exception:
            rgb = read_image(path)
    else:
        rgb = read_image(path)
    return fit(rgb, long_side, cv2.INTER_AREA)


def fit(arr: np.ndarray, long_side: int, interpolation: int) -> np.ndarray:
    h, w = arr.shape[:2]
    scale = long_side / max(h, w)
    if scale >= 1:
        return arr
    return cv2.resize(arr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interpolation)


def shrink_index(index: np.ndarray, size: tuple[int, int], damage: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (h, w) for size (w, h), keeping damage visible (see the module docstring).

    ``damage``: (256,) bool, True for damage class indices.
    """
    h0, w0 = index.shape
    w, h = size
    if (w0, h0) == (w, h):
        return index
    near = cv2.resize(index, (w, h), interpolation=cv2.INTER_NEAREST)  # (h, w)
    fy, fx = math.ceil(h0 / h), math.ceil(w0 / w)
    if fx <= 1 and fy <= 1:
        return near
    marked = np.where(damage[index], index + 1, 0).astype(np.uint8)  # 0: no damage; k + 1: damage class k
    kernel = np.ones((fy, fx), np.uint8)
    pooled = cv2.dilate(marked, kernel, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    pooled = cv2.resize(pooled, (w, h), interpolation=cv2.INTER_NEAREST)  # max over each block
    return np.where(pooled > 0, pooled - 1, near).astype(np.uint8)


def render_scan(k: int, scan: Scan, scheme: LabelScheme, page: Page, thumb_size: int, width: int) -> Rendered:
    """Write scan k's thumbnail and preview; return its mask (bytes for the page) — never raise."""
    try:
        base = scan.source or scan.overlay or scan.mask
        if base is None:
            return Rendered(error="no scan, overlay or mask file to show")
        preview = read_preview(base, thumb_size)  # (h, w, 3) uint8 RGB
        ph, pw = preview.shape[:2]
        levels, level_error = render_levels(scan.levels, (pw, ph))  # the confidence maps at the preview's size
        atomic_write_bytes(page.staging / "previews" / f"{k:0{width}d}.jpg", encode_image(preview, ".jpg", 85))
        if max(pw, ph) > CARD_SIDE:  # else the card shows the preview itself
            thumb = fit(preview, CARD_SIDE, cv2.INTER_AREA)
            atomic_write_bytes(page.staging / "thumbs" / f"{k:0{width}d}.jpg", encode_image(thumb, ".jpg", 82))
        index = read_index(scan, scheme)
        if index is None:
            return Rendered(pw, ph, error="no index or colour mask", levels=levels, level_error=level_error)
        small = shrink_index(index, (pw, ph), scheme.damage_table)  # (ph, pw) uint8
        data = base64.b64encode(zlib.compress(small.tobytes(), 6)).decode("ascii")
        return Rendered(pw, ph, [pw, ph, data], levels=levels, level_error=level_error)
    except Exception as e:  # one unreadable scan must not cost the whole report
        return Rendered(error=f"{type(e).__name__}: {e}")


# ============================================================================================ the page
def build_gallery(
    source: Path, page: Page, *, max_images: int | None, thumb_size: int, workers: int | None, console: Console | None
) -> Built:
    """Read the batch, write thumbnails, previews and mask scripts into the page folder; return the page body."""
    batch = read_batch(source)
    scheme = batch.scheme
    order, _ = gallery_order(batch.scans)
    shown = order[:max_images] if max_images else order
    width = max(4, len(str(len(shown) - 1)))

    workers = workers or min(4, os.cpu_count() or 1)
    progress = progress_bar(console, enabled=console is not None)
    with progress, ThreadPoolExecutor(workers, "damage-smp-report") as pool:
        task = progress.add_task("report", total=len(shown))
        futures = [pool.submit(render_scan, k, s, scheme, page, thumb_size, width) for k, s in enumerate(shown)]
        rendered = []
        for fut in futures:
            rendered.append(fut.result())
            progress.advance(task)

    write_mask_chunks(page, rendered)
    classes = class_list(scheme)
    data = {
        "kind": "gallery",
        "classes": classes,
        "chunk": page.url("masks") + "/{}.js",
        "scans": [
            scan_data(k, s, r, scheme, page, width) for k, (s, r) in enumerate(zip(shown, rendered, strict=True))
        ],
    }
    layers = layer_list({kind for r in rendered for kind in r.levels})  # none: the page is as without the maps
    if layers:
        write_level_chunks(page, [r.levels for r in rendered])
        data.update(layers=[{k: v for k, v in x.items() if k != "gradient"} for x in layers],
                    conf=page.url("conf") + "/{}.js")  # fmt: skip
        for k, (scan, r) in enumerate(zip(data["scans"], rendered, strict=True)):
            scan["c"] = k // LEVEL_CHUNK if r.levels else -1
    notes = list(batch.notes) + problem_notes(shown, rendered)
    title = f"Damage report — {source.resolve().name}"
    body = gallery_body(title, batch, shown, rendered, classes, max_images, notes, page, width, layers)
    return Built(title, body, data, len(shown), len(batch.scans), notes)


def problem_notes(shown: list[Scan], rendered: list[Rendered]) -> list[str]:
    notes = []
    failed = [f"{s.name}: {r.error}" for s, r in zip(shown, rendered, strict=True) if r.error]
    if failed:
        notes.append(f"{len(failed)} scan(s) shown without preview or overlay: " + "; ".join(failed[:5]))
    unread = [f"{s.name}: {r.level_error}" for s, r in zip(shown, rendered, strict=True) if r.level_error]
    if unread:
        notes.append(f"{len(unread)} scan(s) shown without a confidence map that could not be read: "
                     + "; ".join(unread[:5]))  # fmt: skip
    return notes


def write_mask_chunks(page: Page, rendered: list[Rendered]) -> None:
    for c in range(0, len(rendered), CHUNK):
        masks = {str(k): r.mask for k, r in enumerate(rendered[c : c + CHUNK], start=c) if r.mask is not None}
        text = f"DSMP_MASKS({c // CHUNK},{json.dumps(masks, separators=(',', ':'))});\n"
        atomic_write_bytes(page.staging / "masks" / f"{c // CHUNK:04d}.js", text.encode("ascii"))


def class_list(scheme: LabelScheme) -> list[dict]:
    """Every class with its colour and whether the gallery draws it at first (damage classes: yes)."""
    return [
        {
            "name": c.name,
            "color": "#{:02X}{:02X}{:02X}".format(*c.shown),
            "damage": i in scheme.damage_indices,
            "draw": i in scheme.damage_indices,
        }
        for i, c in enumerate(scheme.classes)
    ]


def scan_data(k: int, scan: Scan, r: Rendered, scheme: LabelScheme, page: Page, width: int) -> dict:
    areas = {}
    for i in scheme.damage_indices:
        px = scan.pixels.get(scheme.names[i], 0)
        if px > 0:
            areas[str(i)] = [px, round(100.0 * px / scan.object_px, 6) if scan.object_px > 0 else 0.0]
    return {
        "n": scan.name,
        "d": round(scan.damage_pct, 6) if not math.isnan(scan.damage_pct) else 0.0,
        "u": round(scan.uncertainty, 6) if scan.uncertainty is not None else 0.0,
        "a": areas,
        "w": r.width,
        "h": r.height,
        "p": page.url(f"previews/{k:0{width}d}.jpg"),
        "m": k // CHUNK if r.mask is not None else -1,
    }
