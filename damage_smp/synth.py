"""Synthetic damaged-media sample: real pictures aged into paper, photo, film, canvas and parchment, with damage
drawn over them and an exact colour mask in the ``artefact`` scheme (the offline sample, ``damage-smp synth``).

Content is what scikit-image ships inside its wheel (CC0 / public-domain photographs, scans and textures), so an
ImageNet encoder has real structure to transfer. Each image also carries content that *looks* like damage but is
not labelled: pen lines and hatching in line art (hair, scratches), stippling and film grain (dust), shadows and
parchment mottling (stains), a document's own handwriting (defacing writing), film sprocket holes (punctures).

Every damage is drawn as (layer, alpha) pairs: ``image += alpha * (layer - image)`` and the mask takes the class
where ``alpha >= 0.5``, so the mask is exactly the visible damage; later layers overwrite earlier ones in both.
Randomness comes from ``numpy.random.default_rng([seed, i, ...])`` alone: image i is the same whatever n is, and
the same seed gives the same bytes.
"""

from __future__ import annotations

import csv
import functools
import io
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .images import atomic_write_bytes, read_image, read_mask, write_image
from .labels import load_scheme

MATERIALS = ("paper", "photo", "film", "canvas", "parchment")
CONTENTS = ("photographic", "line art", "text", "artistic", "pattern")
# One block of 15 recipes; each seed shuffles every block, so materials and contents stay balanced at any n.
RECIPES = (
    *[("photo", "photographic")] * 3, *[("film", "photographic")] * 2, ("photo", "pattern"),
    *[("paper", "text")] * 2, *[("paper", "line art")] * 2, ("paper", "pattern"),
    ("parchment", "text"), ("parchment", "line art"), *[("canvas", "artistic")] * 2,
)  # fmt: skip
HELD_OUT = 0.30  # val + test share, split evenly between them
MANIFEST_FIELDS = ["image", "mask", "split", "material", "content"]
JPEG_PARAMS = [  # spelled out so the bytes do not depend on OpenCV's defaults
    cv2.IMWRITE_JPEG_QUALITY, 92, cv2.IMWRITE_JPEG_PROGRESSIVE, 0, cv2.IMWRITE_JPEG_OPTIMIZE, 0,
    cv2.IMWRITE_JPEG_RST_INTERVAL, 0, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
]  # fmt: skip
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 6]
_PLAN, _SPLIT, _IMAGE = 1, 2, 3  # independent random streams per (seed, ...)

_SCHEME = load_scheme("artefact")
CLASS = {name: i for i, name in enumerate(_SCHEME.names)}
BACKGROUND = CLASS["Background"]
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
BACKGROUND_SHARE = 0.3  # images placed on a scanner bed

WORDS = (
    "anno domini et in nomine terra aqua liber codex folio capitulum de rebus gestis regis civitas ecclesia "
    "the of and to in register inventory letter received year month county parish estate account sold "
    "der die und von zu im jahre stadt amt buch seite brief archiv nummer"
).split()
SCRIBBLES = (
    "Inv. Nr. 4471", "1953", "Tante Emma 1931", "Nr 27", "ok", "J. B.", "Paris 1922", "copy", "Anna",
    "17/4", "verso", "no!", "Karl + Grete", "Box 12", "42", "Sommer 1958", "return", "x",
)  # fmt: skip
STAMP_WORDS = ("ARCHIV", "MUSEUM", "BIBLIOTHECA", "INV.", "PROPERTY", "COPY", "CITY LIBRARY", "RECEIVED")


