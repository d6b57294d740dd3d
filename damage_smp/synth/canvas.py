"""The image being damaged (``_Canvas``): the aged object placed on a scanner bed, where it can be
damaged (edge and inner points, irregular regions), and ``_blend``, which draws one damage layer into
both the image and the class-index map."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from .draw import _fbm, _grid, _pick, _rotate, _scale

BACKGROUND_SHARE = 0.3  # images placed on a scanner bed


@dataclass
class _Canvas:
    """The image being damaged, in final (canvas) coordinates."""

    rng: np.random.Generator
    img: np.ndarray  # (H, W, 3) float32 0..1
    obj: np.ndarray  # (H, W) float32 coverage of the object (0 on the scanner bed)
    substrate: np.ndarray  # (H, W, 3) what a hole shows: the bed, a backing board or the light table
    material: str

    @property
    def h(self) -> int:
        return self.img.shape[0]

    @property
    def w(self) -> int:
        return self.img.shape[1]

    @property
    def s(self) -> float:  # size scale: damage sizes are tuned at 384 px on the short side
        return _scale(self.h, self.w)

    @functools.cached_property
    def edge_dist(self) -> np.ndarray:
        """(H, W) distance in px to the outside of the object (the canvas border counts as outside)."""
        inside = np.pad((self.obj >= 0.5).astype(np.uint8), 1)
        return cv2.distanceTransform(inside, cv2.DIST_L2, 3)[1:-1, 1:-1]

    @functools.cached_property
    def _edge_pixels(self) -> tuple[np.ndarray, np.ndarray]:
        return np.nonzero((self.edge_dist >= 1) & (self.edge_dist < 2))

    def edge_point(self, corner: bool = False) -> tuple[float, float]:
        """A random (x, y) on the object's edge; near a corner of the canvas if ``corner``."""
        ys, xs = self._edge_pixels
        if corner:
            cx, cy = self.rng.choice([0, self.w]), self.rng.choice([0, self.h])
            j = int(np.argmin((xs - cx) ** 2 + (ys - cy) ** 2))
        else:
            j = int(self.rng.integers(len(xs)))
        return float(xs[j]), float(ys[j])

    def inner_point(self, margin: float = 0.1) -> tuple[float, float]:
        """A random (x, y) inside the object, at least ``margin`` of the short side from its edge."""
        d = max(margin * min(self.h, self.w), 0.5)
        ys, xs = self.rng.uniform(0, self.h, 64), self.rng.uniform(0, self.w, 64)  # rejection sampling
        ok = np.flatnonzero(self.edge_dist[ys.astype(int), xs.astype(int)] > d)
        if len(ok) == 0:
            return self.w / 2, self.h / 2
        return float(xs[ok[0]]), float(ys[ok[0]])


def _place_on_bed(rng, obj_img: np.ndarray, material: str) -> _Canvas:
    """Put the object on a scanner bed (slightly turned and shrunk), or let it fill the frame."""
    h, w = obj_img.shape[:2]
    noise = 1 + 0.02 * _fbm(rng, h, w, 60)[..., None]
    if material == "film":  # holes in a film show the light table
        backing = np.float32([0.96, 0.96, 0.95])
    else:
        backing = _pick(
            rng, (np.float32([0.07, 0.07, 0.08]), np.float32([0.25, 0.24, 0.23]), np.float32([0.9, 0.9, 0.88]))
        )
    if rng.random() >= BACKGROUND_SHARE:
        sub = np.clip(backing * noise, 0, 1).astype(np.float32)
        return _Canvas(rng, obj_img.copy(), np.ones((h, w), np.float32), sub, material)
    bed = _pick(rng, (np.float32([0.06, 0.06, 0.07]), np.float32([0.32, 0.32, 0.33]), np.float32([0.72, 0.72, 0.7])))
    yy, _ = _grid(h, w)
    bed = np.clip(bed * noise * (1 + 0.06 * (yy / h - 0.5))[..., None], 0, 1).astype(np.float32)
    scale, angle = rng.uniform(0.76, 0.9), rng.uniform(-4, 4)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += rng.uniform(-0.25, 0.25, 2) * (1 - scale) * np.array([w, h])
    warped = cv2.warpAffine(obj_img, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    obj = cv2.warpAffine(np.ones((h, w), np.float32), m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    drop = cv2.GaussianBlur(np.roll(obj, (4, 3), (0, 1)), (0, 0), 4)  # the object's shadow on the bed
    bed_shaded = bed * (1 - 0.35 * drop)[..., None]
    img = warped + (1 - obj)[..., None] * bed_shaded  # warped is already premultiplied by obj
    return _Canvas(rng, img.astype(np.float32), obj, bed, material)


def _blend(cv: _Canvas, index: np.ndarray, layer: np.ndarray, alpha: np.ndarray, cls: int) -> None:
    """image += alpha * (layer - image) and index = cls where alpha >= 0.5, inside alpha's bounding box."""
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    if len(rows) == 0:
        return
    box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    a = alpha[box] * cv.obj[box]  # damage lives on the object, never on the scanner bed
    cv.img[box] += a[..., None] * (layer[box] - cv.img[box])
    index[box][a >= 0.5] = cls


def _blob(cv: _Canvas, center, radius: float, aspect: float = 1.0, rough: float = 0.35) -> np.ndarray:
    """(H, W) bool irregular region: a rotated ellipse whose edge is pushed around by fractal noise."""
    reach = int(radius * (1 + 3 * rough)) + 2  # the noise can push the edge out this far
    x0, y0 = max(0, int(center[0]) - reach), max(0, int(center[1]) - reach)
    x1, y1 = min(cv.w, int(center[0]) + reach), min(cv.h, int(center[1]) + reach)
    out = np.zeros((cv.h, cv.w), bool)
    if x1 <= x0 or y1 <= y0:
        return out
    yy, xx = _grid(cv.h, cv.w)
    t = cv.rng.uniform(0, np.pi)
    dx, dy = xx[y0:y1, x0:x1] - center[0], yy[y0:y1, x0:x1] - center[1]
    along, across = _rotate(dx, dy, t)
    u, v = along / radius, across / (radius * aspect)
    noise = _fbm(cv.rng, y1 - y0, x1 - x0, max(radius / 2, 4))
    out[y0:y1, x0:x1] = np.sqrt(u * u + v * v) + rough * noise < 1
    return out


def _disc(cv: _Canvas, x, y, r) -> np.ndarray:
    """(H, W) bool anti-aliased disc of radius ``r`` px at sub-pixel (x, y)."""
    canvas = np.zeros((cv.h, cv.w), np.uint8)
    cv2.circle(canvas, (int(x * 16), int(y * 16)), max(8, int(r * 16)), 255, -1, cv2.LINE_AA, 4)
    return canvas >= 128
