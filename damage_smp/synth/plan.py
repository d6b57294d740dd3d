"""What a sample is, before any pixel: materials and contents, the manifest rows and their splits, the
artefact classes the masks use, and the checks of ``--n``, ``--seed`` and ``--size``.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from ..labels import load_scheme

MATERIALS = ("paper", "photo", "film", "canvas", "parchment")
CONTENTS = ("photographic", "line art", "text", "artistic", "pattern")
# One block of 15 recipes; each seed shuffles every block, so materials and contents stay balanced at any n.
RECIPES = (
    *[("photo", "photographic")] * 3, *[("film", "photographic")] * 2, ("photo", "pattern"),
    *[("paper", "text")] * 2, *[("paper", "line art")] * 2, ("paper", "pattern"),
    ("parchment", "text"), ("parchment", "line art"), *[("canvas", "artistic")] * 2,
)  # fmt: skip
HELD_OUT = 0.30  # val + test share, split evenly between them
MANIFEST_FIELDS = ["image", "mask", "split", "material", "content"]
_PLAN, _SPLIT, _IMAGE = 1, 2, 3  # independent random streams per (seed, ...)

_SCHEME = load_scheme("artefact")
CLASS = {name: i for i, name in enumerate(_SCHEME.names)}
BACKGROUND = CLASS["Background"]


def sample_plan(n: int = 48, seed: int = 0) -> list[dict[str, str]]:
    """The manifest rows (image, mask, split, material, content) of a sample; no pixels are rendered.

    Image i's material and content depend on (seed, i) only. About 70/15/15 train/val/test, stratified: rows
    are ordered by material and content, and every ~3rd position is held out, so val and test each get a
    share of every material.
    """
    _check_args(n, seed)
    width = max(3, len(str(n - 1)))
    rows = []
    for i in range(n):
        block, pos = divmod(i, len(RECIPES))
        order = np.random.default_rng([seed, block, _PLAN]).permutation(len(RECIPES))
        material, content = RECIPES[order[pos]]
        stem = f"synth_{i:0{width}d}"
        rows.append(
            {"image": f"images/{stem}.jpg", "mask": f"masks/{stem}.png", "split": "train",
             "material": material, "content": content}
        )  # fmt: skip
    key = np.random.default_rng([seed, _SPLIT]).random(n)
    order = sorted(range(n), key=lambda j: (MATERIALS.index(rows[j]["material"]), rows[j]["content"], key[j]))
    k = round(HELD_OUT * n) if n < 3 else max(2, round(HELD_OUT * n))
    for j in range(k):
        rows[order[int((j + 0.5) * n / k)]]["split"] = "val" if j % 2 == 0 else "test"
    return rows


def manifest_text(rows: list[dict[str, str]], prefix: str = "") -> str:
    """CSV text of plan rows; ``prefix`` (e.g. 'sample') is put before the image and mask paths."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        fix = {c: f"{prefix}/{row[c]}" if prefix not in ("", ".") else row[c] for c in ("image", "mask")}
        writer.writerow(row | fix)
    return buf.getvalue()


def parse_size(text: str) -> tuple[int, int]:
    """'512x384' -> (512, 384); a bad value raises ValueError naming --size."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--size {text!r}: expected WIDTHxHEIGHT such as 512x384")
    return _check_size((int(parts[0]), int(parts[1])))


def _check_size(size) -> tuple[int, int]:
    w, h = (int(v) for v in size)
    if min(w, h) < 32 or max(w, h) > 8192:
        raise ValueError(f"--size {w}x{h}: width and height must be within 32..8192 pixels, e.g. 512x384")
    return w, h


def _check_args(n: int, seed: int) -> None:
    if n < 1:
        raise ValueError(f"--n {n}: the sample needs at least 1 image")
    if seed < 0:
        raise ValueError(f"--seed {seed}: use a seed of 0 or more")