# ============================================================================================ plan and files
def sample_plan(n: int = 48, seed: int = 0) -> list[dict[str, str]]:
    """The manifest rows (image, mask, split, material, content) of a sample; no pixels are rendered.

    Image i's material and content depend on (seed, i) only. About 70/15/15 train/val/test, stratified: rows
    are ordered by material and content, and every ~3rd position is held out, so val and test each get a
    share of every material.
    """
    _check_args(n, seed)
    width = max(3, len(str(n - 1)))
    rows = []
    for i in range(n):
        block, pos = divmod(i, len(RECIPES))
        order = np.random.default_rng([seed, block, _PLAN]).permutation(len(RECIPES))
        material, content = RECIPES[order[pos]]
        stem = f"synth_{i:0{width}d}"
        rows.append(
            {"image": f"images/{stem}.jpg", "mask": f"masks/{stem}.png", "split": "train",
             "material": material, "content": content}
        )  # fmt: skip
    key = np.random.default_rng([seed, _SPLIT]).random(n)
    order = sorted(range(n), key=lambda j: (MATERIALS.index(rows[j]["material"]), rows[j]["content"], key[j]))
    k = round(HELD_OUT * n) if n < 3 else max(2, round(HELD_OUT * n))
    for j in range(k):
        rows[order[int((j + 0.5) * n / k)]]["split"] = "val" if j % 2 == 0 else "test"
    return rows


