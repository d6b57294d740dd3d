"""The 15 damage renderers, which damage each material shows, and the order they are drawn in.

Each renderer takes the ``_Canvas`` and returns [(layer (H, W, 3), alpha (H, W)), ...]; ``render_sample``
blends them and labels alpha >= 0.5. Writing, stamps and stickers live in ``marks``.
"""

from __future__ import annotations

import cv2
import numpy as np

from .canvas import _blob, _Canvas, _disc
from .draw import _cells, _curve, _fbm, _grid, _grow, _noise, _pick, _polyline, _rotate, _side_dist, _signed_dist, _soft
from .marks import _stamp, _sticker, _writing

# Which damage each material shows, with relative odds; drawn in DAMAGE_ORDER (bottom layer first).
DAMAGE_ODDS = {
    "photo": {"Material loss": 1, "Peel": 1, "Dust": 2, "Scratch": 2, "Hair": 1, "Dirt": 1, "Fold": 1.5,
              "Writing": 1, "Cracks": 0.7, "Staining": 1, "Stamp": 0.7, "Sticker": 0.6, "Puncture": 0.7,
              "Burn marks": 0.3, "Lightleak": 0.4},
    "film": {"Dust": 2.5, "Scratch": 2.5, "Hair": 2, "Dirt": 0.7, "Lightleak": 1.5, "Burn marks": 0.5,
             "Staining": 0.6, "Cracks": 0.4, "Peel": 0.5, "Material loss": 0.3, "Puncture": 0.3},
    "paper": {"Material loss": 1.2, "Dust": 1, "Scratch": 0.6, "Hair": 0.6, "Dirt": 1, "Fold": 1.5,
              "Writing": 1.5, "Cracks": 0.3, "Staining": 1.5, "Stamp": 1.5, "Sticker": 1, "Puncture": 1,
              "Burn marks": 0.6},
    "parchment": {"Material loss": 1.2, "Dust": 0.8, "Hair": 0.5, "Dirt": 1, "Fold": 0.8, "Writing": 1,
                  "Cracks": 1, "Staining": 1.5, "Stamp": 1, "Puncture": 0.8, "Burn marks": 0.8, "Peel": 0.3},
    "canvas": {"Material loss": 1, "Peel": 1.5, "Dust": 1, "Scratch": 1, "Hair": 0.5, "Dirt": 1, "Cracks": 2.5,
               "Staining": 1, "Puncture": 0.6, "Burn marks": 0.4, "Sticker": 0.3, "Writing": 0.3},
}  # fmt: skip
DAMAGE_ORDER = (
    "Lightleak", "Staining", "Dirt", "Burn marks", "Cracks", "Peel", "Fold", "Writing", "Stamp", "Sticker",
    "Material loss", "Puncture", "Scratch", "Hair", "Dust",
)  # fmt: skip


def _material_loss(cv: _Canvas):
    rng, parts = cv.rng, []
    region = np.zeros((cv.h, cv.w), bool)
    for _ in range(int(rng.integers(1, 3))):
        if rng.random() < 0.6:  # a torn edge or corner
            r = rng.uniform(0.06, 0.16) * min(cv.h, cv.w)
            region |= _blob(cv, cv.edge_point(corner=rng.random() < 0.5), r, rng.uniform(0.5, 1), rough=0.5)
        else:  # a hole (insects, a tear)
            r = rng.uniform(0.02, 0.06) * min(cv.h, cv.w)
            region |= _blob(cv, cv.inner_point(), r, rng.uniform(0.5, 1), rough=0.5)
    rim = _grow(region, int(rng.integers(1, 3)))
    fibres = np.clip(cv.img * 1.1 + 0.08, 0, 1)  # torn fibres are lighter than the surface
    parts.append((fibres, _soft(rim)))
    parts.append((cv.substrate, _soft(region)))
    return parts


