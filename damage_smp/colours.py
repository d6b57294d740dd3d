"""Colour masks -> class indices: the exact palette lookup, and snapping lossy colours (JPEG) to the palette.

A colour mask's pixels are looked up in the label scheme's palette (every class colour and alias, and the
ignored colours). Exact lookup is the default. With a tolerance N, a colour that is not in the palette but
within N of palette colours that all mean one class (or all mean "ignore") is *snapped* to that meaning;
distance is the largest of the three channel differences (``max(|dR|, |dG|, |dB|) <= N``: each channel
within N, which is how JPEG errs). A colour within N of two meanings (*ambiguous*) or of none (*unknown*)
stays unresolved: those pixels get no label (``IGNORE_INDEX``), and a mask of which more than
``MAX_UNRESOLVED`` is unresolved is refused as an error (a wrong scheme, not compression).

Tolerant decoding runs in strips of rows: the strip's colours are packed into uint32 (R<<16 | G<<8 | B),
made unique, each unique colour resolved once against the small palette, then mapped back; memory stays
bounded by the strip whatever the mask's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE = 255  # labels.IGNORE_INDEX (labels imports this module)
UNRESOLVED = -1
MAX_UNRESOLVED = 0.25  # a mask with more unresolved pixels than this share is refused
STRIP_PIXELS = 1 << 22  # pixels decoded at once
BLOCK = 1 << 15  # unique colours compared with the palette at once
MAX_TOLERANCE = 255


class UnknownMaskValues(ValueError):
    """A mask holds values or colours that the label scheme does not define."""

    def __init__(self, values: list, where: np.ndarray, note: str = ""):
        self.values = values
        self.pixels = int(np.count_nonzero(where)) if where.dtype == bool else int(where.size)
        shown = ", ".join(str(v) for v in values[:8]) + (" …" if len(values) > 8 else "")
        super().__init__(
            f"{len(values)} value(s)/colour(s) not in the label scheme ({shown}) on {self.pixels} px{note}"
        )


@dataclass
class SnapStats:
    """What a tolerant decode did: pixels snapped to a palette colour, and pixels left without a label."""

    pixels: int = 0  # of the mask
    snapped: int = 0
    unknown: int = 0  # within the tolerance of no palette colour
    ambiguous: int = 0  # within the tolerance of colours of two or more meanings
    colours: dict[str, int] = field(default_factory=dict)  # unresolved colour '#RRGGBB' -> pixels

    @property
    def unresolved(self) -> int:
        return self.unknown + self.ambiguous


def pack(color) -> int:
    r, g, b = (int(x) for x in color)
    return (r << 16) | (g << 8) | b


def unpack(key: int) -> tuple[int, int, int]:
    key = int(key)
    return (key >> 16) & 255, (key >> 8) & 255, key & 255


def pack_array(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) uint32 packed colours."""
    out = rgb[..., 0].astype(np.uint32) << 16
    out |= rgb[..., 1].astype(np.uint32) << 8
    out |= rgb[..., 2]
    return out


def hex_colour(color) -> str:
    return "#{:02X}{:02X}{:02X}".format(*(int(x) for x in color))


