"""Damage people add: writing, stamps and stickers (``(cv) -> [(layer, alpha), ...]`` like ``damage``)."""

from __future__ import annotations

import cv2
import numpy as np

from .canvas import _Canvas
from .draw import _curve, _fbm, _noise, _pick, _polyline, _put_centred, _put_text, _soft, _warp

SCRIBBLES = (
    "Inv. Nr. 4471", "1953", "Tante Emma 1931", "Nr 27", "ok", "J. B.", "Paris 1922", "copy", "Anna",
    "17/4", "verso", "no!", "Karl + Grete", "Box 12", "42", "Sommer 1958", "return", "x",
)  # fmt: skip
STAMP_WORDS = ("ARCHIV", "MUSEUM", "BIBLIOTHECA", "INV.", "PROPERTY", "COPY", "CITY LIBRARY", "RECEIVED")


def _writing(cv: _Canvas):
    rng, parts = cv.rng, []
    texts = rng.choice(len(SCRIBBLES), size=2, replace=False)
    for k in range(int(rng.integers(1, 3))):
        canvas = np.zeros((cv.h, cv.w), np.uint8)
        x, y = cv.inner_point(0.08)
        if rng.random() < 0.2:  # a scribble
            pts = _curve(rng, (x, y), rng.uniform(0, 6.3), rng.uniform(60, 200) * cv.s, 2, curl=0.5, bend=0.1)
            _polyline(canvas, pts, int(rng.integers(1, 3)))
        else:
            font = _pick(rng, (cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_SCRIPT_COMPLEX))
            scale = rng.uniform(0.7, 1.4) * cv.s
            text = SCRIBBLES[texts[k]]
            tw = cv2.getTextSize(text, font, scale, 1)[0][0]
            x = min(x, cv.w - tw - 5)
            _put_text(canvas, text, (max(x, 2), y), font, scale, int(rng.integers(1, 3)))
        canvas = _warp(canvas, (x, y), rng.uniform(-30, 30), shear=rng.uniform(-0.3, 0.1), wobble=0.8, rng=rng)
        pencil = rng.random() < 0.25
        ink = (0.4, 0.4, 0.43) if pencil else _pick(rng, ((0.12, 0.18, 0.55), (0.05, 0.05, 0.07), (0.65, 0.1, 0.1)))
        opacity = rng.uniform(0.6, 0.8) if pencil else rng.uniform(0.85, 1)  # in the layer: a pencil line is
        layer = cv.img + opacity * (np.float32(ink) - cv.img)  # faint but every stroke of it is writing
        parts.append((layer, (canvas / 255.0).astype(np.float32)))
    return parts


def _stamp(cv: _Canvas):
    rng = cv.rng
    canvas = np.zeros((cv.h, cv.w), np.uint8)
    x, y = cv.inner_point(0.12)
    font, th = cv2.FONT_HERSHEY_DUPLEX, max(1, round(cv.s * rng.uniform(1, 2.5)))
    if rng.random() < 0.5:  # round: two rings, text around, a number in the middle
        r = rng.uniform(0.08, 0.13) * min(cv.h, cv.w)
        cv2.circle(canvas, (int(x), int(y)), int(r), 255, th, cv2.LINE_AA)
        cv2.circle(canvas, (int(x), int(y)), int(0.66 * r), 255, max(1, th - 1), cv2.LINE_AA)
        _ring_text(canvas, (x, y), 0.7 * r, 0.26 * r, f"{_pick(rng, STAMP_WORDS)} * {_pick(rng, STAMP_WORDS)} * ", font)
        num = str(int(rng.integers(1, 99)))
        scale = 0.5 * r / cv2.getTextSize(num, font, 1, 1)[0][0]
        _put_centred(canvas, num, (x, y), font, scale, th)
    else:  # rectangular: a double frame and one or two lines
        lines = [_pick(rng, STAMP_WORDS), f"No {int(rng.integers(10, 9999))}"][: int(rng.integers(1, 3))]
        scale = rng.uniform(0.5, 0.8) * cv.s
        sizes = [cv2.getTextSize(t, font, scale, th)[0] for t in lines]
        bw, lh = max(s[0] for s in sizes) + 16 * cv.s, max(s[1] for s in sizes) + 10 * cv.s
        x0, y0 = x - bw / 2, y - lh * len(lines) / 2
        cv2.rectangle(canvas, (int(x0), int(y0)), (int(x0 + bw), int(y0 + lh * len(lines) + 4)), 255, th, cv2.LINE_AA)
        for j, t in enumerate(lines):
            _put_text(canvas, t, (x0 + 8 * cv.s, y0 + lh * (j + 1) - 3 * cv.s), font, scale, th)
    canvas = _warp(canvas, (x, y), rng.uniform(-35, 35))
    inking = np.clip(1 + 0.4 * _fbm(rng, cv.h, cv.w, 8), 0, 1)  # uneven ink: faint parts are not labelled
    ink = _pick(rng, ((0.42, 0.22, 0.55), (0.18, 0.28, 0.62), (0.7, 0.15, 0.15), (0.1, 0.1, 0.12)))
    alpha = canvas / 255.0 * inking * rng.uniform(0.85, 1)
    return [(cv.img * np.float32(ink) * 1.3, alpha.astype(np.float32))]