def synth(
    out_dir: str | Path,
    n: int = 48,
    size: tuple[int, int] = (512, 384),
    seed: int = 0,
    overwrite: bool = False,
    root_manifest: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Write ``n`` synthetic images (JPEG), colour masks (PNG) and ``manifest.csv`` into ``out_dir``.

    ``size`` is (width, height). ``root_manifest``, if given, also receives the manifest with paths relative to
    its own folder (the repository's ``data_manifest.csv``); an existing one that differs needs ``overwrite``.
    Returns the path of ``out_dir/manifest.csv``.
    """
    out_dir = Path(out_dir)
    width, height = _check_size(size)
    rows = sample_plan(n, seed)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: is a file; give a folder for the sample")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"{out_dir}: folder is not empty; give a new folder or pass --overwrite to write into it")
    root_text = None
    if root_manifest is not None:
        root_manifest = Path(root_manifest)
        prefix = Path(os.path.relpath(out_dir.resolve(), root_manifest.resolve().parent)).as_posix()
        root_text = manifest_text(rows, prefix)
        if root_manifest.is_file() and root_manifest.read_text(encoding="utf-8") != root_text and not overwrite:
            raise ValueError(f"{root_manifest}: exists with other content; pass --overwrite to replace it")

    from rich.progress import track

    for i in track(range(n), description="synth", disable=not progress, transient=True):
        image, index = render_sample(i, seed, rows[i]["material"], rows[i]["content"], (width, height))
        atomic_write_bytes(out_dir / rows[i]["image"], _encode(".jpg", image[..., ::-1], JPEG_PARAMS))
        atomic_write_bytes(out_dir / rows[i]["mask"], _encode(".png", _SCHEME.colorize(index)[..., ::-1], PNG_PARAMS))
    if overwrite:  # a previous, larger sample's files would otherwise linger beside the manifest
        keep = {out_dir / r[c] for r in rows for c in ("image", "mask")}
        for stale in [*out_dir.glob("images/synth_*.jpg"), *out_dir.glob("masks/synth_*.png")]:
            if stale not in keep:
                stale.unlink()
    manifest = out_dir / "manifest.csv"
    atomic_write_bytes(manifest, manifest_text(rows).encode("utf-8"))
    if root_text is not None and (not root_manifest.is_file() or root_manifest.read_text("utf-8") != root_text):
        atomic_write_bytes(root_manifest, root_text.encode("utf-8"))
    return manifest


def manifest_text(rows: list[dict[str, str]], prefix: str = "") -> str:
    """CSV text of plan rows; ``prefix`` (e.g. 'sample') is put before the image and mask paths."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        fix = {c: f"{prefix}/{row[c]}" if prefix not in ("", ".") else row[c] for c in ("image", "mask")}
        writer.writerow(row | fix)
    return buf.getvalue()


def parse_size(text: str) -> tuple[int, int]:
    """'512x384' -> (512, 384); a bad value raises ValueError naming --size."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--size {text!r}: expected WIDTHxHEIGHT such as 512x384")
    return _check_size((int(parts[0]), int(parts[1])))


def _check_size(size) -> tuple[int, int]:
    w, h = (int(v) for v in size)
    if min(w, h) < 32 or max(w, h) > 8192:
        raise ValueError(f"--size {w}x{h}: width and height must be within 32..8192 pixels, e.g. 512x384")
    return w, h


def _check_args(n: int, seed: int) -> None:
    if n < 1:
        raise ValueError(f"--n {n}: the sample needs at least 1 image")
    if seed < 0:
        raise ValueError(f"--seed {seed}: use a seed of 0 or more")


def _encode(suffix: str, bgr: np.ndarray, params: list[int]) -> bytes:
    ok, buf = cv2.imencode(suffix, np.ascontiguousarray(bgr), params)
    if not ok:
        raise OSError(f"could not encode an image as {suffix}")
    return buf.tobytes()


def contact_sheet(
    sample_dir: str | Path,
    out: str | Path,
    stems: list[str] | None = None,
    rows: int = 4,
    cols: int = 2,
    tile: int = 256,
) -> Path:
    """A grid of captioned image | colour-mask pairs (for the docs): the given image stems, or one per material
    first, then one per new (material, content), then the rest in order."""
    sample_dir, out = Path(sample_dir), Path(out)
    with open(sample_dir / "manifest.csv", encoding="utf-8") as f:
        plan = list(csv.DictReader(f))
    if stems is not None:
        by_stem = {Path(r["image"]).stem: r for r in plan}
        unknown = [s for s in stems if s not in by_stem]
        if unknown:
            raise ValueError(f"{sample_dir / 'manifest.csv'}: no image(s) {unknown}; give stems such as synth_000")
        plan = [by_stem[s] for s in stems]
    picked = []
    for key in (lambda r: r["material"], lambda r: (r["material"], r["content"]), lambda r: r["image"]):
        seen = {key(r) for r in picked}  # one per material first, then new combinations, then in order
        for row in plan:
            if len(picked) < rows * cols and row not in picked and key(row) not in seen:
                picked.append(row)
                seen.add(key(row))
    cells = []
    for row in picked:
        image, mask = read_image(sample_dir / row["image"]), read_mask(sample_dir / row["mask"])
        th = round(tile * image.shape[0] / image.shape[1])
        pair = [cv2.resize(a, (tile, th), interpolation=cv2.INTER_AREA if a is image else cv2.INTER_NEAREST)
                for a in (image, mask)]  # fmt: skip
        cell = np.full((th + 22, 2 * tile + 6, 3), 255, np.uint8)
        cell[:th, :tile], cell[:th, tile + 6 :] = pair
        names = [_SCHEME.names[c] for c in np.unique(_SCHEME.decode(mask)) if c not in (0, BACKGROUND)]
        caption = f"{row['material']} / {row['content']}: {', '.join(names)}"
        cv2.putText(cell, caption, (2, th + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
        cells.append(cell)
    while len(cells) < rows * cols:
        cells.append(np.full_like(cells[0], 255))
    grid = np.vstack([np.hstack([np.pad(c, ((0, 6), (0, 6), (0, 0)), constant_values=255) for c in cells[r : r + cols]])
                      for r in range(0, rows * cols, cols)])  # fmt: skip
    write_image(out, grid, quality=90)
    return out


# ============================================================================================ rendering
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
        return min(self.h, self.w) / 384

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


def render_sample(
    i: int, seed: int, material: str, content: str, size: tuple[int, int] = (512, 384)
) -> tuple[np.ndarray, np.ndarray]:
    """Image i of a sample: (H, W, 3) uint8 RGB and its (H, W) uint8 artefact class-index map."""
    if material not in MATERIALS or content not in CONTENTS:
        raise ValueError(f"unknown material/content {material!r}/{content!r}; use {MATERIALS} / {CONTENTS}")
    rng = np.random.default_rng([seed, i, _IMAGE])
    w, h = _check_size(size)
    picture = CONTENT[content](rng, h, w, material)  # (H, W, 3) float32 0..1, white = nothing printed
    obj_img = AGEING[material](rng, picture)
    cv = _place_on_bed(rng, obj_img, material)
    index = np.where(cv.obj >= 0.5, CLASS["Clean"], BACKGROUND).astype(np.uint8)
    odds = DAMAGE_ODDS[material]
    names = list(odds)
    p = np.array([odds[k] for k in names]) / sum(odds.values())
    chosen = set(rng.choice(names, size=int(rng.integers(2, 7)), replace=False, p=p))
    for name in (d for d in DAMAGE_ORDER if d in chosen):
        for layer, alpha in DAMAGE[name](cv):
            _blend(cv, index, layer, alpha, CLASS[name])
    scan = cv.img + rng.standard_normal(cv.img.shape, dtype=np.float32) * 0.006  # scanner noise
    return np.clip(scan * 255 + 0.5, 0, 255).astype(np.uint8), index


def _blend(cv: _Canvas, index: np.ndarray, layer: np.ndarray, alpha: np.ndarray, cls: int) -> None:
    """image += alpha * (layer - image) and index = cls where alpha >= 0.5, inside alpha's bounding box."""
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    if len(rows) == 0:
        return
    box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    a = alpha[box] * cv.obj[box]  # damage lives on the object, never on the scanner bed
    cv.img[box] += a[..., None] * (layer[box] - cv.img[box])
    index[box][a >= 0.5] = cls


# ------------------------------------------------------------------------------------------ helpers
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


@functools.lru_cache(maxsize=4)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float32 row and column coordinates; cached and read-only."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


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
    u, v = (dx * np.cos(t) + dy * np.sin(t)) / radius, (-dx * np.sin(t) + dy * np.cos(t)) / (radius * aspect)
    noise = _fbm(cv.rng, y1 - y0, x1 - x0, max(radius / 2, 4))
    out[y0:y1, x0:x1] = np.sqrt(u * u + v * v) + rough * noise < 1
    return out


def _soft(region: np.ndarray, ramp: float = 1.5) -> np.ndarray:
    """Anti-aliased alpha of a bool region, ``ramp`` px soft; alpha >= 0.5 exactly on the region."""
    # the signed distance is >= 1 inside and <= -1 outside, so 0.5 + sd / (2 ramp) splits them at 0.5
    return np.clip(0.5 + _signed_dist(region) / (2 * ramp), 0, 1).astype(np.float32)


def _signed_dist(region: np.ndarray) -> np.ndarray:
    r = region.astype(np.uint8)
    return cv2.distanceTransform(r, cv2.DIST_L2, 3) - cv2.distanceTransform(1 - r, cv2.DIST_L2, 3)


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


def _put_text(canvas, text, org, font, scale, thickness, value=255) -> None:
    cv2.putText(canvas, text, (int(org[0]), int(org[1])), font, scale, float(value), thickness, cv2.LINE_AA)


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


# ------------------------------------------------------------------------------------------ content
def _photographic(rng, h, w, material) -> np.ndarray:
    names = ("camera", "astronaut", "chelsea", "coffee", "rocket", "coins", "moon", "hubble_deep_field")
    return _crop(rng, _pick(rng, names), h, w)


def _line_art(rng, h, w, material) -> np.ndarray:
    """A pen drawing of a photograph: contour lines, hatching, stippling, a ruled frame and flourishes."""
    name = _pick(rng, ("camera", "chelsea", "astronaut", "coffee", "rocket", "horse", "coins"))
    g = cv2.GaussianBlur(_gray(_crop(rng, name, h, w, zoom=(0.7, 1.0))), (0, 0), 0.8)
    s = min(h, w) / 384
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
    s = min(h, w) / 384
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
    s = min(h, w) / 384
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
    s = min(h, w) / 384
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


# ------------------------------------------------------------------------------------------ ageing
def _shadow(rng, h, w) -> np.ndarray:
    """(H, W) multiplicative neutral shadow: a gutter/curl gradient or a soft cast shadow (stain look-alikes)."""
    if rng.random() < 0.55:
        return np.ones((h, w), np.float32)
    yy, xx = _grid(h, w)
    if rng.random() < 0.5:
        side = int(rng.integers(4))
        d = (xx, w - 1 - xx, yy, h - 1 - yy)[side] / rng.uniform(0.08, 0.2) / (w if side < 2 else h)
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
    s = min(h, w) / 384
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


# ------------------------------------------------------------------------------------------ damage
# Each returns [(layer (H, W, 3), alpha (H, W)), ...]; render_sample blends them and labels alpha >= 0.5.
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
    rim = cv2.dilate(region.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=int(rng.integers(1, 3))) > 0
    fibres = np.clip(cv.img * 1.1 + 0.08, 0, 1)  # torn fibres are lighter than the surface
    parts.append((fibres, _soft(rim)))
    parts.append((cv.substrate, _soft(region)))
    return parts


def _peel(cv: _Canvas):
    rng = cv.rng
    r = rng.uniform(0.05, 0.13) * min(cv.h, cv.w)
    region = _blob(cv, cv.inner_point(0.05), r, rng.uniform(0.4, 1), rough=0.45)
    seeds = np.ones((cv.h, cv.w), np.uint8)
    k = int(np.clip(region.sum() / (rng.uniform(60, 250) * cv.s**2), 4, 400))
    ys, xs = np.nonzero(region)
    pick = rng.integers(len(ys), size=k)
    seeds[ys[pick], xs[pick]] = 0
    _, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
    lost = region & (rng.random(labels.max() + 1) < 0.65)[labels]  # flakes fallen off; the rest still hold
    lost &= ~(cv2.morphologyEx(labels.astype(np.float32), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0)
    ground = {"canvas": (0.86, 0.8, 0.68), "film": (0.9, 0.9, 0.86)}.get(cv.material, (0.93, 0.91, 0.86))
    ground = np.float32(ground) * (1 + 0.04 * _noise(rng, cv.h, cv.w, 3))[..., None]
    edge = cv2.dilate(lost.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
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
            u = ((xx - c[0]) * np.cos(t) + (yy - c[1]) * np.sin(t)) / (0.65 * r)
            v = (-(xx - c[0]) * np.sin(t) + (yy - c[1]) * np.cos(t)) / r
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


def _cracks(cv: _Canvas):
    rng = cv.rng
    canvas = np.zeros((cv.h, cv.w), np.uint8)
    if cv.material in ("canvas", "photo") and rng.random() < 0.8:  # craquelure: a network of cells
        cell = rng.uniform(10, 24) * cv.s
        seeds = np.ones((cv.h, cv.w), np.uint8)
        gy, gx = np.mgrid[0 : cv.h : cell, 0 : cv.w : cell]
        sy = np.clip(gy + rng.uniform(0, cell, gy.shape), 0, cv.h - 1).astype(int)
        sx = np.clip(gx + rng.uniform(0, cell, gx.shape), 0, cv.w - 1).astype(int)
        seeds[sy, sx] = 0
        _, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
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


def _disc(cv: _Canvas, x, y, r) -> np.ndarray:
    canvas = np.zeros((cv.h, cv.w), np.uint8)
    cv2.circle(canvas, (int(x * 16), int(y * 16)), max(8, int(r * 16)), 255, -1, cv2.LINE_AA, 4)
    return canvas >= 128


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
        tw, tht = cv2.getTextSize(num, font, scale, th)[0]
        _put_text(canvas, num, (x - tw / 2, y + tht / 2), font, scale, th)
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
        cv2.polylines(ink, [np.round(inner * 16).astype(np.int32)], True, 255, 1, cv2.LINE_AA, 4)
    font = _pick(rng, (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_COMPLEX))
    text = _pick(rng, SCRIBBLES)
    scale = 0.9 * bh / 2.2 / cv2.getTextSize("Hg", font, 1, 1)[0][1]
    tw = cv2.getTextSize(text, font, scale, 1)[0][0]
    scale *= min(1.0, 0.8 * bw / max(tw, 1))
    tw, tht = cv2.getTextSize(text, font, scale, 1)[0]
    txt = np.zeros_like(ink)
    _put_text(txt, text, (x - tw / 2, y + tht / 2), font, scale, 1)
    ink = np.maximum(ink, _warp(txt, (x, y), -angle))
    colour = np.float32(_pick(rng, ((0.7, 0.15, 0.15), (0.15, 0.2, 0.5), (0.1, 0.1, 0.1))))
    layer = layer + (ink / 255.0)[..., None] * (colour - layer)
    shadow = cv2.GaussianBlur(np.roll(shape / 255.0, (2, 2), (0, 1)), (0, 0), 2) * 0.35 * (shape < 128)
    return [(cv.img * 0.5, shadow.astype(np.float32)), (np.clip(layer, 0, 1).astype(np.float32), _soft(region, 1))]


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
    rim = (cv2.dilate(region.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0) & ~region
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
    dist = (xx, cv.w - 1 - xx, yy, cv.h - 1 - yy)[side]
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
