"""What is printed or painted on the object, before ageing: crops of the photographs and textures that
scikit-image ships, turned into line art, a document page, a painting or a pattern. Several carry
look-alikes of damage that are not labelled (pen lines, hatching, stippling, a document's own hand).
Each maker is ``(rng, h, w, material) -> (H, W, 3) float32 0..1``, white where nothing is printed."""

from __future__ import annotations

import functools

import cv2
import numpy as np

from .draw import _curve, _fbm, _gray, _grid, _ink, _noise, _pick, _polyline, _put_text, _scale, _warp

WORDS = (
    "anno domini et in nomine terra aqua liber codex folio capitulum de rebus gestis regis civitas ecclesia "
    "the of and to in register inventory letter received year month county parish estate account sold "
    "der die und von zu im jahre stadt amt buch seite brief archiv nummer"
).split()


@functools.cache
def _source(name: str) -> np.ndarray:
    """A picture bundled inside scikit-image (no download) as (H, W, 3) float32 0..1; cached, never mutated."""
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.dtype == bool:
        arr = np.where(arr, 40, 235).astype(np.uint8)  # the horse silhouette, dark on light
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, 2)
    out = arr[..., :3].astype(np.float32) / 255
    out.flags.writeable = False
    return out


def _crop(rng, name: str, h: int, w: int, zoom=(0.55, 1.0), flip: bool = True) -> np.ndarray:
    """A random crop of a bundled picture with the target's aspect ratio, resized to (H, W, 3)."""
    src = _source(name)
    sh, sw = src.shape[:2]
    cw = min(sw, sh * w / h) * rng.uniform(*zoom)
    ch = cw * h / w
    x0, y0 = int(rng.uniform(0, sw - cw + 1e-6)), int(rng.uniform(0, sh - ch + 1e-6))
    crop = src[y0 : y0 + max(2, int(ch)), x0 : x0 + max(2, int(cw))]
    out = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA if cw > w else cv2.INTER_CUBIC)
    out = np.clip(out, 0, 1)
    return out[:, ::-1].copy() if flip and rng.random() < 0.5 else out


def _photographic(rng, h, w, material) -> np.ndarray:
    names = ("camera", "astronaut", "chelsea", "coffee", "rocket", "coins", "moon", "hubble_deep_field")
    return _crop(rng, _pick(rng, names), h, w)


def _line_art(rng, h, w, material) -> np.ndarray:
    """A pen drawing of a photograph: contour lines, hatching, stippling, a ruled frame and flourishes."""
    name = _pick(rng, ("camera", "chelsea", "astronaut", "coffee", "rocket", "horse", "coins"))
    g = cv2.GaussianBlur(_gray(_crop(rng, name, h, w, zoom=(0.7, 1.0))), (0, 0), 0.8)
    s = _scale(h, w)
    sig = rng.uniform(1.0, 1.6) * s
    edges = cv2.GaussianBlur(g, (0, 0), 1.6 * sig) - cv2.GaussianBlur(g, (0, 0), sig)
    a = np.clip((edges - 0.012) / 0.03, 0, 1)  # pen lines on the dark side of every edge
    tone = cv2.GaussianBlur(g, (0, 0), 2 * s)
    yy, xx = _grid(h, w)
    period = rng.uniform(5, 8) * s
    for limit, ang in ((0.35, rng.uniform(0, np.pi)), (0.15, rng.uniform(0, np.pi))):  # hatch, cross-hatch
        phase = (xx * np.cos(ang) + yy * np.sin(ang)) / period + 0.25 * _fbm(rng, h, w, 40, 2)
        line = np.clip(1.2 - np.abs(phase - np.round(phase)) * period / 0.8, 0, 1)
        a = np.maximum(a, line * (tone < limit + 0.08 * _noise(rng, h, w, 20)) * rng.uniform(0.7, 1))
    stipple = (rng.random((h, w)) < 0.04 * (1 - tone)) & (tone < 0.6) & (tone > 0.3)
    a = np.maximum(a, stipple * rng.uniform(0.6, 1.0))
    extra = np.zeros((h, w), np.uint8)
    if rng.random() < 0.6:  # a ruled double frame, straight lines that are not folds or scratches
        m = int(rng.uniform(0.03, 0.06) * min(h, w))
        cv2.rectangle(extra, (m, m), (w - m, h - m), 230, max(1, round(s)), cv2.LINE_AA)
        cv2.rectangle(extra, (m + 4, m + 4), (w - m - 4, h - m - 4), 200, 1, cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 4))):  # pen flourishes, curly like hairs but part of the drawing
        start = (rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h)
        _polyline(extra, _curve(rng, start, rng.uniform(0, 6.3), rng.uniform(40, 160) * s, curl=0.08), 1, 220)
    a = np.maximum(a, extra / 255.0).astype(np.float32)
    ink = _pick(rng, ((0.08, 0.07, 0.07), (0.28, 0.18, 0.1), (0.22, 0.14, 0.1), (0.1, 0.12, 0.22)))
    return _ink(a, ink)


