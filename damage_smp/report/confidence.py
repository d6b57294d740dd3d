"""The gallery's confidence layer: previews of predict's damage probability and uncertainty maps.

For each shown scan with a ``prob`` and/or ``uncertainty`` map (``predict --save ...,prob,uncertainty``: areas.csv's
columns, or the record's ``outputs``), the map is shrunk to the size of the scan's preview by block mean and
shipped like the class masks: 8-bit levels (0..1 as 0..255), zlib-compressed and base64'd in small scripts
``conf/NNNN.js`` (``DSMP_CONF(chunk, {scan: {kind: [w, h, data]}})``, 64 scans each) that the page loads only
once the layer is switched on. The page colours the levels with a 256-entry lookup of a perceptual colour map
computed here at build time (matplotlib's viridis for the probability, magma for the uncertainty) and paints
them on the canvas that shows the classes, under the same opacity slider.

8-bit PNGs (scans up to predict's 50 MP) are read whole, as the index masks are; 16-bit TIFFs (larger scans) are
read tile by tile (tifffile's ``TiffPage.segments``) and pooled into the preview as they come, so a 100 MP map
never sits in memory whole. 16-bit levels become 8-bit ones (v * 255 / 65535, rounded) after pooling.
"""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path

import cv2
import numpy as np

from ..images import atomic_write_bytes, check_pixels, read_mask
from .page import Page

KINDS = ("prob", "uncertainty")  # the order of the layer menu, after "classes"
LABELS = {"prob": "damage probability", "uncertainty": "uncertainty"}
COLORMAPS = {"prob": "viridis", "uncertainty": "magma"}  # matplotlib's names: perceptual, dark 0 to light 1
CHUNK = 64  # maps of 64 scans per script file, as the class masks
READ_BYTES = 1 << 20  # compressed TIFF bytes read at a time: the read holds ~3 times that


# ============================================================================================ reading a map
def read_level_preview(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A confidence map (grey PNG or TIFF, 8- or 16-bit) -> (h, w) uint8 levels at ``size`` (w, h), block mean."""
    if path.suffix.lower() in (".tif", ".tiff"):
        mean, top = pooled_tiff(path, size)
    else:
        level = read_mask(path)
        if level.ndim != 2 or level.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"{path}: not a grey 8- or 16-bit map; re-run predict with --save prob,uncertainty")
        w, h = size
        if level.shape != (h, w):
            level = cv2.resize(level, (w, h), interpolation=cv2.INTER_AREA)
        if level.dtype == np.uint8:
            return level
        mean, top = level.astype(np.float64), 65535.0
    mean *= 255.0 / top
    np.rint(mean, out=mean)
    return np.clip(mean, 0, 255, out=mean).astype(np.uint8)


def pooled_tiff(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """A grey TIFF's block means at ``size`` (w, h), read segment by segment -> ((h, w) float64, dtype max)."""
    import tifffile

    check_pixels(path)
    w, h = size
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if len(page.shape) != 2 or page.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"{path}: not a grey 8- or 16-bit TIFF; re-run predict with --save prob,uncertainty")
        height, width = page.shape
        rows = np.arange(height) * h // height  # the preview row of each map row (blocks of equal share)
        cols = np.arange(width) * w // width
        total = np.zeros((h, w), np.float64)
        for segment, (_, _, y, x, _), _ in page.segments(maxworkers=1, buffersize=READ_BYTES):
            if segment is None:
                continue
            block = segment[0, : height - y, : width - x, 0]  # edge tiles are padded to the full tile
            r, c = rows[y : y + block.shape[0]], cols[x : x + block.shape[1]]
            nc = int(c[-1] - c[0]) + 1
            keys = ((r - r[0])[:, None] * nc + (c - c[0])[None, :]).ravel()
            sums = np.bincount(keys, weights=block.ravel(), minlength=(int(r[-1] - r[0]) + 1) * nc)
            total[r[0] : r[-1] + 1, c[0] : c[-1] + 1] += sums.reshape(-1, nc)
        top = float(np.iinfo(page.dtype).max)
    total /= np.maximum(np.bincount(rows, minlength=h), 1)[:, None]  # / pixels per block, as rows x columns
    total /= np.maximum(np.bincount(cols, minlength=w), 1)[None, :]
    return total, top


def render_levels(levels: dict[str, Path], size: tuple[int, int]) -> tuple[dict, str]:
    """A scan's confidence maps -> ({kind: [w, h, base64 zlib bytes]}, problem) — never raises."""
    out, problems = {}, []
    for kind, path in levels.items():
        try:
            small = read_level_preview(path, size)
            out[kind] = [size[0], size[1], base64.b64encode(zlib.compress(small.tobytes(), 6)).decode("ascii")]
        except Exception as e:  # one unreadable map must not cost the scan's preview or the report
            problems.append(f"{path.name}: {type(e).__name__}: {e}")
    return out, "; ".join(problems)


def write_level_chunks(page: Page, levels: list[dict | None]) -> None:
    """``conf/NNNN.js`` for the shown scans' maps (levels[k]: scan k's, or None)."""
    for c in range(0, len(levels), CHUNK):
        maps = {str(k): m for k, m in enumerate(levels[c : c + CHUNK], start=c) if m}
        text = f"DSMP_CONF({c // CHUNK},{json.dumps(maps, separators=(',', ':'))});\n"
        atomic_write_bytes(page.staging / "conf" / f"{c // CHUNK:04d}.js", text.encode("ascii"))


# ============================================================================================ colours
def colormap_lut(kind: str) -> np.ndarray:
    """(256, 3) uint8 RGB: the colour of each 8-bit level of ``kind``'s map."""
    from matplotlib import colormaps

    rgba = colormaps[COLORMAPS[kind]](np.arange(256) / 255.0)
    return np.rint(rgba[:, :3] * 255).astype(np.uint8)


def layer_list(kinds) -> list[dict]:
    """The page's layers among ``kinds``: name, label, colour lookup (base64 of 256 x RGB) and CSS gradient."""
    layers = []
    for kind in (k for k in KINDS if k in kinds):
        lut = colormap_lut(kind)
        stops = ", ".join(f"#{r:02X}{g:02X}{b:02X} {100 * k / 255:.1f}%" for k in range(0, 256, 17)
                          for r, g, b in [lut[k]])  # fmt: skip
        layers.append(
            {
                "kind": kind,
                "label": LABELS[kind],
                "lut": base64.b64encode(lut.tobytes()).decode("ascii"),
                "gradient": f"linear-gradient(to right, {stops})",
            }
        )
    return layers
