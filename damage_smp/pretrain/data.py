"""Images without masks -> (corrupted crop, original crop, valid pixels), on the training dataset's machinery.

``RestorationDataset`` is a ``SegmentationDataset`` whose "mask" is all zeros (a broadcast view, no memory): crops,
padding of small images (the padded pixels become 255 and drop out of the loss), the in-memory LRU cache, the
on-disk decode cache, warm-up before the workers fork and seeded randomness per (seed, epoch, index) all come
from data.py unchanged. Only flips and 90-degree rotations augment; the corruptions are the task.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..data import SegmentationDataset, train_transform
from ..decode_cache import DecodeCache
from ..images import IMAGE_SUFFIXES, check_pixels, read_image
from ..labels import resolve_scheme
from .corrupt import corrupt

PRETRAIN_SUFFIXES = (*IMAGE_SUFFIXES, ".gif")


def collect_images(inputs: list[str] | tuple[str, ...], exclude=None) -> list[str]:
    """INPUTS (folders, globs, manifest CSVs, files) -> sorted absolute image paths; one line when none is an image."""
    from ..predict.inputs import collect_inputs

    found = [str(p) for p, _ in collect_inputs(list(inputs), exclude=exclude)]
    images = [p for p in found if p.lower().endswith(PRETRAIN_SUFFIXES)]
    if not images:
        raise ValueError(
            f"no image among INPUTS ({', '.join(map(str, inputs))}); give folders, glob patterns or manifest CSVs "
            f"of scans ({' '.join(PRETRAIN_SUFFIXES)})"
        )
    return images


class RestorationDataset(SegmentationDataset):
    """Items: {"image": corrupted uint8 (3, H, W), "target": original uint8 (3, H, W), "mask": (H, W) int64 with
    0 = a real pixel and 255 = padding, "index": row}."""

    def __init__(self, images: list[str], *, crop_size: int, samples_per_epoch: int, seed: int, max_pixels: int,
                 cache_mb: int, decode_cache: DecodeCache | None):  # fmt: skip
        rows = pd.DataFrame({"image_path": images, "mask_path": images})
        super().__init__(rows, resolve_scheme("binary", False), crop_size=crop_size,
                         samples_per_epoch=samples_per_epoch, transform=train_transform(0), max_pixels=max_pixels,
                         cache_mb=cache_mb, seed=seed, decode_cache=decode_cache)  # fmt: skip

    def decode(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        path = self.images[row]

        def read() -> np.ndarray:
            return read_image(path, self.max_pixels)

        image = read() if self.decode_cache is None else self.decode_cache.get(path, "image", read)
        if image.shape[0] * image.shape[1] > self.max_pixels:  # cached under a higher --max-pixels
            check_pixels(path, self.max_pixels)
        return image, np.broadcast_to(np.zeros((), np.uint8), image.shape[:2])  # no mask: zeros, no memory

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        original = item["image"].numpy().transpose(1, 2, 0)  # (H, W, 3) uint8 view
        rng = np.random.default_rng([self.seed, self.epoch, int(index), 3])
        broken = corrupt(original, rng)
        return {**item, "target": item["image"], "image": torch.from_numpy(broken.transpose(2, 0, 1).copy())}


def probe_batch(images: list[str], cfg, decode_cache: DecodeCache | None) -> dict:
    """``cfg.probe_crops`` corrupted crops, the same in every epoch (and after --resume): one fixed batch."""
    probe = RestorationDataset(images, crop_size=cfg.crop_size, samples_per_epoch=cfg.probe_crops, seed=cfg.seed + 1,
                               max_pixels=cfg.max_pixels, cache_mb=cfg.cache_mb, decode_cache=decode_cache)  # fmt: skip
    items = [probe[i] for i in range(len(probe))]
    return {key: torch.stack([item[key] for item in items]) for key in ("image", "target", "mask")}
