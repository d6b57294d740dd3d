"""Models Genesis corruptions (Zhou et al., MICCAI 2019), in 2-D on uint8 RGB crops; the network restores the crop.

The four transforms and their rates follow the paper's public code (``generate_pair``): local pixel shuffling
(p 0.5), a non-linear intensity curve (Bezier, p 0.9, inverted half of the time), then painting (p 0.9): out-painting
(80 %) or in-painting (20 %). In-painting is albumentations' CoarseDropout with uniform-noise holes of 1/6 to 1/3 of
the side; albumentations has no Bezier curve, local shuffle or out-painting, so those are numpy here (a lookup
table, per-block permutations, noise outside a few kept boxes). All randomness comes from the ``rng`` passed in,
so a crop's corruption is a function of (seed, epoch, index), as the crops are.
"""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np

RATES = {"shuffle": 0.5, "nonlinear": 0.9, "paint": 0.9, "outpaint": 0.8}


def bezier_lut(rng: np.random.Generator, samples: int = 1000) -> np.ndarray:
    """(256,) uint8 lookup table of a cubic Bezier from (0, 0) to (1, 1) with two random control points;
    half of the time the curve is flipped (intensities inverted), as in Models Genesis."""
    points = np.array([[0, 0], rng.random(2), rng.random(2), [1, 1]])  # (4, 2) x, y in [0, 1]
    t = np.linspace(0, 1, samples)[:, None]
    curve = (
        (1 - t) ** 3 * points[0] + 3 * (1 - t) ** 2 * t * points[1] + 3 * (1 - t) * t**2 * points[2] + t**3 * points[3]
    )
    xs, ys = curve[:, 0], curve[:, 1]
    if rng.random() < 0.5:
        ys = ys[::-1]
    order = np.argsort(xs)
    lut = np.interp(np.arange(256) / 255, xs[order], ys[order])
    return np.clip(lut * 255 + 0.5, 0, 255).astype(np.uint8)


def local_shuffle(image: np.ndarray, rng: np.random.Generator, blocks: int | None = None) -> np.ndarray:
    """Pixels permuted inside many small random blocks (each up to a tenth of the side): texture is destroyed,
    shapes and colours survive."""
    h, w = image.shape[:2]
    out = image.copy()
    blocks = blocks if blocks is not None else max(1, h * w // 100)
    limit_h, limit_w = max(2, h // 10), max(2, w // 10)
    for _ in range(blocks):
        bh, bw = int(rng.integers(1, limit_h + 1)), int(rng.integers(1, limit_w + 1))
        y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        patch = out[y : y + bh, x : x + bw].reshape(bh * bw, -1)
        out[y : y + bh, x : x + bw] = patch[rng.permutation(bh * bw)].reshape(bh, bw, -1)
    return out


def in_paint(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1 to 5 boxes of 1/6 to 1/3 of the side filled with uniform noise (albumentations CoarseDropout)."""
    drop = A.CoarseDropout(num_holes_range=(1, 5), hole_height_range=(1 / 6, 1 / 3), hole_width_range=(1 / 6, 1 / 3),
                           fill="random_uniform", p=1.0)  # fmt: skip
    drop.set_random_state(rng, random.Random(int(rng.integers(2**63))))
    return drop(image=image)["image"]


def out_paint(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform noise everywhere but 1 to 5 boxes of 3/7 to 4/7 of the side, which keep the image."""
    h, w = image.shape[:2]
    out = rng.integers(0, 256, size=image.shape, dtype=np.uint8)
    for _ in range(int(rng.integers(1, 6))):
        bh, bw = int(h * rng.uniform(3 / 7, 4 / 7)), int(w * rng.uniform(3 / 7, 4 / 7))
        y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        out[y : y + bh, x : x + bw] = image[y : y + bh, x : x + bw]
    return out


def corrupt(image: np.ndarray, rng: np.random.Generator, rates: dict | None = None) -> np.ndarray:
    """(H, W, 3) uint8 -> the corrupted copy the network learns to restore (the input is never changed)."""
    rates = {**RATES, **(rates or {})}
    out = image
    if rng.random() < rates["shuffle"]:
        out = local_shuffle(out, rng)
    if rng.random() < rates["nonlinear"]:
        out = cv2.LUT(np.ascontiguousarray(out), bezier_lut(rng))
    if rng.random() < rates["paint"]:
        out = out_paint(out, rng) if rng.random() < rates["outpaint"] else in_paint(out, rng)
    return np.ascontiguousarray(out) if out is not image else image.copy()