def exact_colours(rgb: np.ndarray, keys: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint8 meanings; every colour must be in the sorted palette ``keys``."""
    packed = pack_array(rgb)
    pos = np.searchsorted(keys, packed).clip(0, len(keys) - 1)
    found = keys[pos] == packed
    if not found.all():
        unknown = [hex_colour(unpack(k)) for k in np.unique(packed[~found])]
        raise UnknownMaskValues(unknown, ~found)
    return idx[pos].astype(np.uint8)


def snap_colours(rgb: np.ndarray, keys: np.ndarray, idx: np.ndarray, tolerance: int) -> tuple[np.ndarray, SnapStats]:
    """(H, W, 3) uint8 -> ((H, W) uint8 meanings, SnapStats); unresolved pixels are IGNORE.

    Raises UnknownMaskValues when more than MAX_UNRESOLVED of the pixels stay unresolved.
    """
    h, w = rgb.shape[:2]
    out = np.empty((h, w), np.uint8)
    stats = SnapStats(pixels=h * w)
    rows = max(1, STRIP_PIXELS // max(w, 1))
    for y in range(0, h, rows):
        uniq, inverse = np.unique(pack_array(rgb[y : y + rows]), return_inverse=True)
        meaning, kind = resolve(uniq, keys, idx, tolerance)
        out[y : y + rows] = np.where(meaning == UNRESOLVED, IGNORE, meaning).astype(np.uint8)[inverse].reshape(-1, w)
        pixels = np.bincount(inverse.ravel(), minlength=len(uniq))
        stats.snapped += int(pixels[kind == SNAPPED].sum())
        stats.unknown += int(pixels[kind == UNKNOWN].sum())
        stats.ambiguous += int(pixels[kind == AMBIGUOUS].sum())
        for k in np.flatnonzero(kind >= UNKNOWN):
            name = hex_colour(unpack(uniq[k]))
            stats.colours[name] = stats.colours.get(name, 0) + int(pixels[k])
    if stats.unresolved > MAX_UNRESOLVED * h * w:
        ranked = sorted(stats.colours, key=stats.colours.get, reverse=True)
        note = (
            f" ({stats.unresolved / (h * w):.0%} of the mask even with --colour-tolerance {tolerance}: "
            f"{stats.ambiguous} px ambiguous, {stats.unknown} px near no class colour)"
        )
        raise UnknownMaskValues(ranked, out == IGNORE, note)
    return out, stats


EXACT, SNAPPED, UNKNOWN, AMBIGUOUS = 0, 1, 2, 3


def resolve(uniq: np.ndarray, keys: np.ndarray, idx: np.ndarray, tolerance: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique packed colours -> (meaning (U,) int16, UNRESOLVED where none; kind (U,) uint8 EXACT..AMBIGUOUS)."""
    pos = np.searchsorted(keys, uniq).clip(0, len(keys) - 1)
    exact = keys[pos] == uniq
    meaning = np.where(exact, idx[pos], UNRESOLVED).astype(np.int16)
    kind = np.where(exact, EXACT, UNKNOWN).astype(np.uint8)
    todo = np.flatnonzero(~exact)
    palette = _channels(keys)
    meanings = idx.astype(np.int16)
    for start in range(0, len(todo), BLOCK):
        rows = todo[start : start + BLOCK]
        near = np.abs(_channels(uniq[rows])[:, None, :] - palette[None]).max(axis=2) <= tolerance  # (B, P)
        lo = np.where(near, meanings, np.int16(32767)).min(axis=1)
        hi = np.where(near, meanings, np.int16(-32768)).max(axis=1)
        one = near.any(axis=1) & (lo == hi)
        meaning[rows[one]] = lo[one]
        kind[rows[one]] = SNAPPED
        kind[rows[near.any(axis=1) & (lo != hi)]] = AMBIGUOUS
    return meaning, kind


def _channels(packed: np.ndarray) -> np.ndarray:
    """(N,) packed colours -> (N, 3) int16 channels."""
    packed = np.asarray(packed, np.int64)
    return np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1).astype(np.int16)


def closest_pair(keys: np.ndarray, idx: np.ndarray) -> tuple[int, str, str] | None:
    """(distance, colour, colour) of the two nearest palette colours of different meanings (None: one meaning).

    A tolerance of at least half that distance can make colours between them ambiguous.
    """
    ch = _channels(keys)
    d = np.abs(ch[:, None, :] - ch[None]).max(axis=2).astype(np.int32)
    d[idx[:, None] == idx[None]] = 10**6
    if d.min() >= 10**6:
        return None
    i, j = np.unravel_index(int(d.argmin()), d.shape)
    return int(d[i, j]), hex_colour(unpack(keys[i])), hex_colour(unpack(keys[j]))