def _ring_text(canvas: np.ndarray, center, r_in: float, band: float, text: str, font: int) -> None:
    """Write ``text`` once around a ring (radii r_in..r_in+band), letters' tops outwards, into canvas in place."""
    length, band = int(2 * np.pi * (r_in + band / 2)), max(4, int(band))
    tw, tht = cv2.getTextSize(text, font, 1, 1)[0]
    strip = np.zeros((int(tht * 1.5), tw + 2), np.uint8)
    _put_text(strip, text, (1, tht * 1.2), font, 1, max(1, round(tht / 12)))
    strip = cv2.resize(strip, (length, band), interpolation=cv2.INTER_AREA)
    reach = int(r_in + band) + 2
    yy, xx = np.mgrid[-reach:reach, -reach:reach].astype(np.float32)
    ang = np.mod(np.arctan2(yy, xx), 2 * np.pi)  # clockwise on screen, from 3 o'clock
    map_x, map_y = ang / (2 * np.pi) * length, (r_in + band) - np.hypot(xx, yy)  # strip row 0 = outer edge
    ring = cv2.remap(strip, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    cx, cy = int(round(center[0])), int(round(center[1]))
    y0, x0 = cy - reach, cx - reach
    sy, sx = slice(max(0, y0), min(canvas.shape[0], cy + reach)), slice(max(0, x0), min(canvas.shape[1], cx + reach))
    canvas[sy, sx] = np.maximum(canvas[sy, sx], ring[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0])


def _sticker(cv: _Canvas):
    rng = cv.rng
    x, y = cv.inner_point(0.15)
    bw, bh = rng.uniform(0.15, 0.3) * cv.w, rng.uniform(0.08, 0.16) * cv.h
    angle = rng.uniform(-8, 8)
    box = ((x, y), (bw, bh), angle)
    pts = cv2.boxPoints(box)
    shape = np.zeros((cv.h, cv.w), np.uint8)
    cv2.fillPoly(shape, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
    region = shape >= 128
    if rng.random() < 0.3:  # partly torn off
        region &= _noise(rng, cv.h, cv.w, 0.3 * bw) > -0.5
    paper = np.float32(_pick(rng, ((0.97, 0.96, 0.92), (0.95, 0.9, 0.72), (0.92, 0.92, 0.95))))
    layer = np.broadcast_to(paper, cv.img.shape) * (1 + 0.01 * _noise(rng, cv.h, cv.w, 4))[..., None]
    ink = np.zeros((cv.h, cv.w), np.uint8)
    if rng.random() < 0.6:  # a printed coloured frame
        inner = cv2.boxPoints(((x, y), (bw - 8 * cv.s, bh - 8 * cv.s), angle))
        _polyline(ink, inner, 1, closed=True)
    font = _pick(rng, (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_COMPLEX))
    text = _pick(rng, SCRIBBLES)
    scale = 0.9 * bh / 2.2 / cv2.getTextSize("Hg", font, 1, 1)[0][1]
    tw = cv2.getTextSize(text, font, scale, 1)[0][0]
    scale *= min(1.0, 0.8 * bw / max(tw, 1))
    txt = np.zeros_like(ink)
    _put_centred(txt, text, (x, y), font, scale, 1)
    ink = np.maximum(ink, _warp(txt, (x, y), -angle))
    colour = np.float32(_pick(rng, ((0.7, 0.15, 0.15), (0.15, 0.2, 0.5), (0.1, 0.1, 0.1))))
    layer = layer + (ink / 255.0)[..., None] * (colour - layer)
    shadow = cv2.GaussianBlur(np.roll(shape / 255.0, (2, 2), (0, 1)), (0, 0), 2) * 0.35 * (shape < 128)
    return [(cv.img * 0.5, shadow.astype(np.float32)), (np.clip(layer, 0, 1).astype(np.float32), _soft(region, 1))]
