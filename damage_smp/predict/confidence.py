"""How sure the model is, per pixel: the damage probability and the uncertainty maps (``--save prob,uncertainty``).

Both are (H, W) uint8 maps filled block by block from the final blended probabilities the tiler hands on
(``tiling.predict_index(on_block=...)``), so they cost H x W bytes each, like the index map, never C x H x W.
- ``prob``: the damage probability (the summed probability of the damage classes, the quantity the tuned
  threshold cuts), 0..1 as 0..255.
- ``uncertainty``: the entropy of the blended class probabilities divided by log(C) (0: one class is certain,
  1: all classes equally likely), as 0..255. With ``--tta`` the probabilities are the average of four flips,
  so flips that disagree raise it too.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..thresholds import damage_probability

CONFIDENCE_KINDS = ("prob", "uncertainty")


def confidence_maps(kinds, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Empty (H, W) uint8 maps for the confidence outputs among ``kinds``."""
    return {k: np.empty(size, np.uint8) for k in CONFIDENCE_KINDS if k in kinds}


def block_filler(maps: dict[str, np.ndarray], damage: list[int], num_classes: int):
    """on_block(y0, y1, x0, x1, probs) that writes each map's block (probs: (C, h, w) float)."""
    scale = 255.0 / math.log(num_classes) if num_classes > 1 else 0.0

    def on_block(y0: int, y1: int, x0: int, x1: int, probs: torch.Tensor) -> None:
        if "prob" in maps:
            p = damage_probability(probs, damage).clamp(0, 1).mul_(255).round_()
            maps["prob"][y0:y1, x0:x1] = p.to(torch.uint8).cpu().numpy()
        if "uncertainty" in maps:
            ent = (probs * probs.clamp_min(1e-12).log()).sum(0).mul_(-scale).clamp_(0, 255).round_()
            maps["uncertainty"][y0:y1, x0:x1] = ent.to(torch.uint8).cpu().numpy()

    return on_block


def mean_level(image: np.ndarray, chunk: int = 1 << 22) -> float:
    """Mean of a uint8 map as 0..1, summed in chunks (no int64 copy of a 100 MP map)."""
    flat = image.reshape(-1)
    total = sum(int(flat[s : s + chunk].sum(dtype=np.int64)) for s in range(0, flat.size, chunk))
    return total / max(1, flat.size) / 255.0
