"""Synthetic damaged-media sample: real pictures aged into paper, photo, film, canvas and parchment, with damage
drawn over them and an exact colour mask in the ``artefact`` scheme (the offline sample, ``damage-smp synth``).

Content is what scikit-image ships inside its wheel (CC0 / public-domain photographs, scans and textures), so an
ImageNet encoder has real structure to transfer. Each image also carries content that *looks* like damage but is
not labelled: pen lines and hatching in line art (hair, scratches), stippling and film grain (dust), shadows and
parchment mottling (stains), a document's own handwriting (defacing writing), film sprocket holes (punctures).

Every damage is drawn as (layer, alpha) pairs: ``image += alpha * (layer - image)`` and the mask takes the class
where ``alpha >= 0.5``, so the mask is exactly the visible damage; later layers overwrite earlier ones in both.
Randomness comes from ``numpy.random.default_rng([seed, i, ...])`` alone: image i is the same whatever n is, and
the same seed gives the same bytes.

Modules: ``plan`` (manifest rows, splits, classes, argument checks), ``content`` (what is pictured),
``ageing`` (the five materials), ``canvas`` (the object on the scanner bed, blending), ``damage`` and
``marks`` (the 15 damage renderers), ``render`` (one image; the contact sheet), ``draw`` (primitives).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ..images import atomic_write_bytes
from .canvas import _blend, _Canvas
from .damage import DAMAGE, DAMAGE_ODDS, DAMAGE_ORDER
from .plan import _SCHEME, BACKGROUND, CLASS, CONTENTS, MATERIALS, _check_size, manifest_text, parse_size, sample_plan
from .render import contact_sheet, render_sample

# _Canvas and _blend stay reachable here: the tests draw single damages with them.
__all__ = ["synth", "sample_plan", "manifest_text", "parse_size", "render_sample", "contact_sheet", "MATERIALS",
           "CONTENTS", "CLASS", "BACKGROUND", "DAMAGE", "DAMAGE_ODDS", "DAMAGE_ORDER", "_Canvas", "_blend"]  # fmt: skip

JPEG_PARAMS = [  # spelled out so the bytes do not depend on OpenCV's defaults
    cv2.IMWRITE_JPEG_QUALITY, 92, cv2.IMWRITE_JPEG_PROGRESSIVE, 0, cv2.IMWRITE_JPEG_OPTIMIZE, 0,
    cv2.IMWRITE_JPEG_RST_INTERVAL, 0, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
]  # fmt: skip
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 6]


def synth(
    out_dir: str | Path,
    n: int = 48,
    size: tuple[int, int] = (512, 384),
    seed: int = 0,
    overwrite: bool = False,
    root_manifest: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Write ``n`` synthetic images (JPEG), colour masks (PNG) and ``manifest.csv`` into ``out_dir``.

    ``size`` is (width, height). ``root_manifest``, if given, also receives the manifest with paths relative to
    its own folder (the repository's ``data_manifest.csv``); an existing one that differs needs ``overwrite``.
    Returns the path of ``out_dir/manifest.csv``.
    """
    out_dir = Path(out_dir)
    width, height = _check_size(size)
    rows = sample_plan(n, seed)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: is a file; give a folder for the sample")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"{out_dir}: folder is not empty; give a new folder or pass --overwrite to write into it")
    root_text = None
    if root_manifest is not None:
        root_manifest = Path(root_manifest)
        prefix = Path(os.path.relpath(out_dir.resolve(), root_manifest.resolve().parent)).as_posix()
        root_text = manifest_text(rows, prefix)
        if root_manifest.is_file() and root_manifest.read_text(encoding="utf-8") != root_text and not overwrite:
            raise ValueError(f"{root_manifest}: exists with other content; pass --overwrite to replace it")

    from rich.progress import track

    for i in track(range(n), description="synth", disable=not progress, transient=True):
        image, index = render_sample(i, seed, rows[i]["material"], rows[i]["content"], (width, height))
        atomic_write_bytes(out_dir / rows[i]["image"], _encode(".jpg", image[..., ::-1], JPEG_PARAMS))
        atomic_write_bytes(out_dir / rows[i]["mask"], _encode(".png", _SCHEME.colorize(index)[..., ::-1], PNG_PARAMS))
    if overwrite:  # a previous, larger sample's files would otherwise linger beside the manifest
        keep = {out_dir / r[c] for r in rows for c in ("image", "mask")}
        for stale in [*out_dir.glob("images/synth_*.jpg"), *out_dir.glob("masks/synth_*.png")]:
            if stale not in keep:
                stale.unlink()
    manifest = out_dir / "manifest.csv"
    atomic_write_bytes(manifest, manifest_text(rows).encode("utf-8"))
    if root_text is not None and (not root_manifest.is_file() or root_manifest.read_text("utf-8") != root_text):
        atomic_write_bytes(root_manifest, root_text.encode("utf-8"))
    return manifest


def _encode(suffix: str, bgr: np.ndarray, params: list[int]) -> bytes:
    ok, buf = cv2.imencode(suffix, np.ascontiguousarray(bgr), params)
    if not ok:
        raise OSError(f"could not encode an image as {suffix}")
    return buf.tobytes()
