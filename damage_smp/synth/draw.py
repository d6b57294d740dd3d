"""Drawing primitives shared by content, ageing and damage: smooth noise, coordinate grids, soft alphas,
anti-aliased lines and text, warps. Pure functions of their arguments and ``rng``."""

from __future__ import annotations

import functools

import cv2
import numpy as np


def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """(H, W) smooth noise, features about ``cell`` px wide."""
    gh, gw = max(2, int(h / max(cell, 1)) + 2), max(2, int(w / max(cell, 1)) + 2)
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _fbm(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 4) -> np.ndarray:
    """(H, W) fractal noise, zero mean, unit std."""
    out = np.zeros((h, w), np.float32)
    for k in range(octaves):
        out += 0.5**k * _noise(rng, h, w, cell / 2**k)
    return (out - out.mean()) / (out.std() + 1e-6)


def _scale(h: int, w: int) -> float:
    """Size scale of an (H, W) image: sizes in px are tuned at 384 px on the short side."""
    return min(h, w) / 384


@functools.lru_cache(maxsize=4)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float32 row and column coordinates; cached and read-only."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _side_dist(h: int, w: int, side: int) -> np.ndarray:
    """(H, W) distance in px to one side of the frame (0 left, 1 right, 2 top, 3 bottom); may be read-only."""
    yy, xx = _grid(h, w)
    return (xx, w - 1 - xx, yy, h - 1 - yy)[side]


def _rotate(dx: np.ndarray, dy: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (dx, dy) in the frame turned by ``angle`` (rad): the coordinates along and across it."""
    return dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)


def _soft(region: np.ndarray, ramp: float = 1.5) -> np.ndarray:
    """Anti-aliased alpha of a bool region, ``ramp`` px soft; alpha >= 0.5 exactly on the region."""
    # the signed distance is >= 1 inside and <= -1 outside, so 0.5 + sd / (2 ramp) splits them at 0.5
    return np.clip(0.5 + _signed_dist(region) / (2 * ramp), 0, 1).astype(np.float32)


def _signed_dist(region: np.ndarray) -> np.ndarray:
    """(H, W) distance in px to the region's edge: positive inside, negative outside."""
    r = region.astype(np.uint8)
    return cv2.distanceTransform(r, cv2.DIST_L2, 3) - cv2.distanceTransform(1 - r, cv2.DIST_L2, 3)


def _grow(region: np.ndarray, px: int = 1) -> np.ndarray:
    """(H, W) bool region grown by ``px`` pixels (3x3 dilation)."""
    return cv2.dilate(region.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=px) > 0


def _cells(h: int, w: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """(H, W) int32 label of the nearest seed pixel (ys, xs): a Voronoi partition into cells."""
    seeds = np.ones((h, w), np.uint8)
    seeds[ys, xs] = 0
    _, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
    return labels


def _polyline(canvas: np.ndarray, pts: np.ndarray, thickness: int, value: float = 255, closed=False) -> None:
    """Anti-aliased sub-pixel polyline (pts (N, 2) float x, y) drawn into a uint8 canvas in place."""
    pts = np.round(np.asarray(pts, np.float64) * 16).astype(np.int32)
    cv2.polylines(canvas, [pts], closed, float(value), max(1, int(thickness)), cv2.LINE_AA, shift=4)


def _curve(rng, start, heading, length, step=2.0, curl=0.0, bend=0.02) -> np.ndarray:
    """(N, 2) points of a smooth path: curvature wanders by ``bend`` and oscillates by ``curl`` (rad per step)."""
    k = max(2, int(length / step))
    kappa = bend * _noise(rng, 1, k, k / 4)[0] + curl * np.sin(np.cumsum(rng.uniform(0.05, 0.3, k)))
    ang = heading + np.cumsum(kappa)
    pts = np.cumsum(np.stack([np.cos(ang), np.sin(ang)], 1) * step, 0) + np.asarray(start, np.float64)
    return np.vstack([start, pts])


def _ink(alpha: np.ndarray, color) -> np.ndarray:
    """(H, W) ink coverage -> (H, W, 3) picture to multiply onto a substrate (white where no ink)."""
    return 1 - alpha[..., None] * (1 - np.asarray(color, np.float32))


def _gray(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def _to3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, 2)


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _put_text(canvas, text, org, font, scale, thickness, value=255) -> None:
    cv2.putText(canvas, text, (int(org[0]), int(org[1])), font, scale, float(value), thickness, cv2.LINE_AA)


def _put_centred(canvas, text, center, font, scale, thickness) -> None:
    """Write ``text`` into a uint8 canvas in place, centred on ``center`` (x, y)."""
    tw, th = cv2.getTextSize(text, font, scale, thickness)[0]
    _put_text(canvas, text, (center[0] - tw / 2, center[1] + th / 2), font, scale, thickness)


def _warp(canvas: np.ndarray, center, angle: float, scale: float = 1.0, shear: float = 0.0, wobble=0.0, rng=None):
    """Rotate/shear a full-frame canvas about ``center``, optionally with a smooth handwriting wobble (px)."""
    h, w = canvas.shape[:2]
    m = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), angle, scale)
    m[0, 1] += shear
    m[0, 2] -= shear * center[1]
    out = cv2.warpAffine(canvas, m, (w, h), flags=cv2.INTER_LINEAR)
    if wobble and rng is not None:
        yy, xx = _grid(h, w)
        dx, dy = wobble * _noise(rng, h, w, 12), wobble * _noise(rng, h, w, 12)
        out = cv2.remap(out, xx + dx, yy + dy, cv2.INTER_LINEAR)
    return out
