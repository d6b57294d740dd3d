"""Colours: parsing '#RRGGBB' / [r, g, b], packing RGB into one integer for lookups, hex for people."""

from __future__ import annotations

import numpy as np


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true would pass as 1


def _pack(color) -> int:
    r, g, b = (int(x) for x in color)
    return (r << 16) | (g << 8) | b


def _unpack(key: int) -> tuple[int, int, int]:
    key = int(key)
    return (key >> 16) & 255, (key >> 8) & 255, key & 255


def _pack_array(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _hex(color) -> str:
    return "#{:02X}{:02X}{:02X}".format(*(int(x) for x in color))


def parse_color(value, source: str = "label scheme") -> tuple[int, int, int]:
    """'#1CE6FF', '1CE6FF' or [28, 230, 255] -> (28, 230, 255)."""
    if isinstance(value, str):
        s = value.strip().lstrip("#")
        if len(s) == 6:
            try:
                return int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16)
            except ValueError:
                pass
    elif isinstance(value, list | tuple) and len(value) == 3 and all(_is_int(x) for x in value):
        if all(0 <= x <= 255 for x in value):
            return int(value[0]), int(value[1]), int(value[2])
    raise ValueError(f"{source}: colour {value!r} is not '#RRGGBB' or [r, g, b]")
