"""Training crops: uniform random ones, and ones placed on damage (``train --damage-crops``)."""

from __future__ import annotations

import numpy as np

from .labels import IGNORE_INDEX

DAMAGE_STRIP = 1024  # rows of the mask damage_crop scans at a time


def random_crop(
    image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A size x size crop at a random place; a side shorter than size is padded (image 0, mask ignore).

    The image lands at a random offset inside the padding, so small images are not always top-left.
    """
    h, w = mask.shape
    y = int(rng.integers(0, h - size + 1)) if h >= size else -int(rng.integers(0, size - h + 1))
    x = int(rng.integers(0, w - size + 1)) if w >= size else -int(rng.integers(0, size - w + 1))
    return crop_at(image, mask, size, y, x)


def damage_crop(
    image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator, is_damage: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A size x size crop that holds a damage pixel (``is_damage``: the scheme's ``damage_table``), drawn uniformly
    among the mask's damage pixels and placed uniformly in the crop; a ``random_crop`` when the mask has no damage.
    The mask is scanned in strips of DAMAGE_STRIP rows, so a big scan needs no full-size temporary."""
    h, w = mask.shape
    strips = range(0, h, DAMAGE_STRIP)
    ends = np.cumsum([np.count_nonzero(is_damage[mask[y : y + DAMAGE_STRIP]]) for y in strips])  # damage up to each
    if ends[-1] == 0:
        return random_crop(image, mask, size, rng)
    k = int(rng.integers(ends[-1]))  # the k-th damage pixel, row-major
    s = int(np.searchsorted(ends, k, side="right"))
    flat = np.flatnonzero(is_damage[mask[strips[s] : strips[s] + DAMAGE_STRIP]])
    py, px = divmod(int(flat[k - (ends[s - 1] if s else 0)]), w)
    py += strips[s]

    def corner(p: int, n: int) -> int:  # the pixel lands anywhere in the crop, the crop inside the image
        return int(np.clip(p - int(rng.integers(size)), 0, n - size)) if n >= size else -int(rng.integers(size - n + 1))

    return crop_at(image, mask, size, corner(py, h), corner(px, w))


def crop_at(image: np.ndarray, mask: np.ndarray, size: int, y: int, x: int) -> tuple[np.ndarray, np.ndarray]:
    """The size x size crop whose top-left corner is (y, x); negative or past the border: padded (image 0,
    mask ignore). ``y``/``x`` must keep the crop inside the image on any axis at least ``size`` long."""
    h, w = mask.shape
    out_image = np.zeros((size, size, 3), np.uint8)
    out_mask = np.full((size, size), IGNORE_INDEX, np.uint8)
    sy, sx = max(y, 0), max(x, 0)  # source corner
    dy, dx = max(-y, 0), max(-x, 0)  # destination corner
    ch, cw = min(size, h), min(size, w)
    out_image[dy : dy + ch, dx : dx + cw] = image[sy : sy + ch, sx : sx + cw]
    out_mask[dy : dy + ch, dx : dx + cw] = mask[sy : sy + ch, sx : sx + cw]
    return out_image, out_mask