def _text(rng, h, w, material) -> np.ndarray:
    """A document page: a scanned text block and/or typeset or hand-written lines in the document's own ink."""
    s = _scale(h, w)
    a = np.zeros((h, w), np.float32)
    m = int(rng.uniform(0.06, 0.1) * w)
    y = int(rng.uniform(0.07, 0.12) * h)
    if rng.random() < (0.5 if material == "paper" else 0.2):  # a real scan (skimage's 'page') on top
        src = _gray(_source("page"))
        bg = cv2.GaussianBlur(cv2.dilate(src, np.ones((9, 9), np.uint8)), (0, 0), 5)
        scan = np.clip((bg - src) / (bg + 1e-3) * 2.2 - 0.15, 0, 1)  # ink coverage, illumination removed
        bw = w - 2 * m
        bh = min(int(scan.shape[0] * bw / scan.shape[1]), int(0.55 * h))
        a[y : y + bh, m : m + bw] = cv2.resize(scan, (bw, bh), interpolation=cv2.INTER_AREA)
        y += bh + int(0.04 * h)
    hand = material == "parchment" or rng.random() < 0.35  # the document itself is hand-written
    fonts = (
        (cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_SCRIPT_COMPLEX) if hand
        else (cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX)
    )  # fmt: skip
    font = _pick(rng, fonts)
    scale = rng.uniform(0.45, 0.65) * s
    lead = int(rng.uniform(1.9, 2.4) * cv2.getTextSize("Hg", font, scale, 1)[0][1])
    canvas = np.zeros((h, w), np.uint8)
    if y < 0.2 * h:  # a title line
        title = " ".join(_pick(rng, WORDS) for _ in range(int(rng.integers(2, 4)))).upper()
        tsz = cv2.getTextSize(title, font, scale * 1.5, max(1, round(1.5 * s)))[0]
        _put_text(canvas, title, ((w - tsz[0]) / 2, y + tsz[1]), font, scale * 1.5, max(1, round(1.5 * s)))
        y += tsz[1] + lead
    ruled = hand and rng.random() < 0.5
    while y + lead < h - 0.06 * h:
        y += lead
        x = m + (int(rng.uniform(0.02, 0.08) * w) if rng.random() < 0.15 else 0)
        end = w - m - (int(rng.uniform(0.1, 0.5) * w) if rng.random() < 0.15 else 0)
        if ruled:
            cv2.line(canvas, (m // 2, y + 3), (w - m // 2, y + 3), 70, 1, cv2.LINE_AA)
        while True:
            word = _pick(rng, WORDS)
            width = cv2.getTextSize(word + " ", font, scale, 1)[0][0]
            if x + width > end:
                break
            jit = rng.normal(0, 0.8) if hand else 0
            _put_text(canvas, word, (x, y + jit), font, scale, max(1, round(s)))
            x += width
    canvas = _warp(canvas, (w / 2, h / 2), rng.uniform(-1, 1), wobble=0.6 if hand else 0, rng=rng)
    a = np.maximum(a, canvas / 255.0).astype(np.float32)
    ink = (0.3, 0.19, 0.1) if material == "parchment" else _pick(rng, ((0.06, 0.06, 0.07), (0.15, 0.16, 0.3)))
    return _ink(a, ink)


def _kuwahara(img: np.ndarray, r: int) -> np.ndarray:
    """Kuwahara filter: each pixel takes the mean of its least varied quadrant, which paints flat strokes."""
    k = r + 1
    g = _gray(img)
    means, variances = [], []
    for anchor in ((0, 0), (r, 0), (0, r), (r, r)):  # the four (r+1)^2 quadrants around each pixel
        means.append(cv2.blur(img, (k, k), anchor=anchor, borderType=cv2.BORDER_REFLECT))
        mg = cv2.blur(g, (k, k), anchor=anchor, borderType=cv2.BORDER_REFLECT)
        variances.append(cv2.blur(g * g, (k, k), anchor=anchor, borderType=cv2.BORDER_REFLECT) - mg * mg)
    best = np.argmin(np.stack(variances), 0)  # (H, W)
    return np.take_along_axis(np.stack(means), best[None, ..., None].repeat(3, -1), 0)[0]


def _artistic(rng, h, w, material) -> np.ndarray:
    """A painting made from a photograph: Kuwahara strokes, bolder colour and brush-stroke texture."""
    name = _pick(rng, ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry", "coins"))
    pic = _crop(rng, name, h, w)
    s = _scale(h, w)
    pic = _kuwahara(_kuwahara(pic, max(2, round(rng.uniform(3, 6) * s))), max(1, round(2 * s)))
    g = _gray(pic)
    if float(np.abs(pic - g[..., None]).mean()) < 0.02:  # a grey source: paint it with a warm palette
        dark, mid, light = (np.float32(c) for c in ((0.15, 0.1, 0.12), (0.6, 0.4, 0.25), (0.95, 0.88, 0.7)))
        t = g[..., None]
        pic = np.where(t < 0.5, dark + (mid - dark) * t * 2, mid + (light - mid) * (t - 0.5) * 2)
    pic = g[..., None] + (pic - g[..., None]) * rng.uniform(1.2, 1.6)  # painters' saturation
    strokes = []
    for aspect in ((3, 14), (14, 3)):  # horizontal and vertical brush streaks, mixed by region
        grid = rng.standard_normal((max(2, h // aspect[0]), max(2, w // aspect[1])), dtype=np.float32)
        strokes.append(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC))
    mix = (_noise(rng, h, w, 60) > 0).astype(np.float32)
    brush = strokes[0] * mix + strokes[1] * (1 - mix)
    return np.clip(pic * (1 + 0.05 * brush[..., None]), 0, 1).astype(np.float32)


def _pattern(rng, h, w, material) -> np.ndarray:
    """A printed texture (brick, grass, gravel in two inks) or a wallpaper/textile pattern."""
    dark = rng.uniform([0.05, 0.05, 0.05], [0.5, 0.4, 0.4]).astype(np.float32)
    light = rng.uniform([0.75, 0.7, 0.6], [1, 0.97, 0.92]).astype(np.float32)
    if rng.random() < 0.5:
        g = _gray(_crop(rng, _pick(rng, ("brick", "grass", "gravel")), h, w))
        g = np.clip((g - g.mean()) / (g.std() + 1e-6) * 0.22 + 0.5, 0, 1)
        return (dark + (light - dark) * g[..., None]).astype(np.float32)
    s = _scale(h, w)
    yy, xx = _grid(h, w)
    p1, p2 = rng.uniform(12, 40) * s, rng.uniform(12, 40) * s
    stripes = 0.5 + 0.25 * np.cos(2 * np.pi * xx / p1) + 0.25 * np.cos(2 * np.pi * yy / p2) * rng.integers(0, 2)
    tile = int(rng.uniform(20, 44) * s)
    motif = np.zeros((tile, tile), np.uint8)
    c, r = tile // 2, max(2, tile // 5)
    for dx, dy in ((0, -r), (r, 0), (0, r), (-r, 0)):  # a four-petal flower
        cv2.circle(motif, (c + dx, c + dy), max(1, r * 2 // 3), 255, -1, cv2.LINE_AA)
    motif = np.tile(motif, (h // tile + 1, w // tile + 1))[:h, :w] / 255.0
    t = np.clip(0.35 + 0.5 * stripes - 0.6 * motif, 0, 1)[..., None]
    return (dark + (light - dark) * t).astype(np.float32)


CONTENT = {"photographic": _photographic, "line art": _line_art, "text": _text, "artistic": _artistic,
           "pattern": _pattern}  # fmt: skip
