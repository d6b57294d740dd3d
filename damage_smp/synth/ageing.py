"""Materials: each ages a picture into paper, parchment, a photographic print, a film frame or a painted
canvas (tone, texture, vignetting, grain, borders, shadows that look like stains but are not damage).
Each is ``(rng, picture) -> (H, W, 3) float32 0..1``."""

from __future__ import annotations

import cv2
import numpy as np

from .draw import _fbm, _gray, _grid, _noise, _pick, _put_text, _scale, _side_dist, _to3


def _shadow(rng, h, w) -> np.ndarray:
    """(H, W) multiplicative neutral shadow: a gutter/curl gradient or a soft cast shadow (stain look-alikes)."""
    if rng.random() < 0.55:
        return np.ones((h, w), np.float32)
    yy, xx = _grid(h, w)
    if rng.random() < 0.5:
        side = int(rng.integers(4))
        d = _side_dist(h, w, side) / rng.uniform(0.08, 0.2) / (w if side < 2 else h)
        return (1 - rng.uniform(0.2, 0.4) * np.exp(-d)).astype(np.float32)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    r = rng.uniform(0.2, 0.4) * min(h, w)
    d = np.sqrt(((xx - cx) / r) ** 2 + ((yy - cy) / (r * rng.uniform(0.4, 1))) ** 2)
    return (1 - rng.uniform(0.12, 0.25) * np.clip(1.3 - d, 0, 1) ** 1.5).astype(np.float32)


def _paper(rng, picture) -> np.ndarray:
    h, w = picture.shape[:2]
    base = np.array([0.94, 0.91, 0.84], np.float32) + rng.uniform(-0.03, 0.03, 3).astype(np.float32)
    tex = 1 + 0.012 * rng.standard_normal((h, w)).astype(np.float32) + 0.02 * _fbm(rng, h, w, 40)
    yy, xx = _grid(h, w)
    edge = np.clip(1 - np.minimum(np.minimum(xx, w - 1 - xx), np.minimum(yy, h - 1 - yy)) / (0.12 * min(h, w)), 0, 1)
    yellow = 1 - 0.08 * edge[..., None] * np.array([0, 0.3, 1], np.float32)  # edges yellow first
    return np.clip(base * tex[..., None] * yellow * picture * _shadow(rng, h, w)[..., None], 0, 1)


def _parchment(rng, picture) -> np.ndarray:
    h, w = picture.shape[:2]
    base = np.array([0.88, 0.8, 0.63], np.float32) + rng.uniform(-0.03, 0.03, 3).astype(np.float32)
    mottle = 1 + 0.05 * _fbm(rng, h, w, 80)[..., None] * np.array([0.6, 1, 1.4], np.float32)
    cockle = 1 + 0.04 * _noise(rng, h, w, min(h, w) / 3)[..., None]  # uneven skin catches the light
    specks = cv2.GaussianBlur((rng.random((h, w)) < 0.002).astype(np.float32), (0, 0), 0.7)  # hair follicles
    img = base * mottle * cockle * picture * (1 - 0.6 * specks[..., None]) * _shadow(rng, h, w)[..., None]
    return np.clip(img, 0, 1).astype(np.float32)


def _vignette(rng, h, w, strength) -> np.ndarray:
    yy, xx = _grid(h, w)
    r2 = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) * 2
    return (1 - strength * r2**1.25)[..., None].astype(np.float32)


def _photo(rng, picture) -> np.ndarray:
    h, w = picture.shape[:2]
    g = _gray(picture)
    mode = rng.choice(["sepia", "bw", "faded"], p=[0.45, 0.25, 0.3])
    if mode == "sepia":
        dark, light = np.array([0.14, 0.09, 0.06], np.float32), np.array([0.96, 0.91, 0.8], np.float32)
        pic = dark + (light - dark) * (g ** rng.uniform(0.8, 1.2))[..., None]
    elif mode == "bw":
        pic = _to3(np.clip((g - 0.5) * rng.uniform(1.0, 1.3) + 0.5, 0, 1)) * np.array([0.97, 0.98, 1.0], np.float32)
    else:
        sat = rng.uniform(0.35, 0.7)
        pic = g[..., None] + (picture - g[..., None]) * sat
        pic = 0.1 + 0.85 * pic * _pick(rng, (np.float32([1.05, 0.96, 0.82]), np.float32([1.04, 0.9, 0.98])))
    pic = pic * _vignette(rng, h, w, rng.uniform(0.1, 0.35))
    pic = pic * (1 + 0.01 * rng.standard_normal((h, w, 1)).astype(np.float32)) * _shadow(rng, h, w)[..., None]
    if rng.random() < 0.6:  # the print's white border
        b = int(rng.uniform(0.04, 0.08) * min(h, w))
        inner = cv2.resize(pic, (w - 2 * b, h - 2 * b), interpolation=cv2.INTER_AREA)
        out = np.empty_like(pic)
        out[:] = np.array([0.93, 0.91, 0.86], np.float32) * (1 + 0.01 * _noise(rng, h, w, 30))[..., None]
        out[b : h - b, b : w - b] = inner
        pic = out
    return np.clip(pic, 0, 1).astype(np.float32)