def _peel(cv: _Canvas):
    rng = cv.rng
    r = rng.uniform(0.05, 0.13) * min(cv.h, cv.w)
    region = _blob(cv, cv.inner_point(0.05), r, rng.uniform(0.4, 1), rough=0.45)
    k = int(np.clip(region.sum() / (rng.uniform(60, 250) * cv.s**2), 4, 400))
    ys, xs = np.nonzero(region)
    pick = rng.integers(len(ys), size=k)
    labels = _cells(cv.h, cv.w, ys[pick], xs[pick])  # the flakes
    lost = region & (rng.random(labels.max() + 1) < 0.65)[labels]  # flakes fallen off; the rest still hold
    lost &= ~(cv2.morphologyEx(labels.astype(np.float32), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0)
    ground = {"canvas": (0.86, 0.8, 0.68), "film": (0.9, 0.9, 0.86)}.get(cv.material, (0.93, 0.91, 0.86))
    ground = np.float32(ground) * (1 + 0.04 * _noise(rng, cv.h, cv.w, 3))[..., None]
    edge = _grow(lost)
    return [(cv.img * 0.55, _soft(edge)), (np.clip(ground, 0, 1), _soft(lost))]  # lifted edges cast a shadow


def _dust(cv: _Canvas):
    rng = cv.rng
    light, dark = np.zeros((cv.h, cv.w), np.uint8), np.zeros((cv.h, cv.w), np.uint8)
    k = int(rng.uniform(30, 150) * cv.h * cv.w / (512 * 384))
    for _ in range(k):
        canvas = light if rng.random() < (0.6 if cv.material == "film" else 0.4) else dark
        x, y = rng.uniform(0, cv.w), rng.uniform(0, cv.h)
        if rng.random() < 0.08:  # a lint fibre
            _polyline(canvas, _curve(rng, (x, y), rng.uniform(0, 6.3), rng.uniform(4, 12), 1, curl=0.3), 1)
        else:
            cv2.circle(canvas, (int(x * 16), int(y * 16)), int(rng.uniform(0.5, 1.5) * 16), 255, -1, cv2.LINE_AA, 4)
    la, da = light / 255.0 * rng.uniform(0.8, 1), dark / 255.0 * rng.uniform(0.8, 1)
    return [(np.full_like(cv.img, 0.12), da.astype(np.float32)), (np.full_like(cv.img, 0.95), la.astype(np.float32))]


def _scratch(cv: _Canvas):
    rng, parts = cv.rng, []
    diag = float(np.hypot(cv.h, cv.w))
    film = cv.material == "film"
    paths = []
    for _ in range(int(rng.integers(1, 5))):
        if film:  # film scratches run along the strip, top to bottom
            start, heading, length = (rng.uniform(0, cv.w), -5.0), np.pi / 2 + rng.normal(0, 0.02), cv.h + 10
        else:
            start, heading = cv.inner_point(0.02), rng.uniform(0, 2 * np.pi)
            length = rng.uniform(0.08, 0.5) * diag
        paths.append(_curve(rng, start, heading, length, step=3, bend=0.004))
    if not film and rng.random() < 0.4:  # an abrasion: a bundle of short parallel scratches
        (x, y), heading = cv.inner_point(0.1), rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(3, 9))):
            off = rng.normal(0, 6 * cv.s, 2)
            paths.append(_curve(rng, (x + off[0], y + off[1]), heading, rng.uniform(15, 60) * cv.s, 2, bend=0.01))
    for pts in paths:
        canvas = np.zeros((cv.h, cv.w), np.uint8)
        fade = np.clip(0.9 + 0.6 * _noise(rng, 1, len(pts), len(pts) / 3)[0], 0, 1)  # pressure varies
        thick = 1 if rng.random() < 0.75 else 2
        for j in range(len(pts) - 1):
            _polyline(canvas, pts[j : j + 2], thick, 255 * fade[j])
        if rng.random() < (0.7 if film else 0.6):  # through the emulsion or varnish: lighter
            layer = np.clip(cv.img + rng.uniform(0.25, 0.5), 0, 1)
        else:
            layer = cv.img * rng.uniform(0.3, 0.6)
        parts.append((layer, (canvas / 255.0).astype(np.float32)))
    return parts


