"""How sure the model is, per pixel: the damage probability and the uncertainty maps (``--save prob,uncertainty``).

Both are (H, W) maps filled block by block from the final blended probabilities the tiler hands on
(``tiling.predict_index(on_block=...)``), so they cost H x W x 1 or 2 bytes each, never C x H x W.
- ``prob``: the damage probability (the summed probability of the damage classes, the quantity the tuned
  threshold cuts), 0..1.
- ``uncertainty``: without ``--tta``, the entropy of the blended class probabilities divided by log(C)
  (0: one class is certain, 1: all classes equally likely). With ``--tta``, the disagreement of the four flips:
  their mutual information (the BALD / TTA epistemic measure), H(mean of the flips' p) - mean of H(each flip's p),
  divided by log(C), 0..1: 0 when the flips agree, however unsure they all are. It is computed per tile (>= 0,
  Jensen) and blended over the tiles like the probabilities (the tiler's ``flip_entropy`` channel), so tiles
  that differ from each other do not count as flips that disagree.

Scans up to TIFF_PIXELS get 8-bit maps (0..1 as 0..255) written as grey PNGs (``NAME_prob.png``,
``NAME_uncertainty.png``); larger scans get 16-bit maps (0..1 as 0..65535) written as grey, tiled,
deflate-compressed TIFFs (``NAME_prob.tif``, ``NAME_uncertainty.tif``): PNG viewers choke on such sizes, GIS,
ImageJ and GIMP read TIFF tiles lazily, and 16 bits keep the precision of a threshold set by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..images import atomic_write_bytes, encode_image
from ..thresholds import damage_probability
from ..tiling import normalised_entropy
from .inputs import Job
from .layers import TILE, tiff_writer
from .owned import MARK, is_ours, marked

CONFIDENCE_KINDS = ("prob", "uncertainty")
TIFF_PIXELS = 50_000_000  # scans with more pixels get 16-bit TIFF confidence maps instead of 8-bit PNGs


def confidence_maps(kinds, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Empty (H, W) maps for the confidence outputs among ``kinds``: uint8, or uint16 above TIFF_PIXELS."""
    dtype = np.uint16 if size[0] * size[1] > TIFF_PIXELS else np.uint8
    return {k: np.empty(size, dtype) for k in CONFIDENCE_KINDS if k in kinds}


def block_filler(maps: dict[str, np.ndarray], damage: list[int], num_classes: int):
    """on_block(y0, y1, x0, x1, probs, flip_entropy=None) that writes each map's block (probs: (C, h, w) float;
    ``flip_entropy``: (h, w), the TTA flips' blended disagreement from the tiler: the uncertainty then)."""

    def on_block(y0: int, y1: int, x0: int, x1: int, probs: torch.Tensor, flip_entropy=None) -> None:
        for kind, target in maps.items():
            if kind == "prob":
                level = damage_probability(probs, damage)
            else:
                level = normalised_entropy(probs, 0) if flip_entropy is None else flip_entropy
            top = float(np.iinfo(target.dtype).max)
            # clamp, not clamp_: with one damage class ``level`` is a view of the (inference-mode) probs
            target[y0:y1, x0:x1] = level.clamp(0, 1).mul_(top).round_().cpu().numpy()

    return on_block


def mean_level(image: np.ndarray, chunk: int = 1 << 22) -> float:
    """Mean of a uint8 or uint16 map as 0..1, summed in chunks (no int64 copy of a 100 MP map)."""
    flat = image.reshape(-1)
    total = sum(int(flat[s : s + chunk].sum(dtype=np.int64)) for s in range(0, flat.size, chunk))
    return total / max(1, flat.size) / float(np.iinfo(image.dtype).max)


def write_confidence(job: Job, kind: str, level: np.ndarray, record: dict | None) -> Path:
    """Write a confidence map, marked as predict's: an 8-bit map as PNG, a 16-bit one as TIFF -> its path.

    The other file of the pair (from a scan of another size under the same name) goes when it is predict's,
    so the record and the report never find two.
    """
    big = level.dtype == np.uint16
    path, other = job.output(kind, big=big), job.output(kind, big=not big)
    if big:
        write_tiff16(path, level)
    else:
        atomic_write_bytes(path, marked(encode_image(level, ".png"), ".png"))
    if other.is_file() and is_ours(job, record, kind, other):
        other.unlink(missing_ok=True)
    return path


def write_tiff16(path: Path, level: np.ndarray) -> None:
    """(H, W) uint16 -> a grey, tiled, deflate-compressed TIFF with predict's mark in its Software tag."""
    with tiff_writer(path, bigtiff=level.nbytes > 2**31) as tif:
        tif.write(level, photometric="minisblack", tile=(TILE, TILE), compression="zlib", software=MARK.decode(),
                  metadata=None)  # fmt: skip