def _film(rng, picture) -> np.ndarray:
    h, w = picture.shape[:2]
    colour = rng.random() < 0.35
    pic = picture if colour else _to3(_gray(picture))
    pic = np.clip((pic - 0.5) * rng.uniform(1.1, 1.4) + 0.5, 0, 1)
    if colour:
        pic = pic * _pick(rng, (np.float32([0.95, 1.02, 1.05]), np.float32([1.05, 0.93, 1.0])))
    s = _scale(h, w)
    if rng.random() < 0.6:  # the frame on its strip: black rebate, sprocket holes, edge print
        r = int(rng.uniform(0.1, 0.13) * h)
        out = np.full_like(pic, 0.04)
        out[r : h - r] = cv2.resize(pic, (w, h - 2 * r), interpolation=cv2.INTER_AREA)
        holes = np.zeros((h, w), np.uint8)
        hw, hh, pitch = int(0.035 * w), int(0.5 * r), 0.075 * w
        x0 = rng.uniform(0, pitch)
        for x in np.arange(x0, w, pitch):
            for y in (r * 0.2, h - r * 0.2 - hh):
                cv2.rectangle(holes, (int(x), int(y)), (int(x) + hw, int(y) + hh), 255, -1, cv2.LINE_AA)
        holes = cv2.GaussianBlur(holes, (0, 0), 0.8) / 255.0
        out += holes[..., None] * (0.95 - out)  # the light table shows through the holes
        edge = np.zeros((h, w), np.uint8)
        code = f"{_pick(rng, ('KODAK', 'ILFORD', 'AGFA'))} {int(rng.integers(100, 9999))}  {int(rng.integers(1, 36))}A"
        _put_text(edge, code, (rng.uniform(0.1, 0.5) * w, h - r * 0.25), cv2.FONT_HERSHEY_PLAIN, 0.8 * s, 1)
        out += (edge / 255.0)[..., None] * (np.float32([0.95, 0.7, 0.3]) - out) * 0.9
        pic = out
    grain = rng.normal(0, 1, (h, w, 1 + 2 * colour)).astype(np.float32)
    clump = cv2.resize(rng.normal(0, 1, (h // 2, w // 2)).astype(np.float32), (w, h))[..., None]
    g = _gray(pic)[..., None]
    amount = rng.uniform(0.015, 0.04) * (4 * g * (1 - g) + 0.3)
    pic = pic * _vignette(rng, h, w, rng.uniform(0.05, 0.25)) + amount * (0.7 * grain + 0.5 * clump)
    return np.clip(pic, 0, 1).astype(np.float32)


def _canvas(rng, picture) -> np.ndarray:
    h, w = picture.shape[:2]
    yy, xx = _grid(h, w)
    p = rng.uniform(3, 5) * min(h, w) / 384
    tx = 0.5 + 0.5 * np.cos(2 * np.pi * xx / p + 0.6 * _noise(rng, h, w, 25))
    ty = 0.5 + 0.5 * np.cos(2 * np.pi * yy / p + 0.6 * _noise(rng, h, w, 25))
    over = ((np.floor(xx / p) + np.floor(yy / p)) % 2).astype(np.float32)
    weave = 1 - rng.uniform(0.07, 0.13) * (1 - (over * tx + (1 - over) * ty))
    relief = cv2.GaussianBlur(_gray(picture), (0, 0), 1.5)  # impasto: light from the top left
    shade = 1 + 1.5 * (np.roll(relief, 1, 0) - relief + np.roll(relief, 1, 1) - relief)
    varnish = np.float32([1.0, 0.95, 0.82]) ** rng.uniform(0.3, 1.0)
    img = picture * (weave * shade)[..., None] * varnish * _vignette(rng, h, w, rng.uniform(0, 0.15))
    return np.clip(img, 0, 1).astype(np.float32)


AGEING = {"paper": _paper, "parchment": _parchment, "photo": _photo, "film": _film, "canvas": _canvas}