def _hair(cv: _Canvas):
    rng, parts = cv.rng, []
    for _ in range(int(rng.integers(1, 4))):
        canvas = np.zeros((cv.h, cv.w), np.uint8)
        pts = _curve(rng, cv.inner_point(0.02), rng.uniform(0, 6.3), rng.uniform(40, 220) * cv.s, 1.5,
                     curl=rng.uniform(0.02, 0.12), bend=0.03)  # fmt: skip
        _polyline(canvas, pts, 1 if rng.random() < 0.75 else 2)
        tone = 0.92 if cv.material == "film" and rng.random() < 0.3 else rng.uniform(0.03, 0.15)
        parts.append((np.full_like(cv.img, tone), (canvas / 255.0 * rng.uniform(0.85, 1)).astype(np.float32)))
    return parts


def _dirt(cv: _Canvas):
    rng, parts = cv.rng, []
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(0.03, 0.1) * min(cv.h, cv.w)
        c = cv.inner_point(0.02)
        if rng.random() < 0.3:  # a greasy fingerprint: whorled ridges, smudged in places
            yy, xx = _grid(cv.h, cv.w)
            t, r = rng.uniform(0, np.pi), r * 1.3
            along, across = _rotate(xx - c[0], yy - c[1], t)
            u, v = along / (0.65 * r), across / r
            rr = np.sqrt(u * u + v * v)
            swirl = rr * r / (2.8 * cv.s) + 1.5 * _noise(rng, cv.h, cv.w, 14) + 0.6 * np.arctan2(v, u)
            ridges = (np.cos(2 * np.pi * swirl) > 0.3) & (rr < 1 + 0.15 * _noise(rng, cv.h, cv.w, 10))
            smudge = np.clip(0.7 + 0.5 * _noise(rng, cv.h, cv.w, 12), 0, 1)
            parts.append((cv.img * 0.55, (ridges * smudge).astype(np.float32)))
            continue
        region = _blob(cv, c, r, rng.uniform(0.4, 1), rough=0.6)
        blotch = np.clip(0.6 + 0.4 * _fbm(rng, cv.h, cv.w, 5), 0, 1)[..., None]  # grime sits in clumps
        grime = np.float32([0.55, 0.5, 0.42]) * rng.uniform(0.75, 1.2)
        layer = cv.img * (grime * blotch + 0.85 * (1 - blotch))
        parts.append((np.clip(layer, 0, 1), _soft(region, 3)))
    return parts


def _fold(cv: _Canvas):
    rng, parts = cv.rng, []
    yy, xx = _grid(cv.h, cv.w)
    for _ in range(int(rng.integers(1, 3))):
        if rng.random() < 0.3:  # a dog-ear across a corner
            cx, cy = rng.choice([0, cv.w]), rng.choice([0, cv.h])
            ang = np.pi / 4 + rng.normal(0, 0.2) + (np.pi / 2 if (cx == 0) != (cy == 0) else 0)
            off = rng.uniform(0.1, 0.25) * min(cv.h, cv.w)
            px, py = cx + off * (1 if cx == 0 else -1), cy
        else:  # a crease right across
            ang = (0 if rng.random() < 0.5 else np.pi / 2) + rng.normal(0, 0.05)
            px, py = rng.uniform(0.2, 0.8) * cv.w, rng.uniform(0.2, 0.8) * cv.h
        d = (xx - px) * -np.sin(ang) + (yy - py) * np.cos(ang)  # signed distance to the crease, px
        half = rng.uniform(1.0, 2.5) * cv.s
        # a ridge: shadow on one face, a highlight along the crest and the other face
        shadow = (d < -0.3 * half)[..., None]
        layer = np.where(shadow, cv.img * 0.6, np.clip(cv.img + 0.22, 0, 1))
        if cv.material == "photo" and rng.random() < 0.6:  # the emulsion cracks white along the crease
            core = (np.abs(d) < 0.8) * (_noise(rng, cv.h, cv.w, 8) > -0.3)
            layer[core] = 0.92
        parts.append((layer, np.clip(1.5 - np.abs(d) / half, 0, 1).astype(np.float32)))
    return parts


