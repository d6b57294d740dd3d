"""One image of a sample, from (seed, i) to pixels and class indices; and a contact sheet of a sample."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from ..images import read_image, read_mask, write_image
from .ageing import AGEING
from .canvas import _blend, _place_on_bed
from .content import CONTENT
from .damage import DAMAGE, DAMAGE_ODDS, DAMAGE_ORDER
from .plan import _IMAGE, _SCHEME, BACKGROUND, CLASS, CONTENTS, MATERIALS, _check_size


def render_sample(
    i: int, seed: int, material: str, content: str, size: tuple[int, int] = (512, 384)
) -> tuple[np.ndarray, np.ndarray]:
    """Image i of a sample: (H, W, 3) uint8 RGB and its (H, W) uint8 artefact class-index map."""
    if material not in MATERIALS or content not in CONTENTS:
        raise ValueError(f"unknown material/content {material!r}/{content!r}; use {MATERIALS} / {CONTENTS}")
    rng = np.random.default_rng([seed, i, _IMAGE])
    w, h = _check_size(size)
    picture = CONTENT[content](rng, h, w, material)  # (H, W, 3) float32 0..1, white = nothing printed
    obj_img = AGEING[material](rng, picture)
    cv = _place_on_bed(rng, obj_img, material)
    index = np.where(cv.obj >= 0.5, CLASS["Clean"], BACKGROUND).astype(np.uint8)
    odds = DAMAGE_ODDS[material]
    names = list(odds)
    p = np.array([odds[k] for k in names]) / sum(odds.values())
    chosen = set(rng.choice(names, size=int(rng.integers(2, 7)), replace=False, p=p))
    for name in (d for d in DAMAGE_ORDER if d in chosen):
        for layer, alpha in DAMAGE[name](cv):
            _blend(cv, index, layer, alpha, CLASS[name])
    scan = cv.img + rng.standard_normal(cv.img.shape, dtype=np.float32) * 0.006  # scanner noise
    return np.clip(scan * 255 + 0.5, 0, 255).astype(np.uint8), index


def contact_sheet(
    sample_dir: str | Path,
    out: str | Path,
    stems: list[str] | None = None,
    rows: int = 4,
    cols: int = 2,
    tile: int = 256,
) -> Path:
    """A grid of captioned image | colour-mask pairs (for the docs): the given image stems, or one per material
    first, then one per new (material, content), then the rest in order."""
    sample_dir, out = Path(sample_dir), Path(out)
    with open(sample_dir / "manifest.csv", encoding="utf-8") as f:
        plan = list(csv.DictReader(f))
    if stems is not None:
        by_stem = {Path(r["image"]).stem: r for r in plan}
        unknown = [s for s in stems if s not in by_stem]
        if unknown:
            raise ValueError(f"{sample_dir / 'manifest.csv'}: no image(s) {unknown}; give stems such as synth_000")
        plan = [by_stem[s] for s in stems]
    picked = []
    for key in (lambda r: r["material"], lambda r: (r["material"], r["content"]), lambda r: r["image"]):
        seen = {key(r) for r in picked}  # one per material first, then new combinations, then in order
        for row in plan:
            if len(picked) < rows * cols and row not in picked and key(row) not in seen:
                picked.append(row)
                seen.add(key(row))
    cells = []
    for row in picked:
        image, mask = read_image(sample_dir / row["image"]), read_mask(sample_dir / row["mask"])
        th = round(tile * image.shape[0] / image.shape[1])
        pair = [cv2.resize(a, (tile, th), interpolation=cv2.INTER_AREA if a is image else cv2.INTER_NEAREST)
                for a in (image, mask)]  # fmt: skip
        cell = np.full((th + 22, 2 * tile + 6, 3), 255, np.uint8)
        cell[:th, :tile], cell[:th, tile + 6 :] = pair
        names = [_SCHEME.names[c] for c in np.unique(_SCHEME.decode(mask)) if c not in (0, BACKGROUND)]
        caption = f"{row['material']} / {row['content']}: {', '.join(names)}"
        cv2.putText(cell, caption, (2, th + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
        cells.append(cell)
    while len(cells) < rows * cols:
        cells.append(np.full_like(cells[0], 255))
    grid = np.vstack([np.hstack([np.pad(c, ((0, 6), (0, 6), (0, 0)), constant_values=255) for c in cells[r : r + cols]])
                      for r in range(0, rows * cols, cols)])  # fmt: skip
    write_image(out, grid, quality=90)
    return out
