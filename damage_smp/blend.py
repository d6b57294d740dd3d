"""Gaussian-weighted blending of overlapping tiles in a ring-buffer band of image rows (``tiling``, 3. and 4.).

``gaussian_weights`` is the window; ``BlendBand`` the (C, tile, W) accumulator and (tile, W) weight band;
``accumulator_scale`` keeps float16 accumulators out of the subnormal range.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .tiling import TilePlan

FLUSH_COLUMNS = 2048  # completed rows are normalised this many columns at a time (bounds the temporary)


@functools.lru_cache(maxsize=8)
def gaussian_weights(tile: int | tuple[int, int], sigma_scale: float = 1 / 8, floor: float = 1e-3) -> torch.Tensor:
    """(th, tw) float32 Gaussian window, 1 at the centre, > 0 everywhere so borders still count.

    Cached (every image of a batch asks for the same window): the tensor is shared, never modify it in place.

    sigma = ``sigma_scale`` x the tile side (nnU-Net's choice), per axis for non-square tiles. Each axis
    profile is clamped to >= ``floor`` before the outer product (so the window is >= floor**2): clamping
    the 2-D product instead would flatten it along the whole rim, and where four tiles meet the three
    rims would outweigh the one tile that sees the corner pixel in its interior.
    """
    th, tw = (tile, tile) if isinstance(tile, int) else tile

    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        g = torch.exp(-0.5 * (x / max(n * sigma_scale, 1e-6)) ** 2)
        return (g / g.max()).clamp_min(floor)

    with torch.inference_mode(False):  # a normal tensor, even when first asked for under inference_mode
        return torch.outer(axis(th), axis(tw)).to(torch.float32)  # (th, tw)


class BlendBand:
    """The (C, th, padded W) accumulator and (th, padded W) weight band: a ring buffer over image rows.

    ``add`` puts one tile's weighted probabilities in; ``flush`` hands finished rows on and zeroes their band
    rows for reuse (module docstring, 4.). ``h``/``w``: the original image size, to which flushed rows are cropped.
    """

    def __init__(self, plan: TilePlan, num_classes: int, accum_dtype: torch.dtype, device: torch.device,
                 like: torch.Tensor | None = None):  # fmt: skip
        (_, pw), (self.th, self.tw) = plan.padded, plan.tile
        self.h, self.w = plan.size
        self.accum_dtype = accum_dtype
        self.window = gaussian_weights((self.th, self.tw)).to(device)  # (th, tw)
        self.scale = accumulator_scale(plan, accum_dtype)
        # the accumulator in the memory format of the tiles' probabilities (``like``): a channels_last batch
        # adds into a (th, pw, C) buffer, seen as (C, th, pw), without a transposing copy
        hwc = like is not None and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last)
        shape = (self.th, pw, num_classes) if hwc else (num_classes, self.th, pw)
        self.acc = torch.zeros(shape, dtype=accum_dtype, device=device)
        self.acc = self.acc.permute(2, 0, 1) if hwc else self.acc  # (C, th, pw) either way
        cols = min(FLUSH_COLUMNS, self.w)  # flushed blocks are normalised into this, in the same layout
        shape = (self.th, cols, num_classes) if hwc else (num_classes, self.th, cols)
        self.out = torch.empty(shape, dtype=torch.float32, device=device)
        self.out = self.out.permute(2, 0, 1) if hwc else self.out
        self.wsum = torch.zeros((self.th, pw), dtype=torch.float32, device=device)

    def ring(self, y0: int, y1: int) -> list[tuple[slice, int]]:
        """Image rows [y0, y1) (at most th of them) -> [(band slice, offset into the rows)], <= 2 pieces."""
        s, n = y0 % self.th, y1 - y0
        first = min(n, self.th - s)
        pieces = [(slice(s, s + first), 0)]
        if n > first:
            pieces.append((slice(0, n - first), first))
        return pieces

    def add(self, probs: torch.Tensor, y: int, x0: int) -> None:
        """Add one tile's (C, th, tw) probabilities, weighted by the window, placed at (y, x0), and its window."""
        for band, off in self.ring(y, y + self.th):
            n = band.stop - band.start
            window = self.window[off : off + n]  # (n, tw)
            # acc += probs * window * scale in one pass (float16 accumulators round the product once)
            self.acc[:, band, x0 : x0 + self.tw].addcmul_(probs[:, off : off + n], window, value=self.scale)
            self.wsum[band, x0 : x0 + self.tw] += window

    def flush(self, y0: int, y1: int) -> Iterator[tuple[int, int, int, int, torch.Tensor]]:
        """Normalise image rows [y0, y1) (cropped to the image), yield them, and zero their band rows.

        Each yielded block is a view of one reused buffer: it is valid until the generator resumes (copy it
        to keep it).
        """
        for band, off in self.ring(y0, y1):
            r0 = y0 + off
            keep = min(r0 + (band.stop - band.start), self.h) - r0  # rows below the image are padding: dropped
            for x0 in range(0, self.w, FLUSH_COLUMNS) if keep > 0 else ():
                x1 = min(x0 + FLUSH_COLUMNS, self.w)
                yield r0, r0 + keep, x0, x1, self._normalised(slice(band.start, band.start + keep), x0, x1)
            self.acc[:, band].zero_()
            self.wsum[band].zero_()

    def _normalised(self, rows: slice, x0: int, x1: int) -> torch.Tensor:
        """(C, rows, x1 - x0) float32 probabilities = accumulated sum / accumulated weight."""
        # computed here, not in flush: a generator must never yield inside inference_mode (it would leak)
        with torch.inference_mode():
            weight = self.wsum[rows, x0:x1] * self.scale if self.scale != 1 else self.wsum[rows, x0:x1]
            out = self.out[:, : rows.stop - rows.start, : x1 - x0]
            return torch.div(self.acc[:, rows, x0:x1], weight, out=out)  # float32 whatever the accumulator


def accumulator_scale(plan: TilePlan, accum_dtype: torch.dtype) -> float:
    """A power of two that lifts low-precision accumulators out of float16's subnormal range.

    Near the image rim a pixel's weight can be ~1e-6 (both axis profiles at their floor); float16 stores
    that with a few bits only. Scaling by 2**k, as large as the most-covered pixel allows without passing
    float16's maximum (65504), keeps every weight normal. float32 needs (and gets) no scaling: exact path.
    """
    if accum_dtype in (torch.float32, torch.float64):
        return 1.0
    if accum_dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"accumulator dtype must be float32, float16 or bfloat16, not {accum_dtype}")
    (ph, pw), (th, tw) = plan.padded, plan.tile
    cover_y, cover_x = np.zeros(ph, np.int64), np.zeros(pw, np.int64)
    for y in {y for y, _ in plan.coords}:
        cover_y[y : y + th] += 1
    for x in {x for _, x in plan.coords}:
        cover_x[x : x + tw] += 1
    cover = int(cover_y.max() * cover_x.max())  # most tiles over one pixel: bounds every accumulated sum
    return float(2 ** math.floor(math.log2(32768 / cover)))