def _cracks(cv: _Canvas):
    rng = cv.rng
    canvas = np.zeros((cv.h, cv.w), np.uint8)
    if cv.material in ("canvas", "photo") and rng.random() < 0.8:  # craquelure: a network of cells
        cell = rng.uniform(10, 24) * cv.s
        gy, gx = np.mgrid[0 : cv.h : cell, 0 : cv.w : cell]  # one seed per jittered grid cell
        sy = np.clip(gy + rng.uniform(0, cell, gy.shape), 0, cv.h - 1).astype(int)
        sx = np.clip(gx + rng.uniform(0, cell, gx.shape), 0, cv.w - 1).astype(int)
        labels = _cells(cv.h, cv.w, sy, sx)
        yy, xx = _grid(cv.h, cv.w)
        wob = 0.07 * cell
        labels = cv2.remap(labels.astype(np.float32), xx + wob * _noise(rng, cv.h, cv.w, cell),
                           yy + wob * _noise(rng, cv.h, cv.w, cell), cv2.INTER_NEAREST)  # fmt: skip
        border = cv2.morphologyEx(labels, cv2.MORPH_GRADIENT, np.ones((2, 2), np.uint8)) > 0
        patch = _blob(cv, cv.inner_point(0.0), rng.uniform(0.2, 0.45) * min(cv.h, cv.w), rough=0.5)
        alpha = (border & patch & (_noise(rng, cv.h, cv.w, cell) > -0.8)) * rng.uniform(0.75, 0.95)
    else:  # branching cracks
        todo = [(cv.edge_point() if rng.random() < 0.5 else cv.inner_point(), rng.uniform(0, 6.3), 2, 0)]
        while todo:
            start, heading, thick, depth = todo.pop()
            pts = _curve(rng, start, heading, rng.uniform(30, 120) * cv.s / (1 + depth), 2, bend=0.12)
            _polyline(canvas, pts, thick)
            for j in rng.integers(len(pts), size=int(rng.integers(1, 3)) if depth < 3 else 0):
                todo.append((pts[j], heading + rng.choice([-1, 1]) * rng.uniform(0.4, 1.2), 1, depth + 1))
        alpha = canvas / 255.0 * rng.uniform(0.8, 1)
    return [(cv.img * rng.uniform(0.15, 0.35), alpha.astype(np.float32))]


def _staining(cv: _Canvas):
    rng, parts = cv.rng, []
    colour = _pick(rng, (np.float32([0.78, 0.62, 0.4]), np.float32([0.88, 0.78, 0.5]), np.float32([0.7, 0.62, 0.52])))
    if rng.random() < 0.25:  # foxing: a scatter of small rust-brown spots
        region = np.zeros((cv.h, cv.w), bool)
        cx, cy = cv.inner_point(0.05)
        for _ in range(int(rng.integers(6, 25))):
            x, y = cx + rng.normal(0, 0.12 * cv.w), cy + rng.normal(0, 0.12 * cv.h)
            region |= _disc(cv, x, y, rng.uniform(1.5, 5) * cv.s)
        return [(cv.img * np.float32([0.75, 0.55, 0.38]), _soft(region, 2))]
    for _ in range(int(rng.integers(1, 3))):
        c = cv.edge_point() if rng.random() < 0.4 else cv.inner_point(0.05)
        region = _blob(cv, c, rng.uniform(0.08, 0.2) * min(cv.h, cv.w), rng.uniform(0.5, 1), rough=0.4)
        sd = _signed_dist(region)
        tide = np.exp(-(((sd - 2.5 * cv.s) / (1.5 * cv.s)) ** 2))  # the tide line, just inside the edge
        uneven = np.clip(1 + 0.3 * _fbm(rng, cv.h, cv.w, 30), 0.6, 1.4)
        strength = np.clip(rng.uniform(0.3, 0.6) * uneven + 0.6 * tide, 0, 1)
        layer = cv.img * (1 - strength[..., None] * (1 - colour))
        parts.append((layer.astype(np.float32), _soft(region, 3)))
    return parts


