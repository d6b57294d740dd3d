"""``--save layers``: one multi-page TIFF per scan that image editors open as layers (GIMP: File > Open as Layers).

Page 1 is the scan (RGB), named "scan"; then one page per damage class present, named after the class
(TIFF PageName), RGBA: the class's display colour where the class is, fully transparent elsewhere. Pages are
deflate-compressed; the class pages are written tile by tile (256 x 256) from the index map, so a 100 MP scan
never needs a full-size RGBA array. The file carries predict's mark in its Software tag (near its start, where
``owned.carries_mark`` looks) and is written to a temp file and renamed, like every output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from ..images import atomic_open
from ..labels import LabelScheme
from .owned import MARK

TILE = 256
PAGE_NAME = 285  # the TIFF PageName tag


def write_layers(path: Path, image: np.ndarray, index: np.ndarray, scheme: LabelScheme, classes: list[int]) -> None:
    """The scan, then one named RGBA page per class in ``classes`` (the damage classes present)."""
    colours = scheme.display_colors
    with tiff_writer(path, bigtiff=image.size > 2**31) as tif:
        tif.write(image, photometric="rgb", compression="zlib", software=MARK.decode(), metadata=None,
                  extratags=[(PAGE_NAME, "s", 0, "scan", True)])  # fmt: skip
        for c in classes:
            tif.write(_rgba_tiles(index, c, colours[c]), shape=(*index.shape, 4), dtype=np.uint8, photometric="rgb",
                      extrasamples=["unassalpha"], tile=(TILE, TILE), compression="zlib", metadata=None,
                      extratags=[(PAGE_NAME, "s", 0, scheme.names[c], True)])  # fmt: skip


@contextlib.contextmanager
def tiff_writer(path: Path, bigtiff: bool) -> Iterator[tifffile.TiffWriter]:
    """A TiffWriter on a temp file that replaces ``path`` when the block ends without an error (atomic_open)."""
    with atomic_open(path) as f, tifffile.TiffWriter(_Named(f, path), bigtiff=bigtiff) as tif:
        yield tif


class _Named:
    """The temp file's stream under the final file's name (tifffile wants a path-like ``name``; fdopen's is an int)."""

    def __init__(self, stream, path: Path):
        self._stream, self.name = stream, str(path)

    def __getattr__(self, attr: str):
        return getattr(self._stream, attr)


def _rgba_tiles(index: np.ndarray, cls: int, colour: np.ndarray) -> Iterator[np.ndarray]:
    """(th, tw, 4) uint8 tiles, row-major: ``colour`` and alpha 255 where ``index == cls``, else all 0."""
    h, w = index.shape
    for y in range(0, h, TILE):
        for x in range(0, w, TILE):
            where = index[y : y + TILE, x : x + TILE] == cls
            tile = np.zeros((*where.shape, 4), np.uint8)
            tile[where] = (*colour, 255)
            yield tile


def read_layers(path: Path) -> list[tuple[str, np.ndarray]]:
    """[(page name, pixels)] of a layers file (for tests and for anyone checking one)."""
    with tifffile.TiffFile(path) as tif:
        return [(p.tags[PAGE_NAME].value if PAGE_NAME in p.tags else "", p.asarray()) for p in tif.pages]