def _puncture(cv: _Canvas):
    rng = cv.rng
    region = np.zeros((cv.h, cv.w), bool)
    kind = rng.random()
    if kind < 0.3:  # two filing holes near an edge
        r = rng.uniform(4, 7) * cv.s
        x = rng.uniform(0.04, 0.07) * cv.w
        for y in (0.35 * cv.h, 0.65 * cv.h):
            region |= _disc(cv, x, y + rng.normal(0, 2), r)
    else:  # pin and nail holes
        for _ in range(int(rng.integers(1, 7))):
            x, y = cv.inner_point(0.02)
            region |= _disc(cv, x, y, rng.uniform(1.5, 5) * cv.s)
    rim = _grow(region) & ~region
    return [(cv.img * 0.6, _soft(rim, 1)), (cv.substrate, _soft(region, 1))]


def _burn(cv: _Canvas):
    rng = cv.rng
    ax, ay = cv.edge_point(corner=rng.random() < 0.5)
    yy, xx = _grid(cv.h, cv.w)
    reach = rng.uniform(0.12, 0.3) * min(cv.h, cv.w)
    near = np.exp(-((xx - ax) ** 2 + (yy - ay) ** 2) / (2 * reach**2))
    depth = reach * 0.5 * near * (1 + 0.35 * _fbm(rng, cv.h, cv.w, 20))
    t = cv.edge_dist / np.maximum(depth, 1e-3)  # 0 at the edge, 1 where the scorch ends
    char, scorch = np.float32([0.05, 0.04, 0.03]), np.float32([0.62, 0.4, 0.18])
    tt = np.clip(t, 0, 1)[..., None]
    layer = np.where(
        tt < 0.5, char + (scorch * 0.6 - char) * tt * 2, scorch * 0.6 + (scorch - scorch * 0.6) * (tt - 0.5) * 2
    )
    layer = layer * (0.6 + 0.4 * cv.img)
    alpha = np.clip((1.15 - t) / 0.3, 0, 1)
    return [(layer.astype(np.float32), alpha.astype(np.float32))]


def _lightleak(cv: _Canvas):
    rng = cv.rng
    yy, xx = _grid(cv.h, cv.w)
    side = int(rng.integers(4))
    dist = _side_dist(cv.h, cv.w, side)
    along = (yy / cv.h, yy / cv.h, xx / cv.w, xx / cv.w)[side]
    width = rng.uniform(0.12, 0.3) * (cv.w if side < 2 else cv.h)
    glow = np.exp(-dist / width) * np.exp(-((along - rng.uniform(0.2, 0.8)) ** 2) / (2 * rng.uniform(0.1, 0.3) ** 2))
    glow = np.clip(glow * rng.uniform(1.1, 1.6), 0, 1)
    colour = np.float32(_pick(rng, ((1.0, 0.45, 0.12), (1.0, 0.25, 0.1), (1.0, 0.7, 0.3))))
    layer = np.clip(cv.img + 0.9 * colour, 0, 1)  # light adds, never darkens
    return [(layer.astype(np.float32), glow.astype(np.float32))]


DAMAGE = {
    "Material loss": _material_loss, "Peel": _peel, "Dust": _dust, "Scratch": _scratch, "Hair": _hair,
    "Dirt": _dirt, "Fold": _fold, "Writing": _writing, "Cracks": _cracks, "Staining": _staining,
    "Stamp": _stamp, "Sticker": _sticker, "Puncture": _puncture, "Burn marks": _burn, "Lightleak": _lightleak,
}  # fmt: skip
