"""Datasets and loaders: manifest rows -> (image, class-index mask) tensors, crops and augmentations.

Each file is decoded once and kept in a bounded in-memory LRU cache; with a ``DecodeCache`` (training uses
one), images of a megapixel or more are decoded once into memory-mapped files on disk instead, shared by every
worker process and every later run, and a crop reads only its own rows. ``make_loader`` decodes every
training image once, in threads, before the loader's workers start (they inherit the arrays or maps), so the
first epoch does not wait on decoding and no worker decodes an image another one already has. Training crops
are numpy slices of the cached arrays, taken *before* the albumentations pipeline so workers only transform
crop-sized arrays. The dataset never normalises: images leave it as uint8 (3, H, W) and the model does it.

Randomness is a function of (seed, epoch, sample index), never of worker count or order, so a run is
reproducible and a resumed run continues the same stream. The epoch lives in a shared-memory tensor, because
persistent loader workers hold their own copy of the dataset and would otherwise never see ``set_epoch``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections import OrderedDict

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .crops import damage_crop, random_crop
from .decode_cache import DecodeCache
from .images import DEFAULT_MAX_PIXELS, check_pixels, image_size, read_image, read_mask
from .labels import IGNORE_INDEX, LabelScheme, UnknownMaskValues
from .manifest import count_classes, run_with_progress

MAX_CACHED_ROWS = 512  # rows held per process; bounds open memory maps (file descriptors) too


class SegmentationDataset(Dataset):
    """Manifest rows (``image_path``, ``mask_path``) read through a label scheme.

    Training mode (``crop_size`` set): ``len == samples_per_epoch``; item i picks an image from a per-epoch
    permutation and a random ``crop_size`` square at native resolution (smaller images are padded: image 0,
    mask IGNORE_INDEX), then ``transform``. Eval mode (``crop_size=None``): one item per row, the whole image,
    optionally padded bottom/right to a multiple of ``pad_to``.

    Items: ``{"image": uint8 (3, H, W), "mask": int64 (H, W) with 255 = ignore, "index": position in rows}``.

    Decoded rows live in an LRU cache of ``cache_mb`` per process; with ``decode_cache``, big images live in
    that on-disk cache as memory maps instead (which cost this budget nothing).

    ``mask_schemes`` (one per row) reads some rows' masks with another scheme than ``scheme`` (pseudo masks,
    ``selftrain.index_scheme``); with ``weights`` (one per row) items also carry ``"weight"``: float32, the loss
    weight of that row's crops.
    """

    def __init__(
        self,
        rows: pd.DataFrame,
        scheme: LabelScheme,
        *,
        crop_size: int | None,
        samples_per_epoch: int | None = None,
        transform: A.BasicTransform | A.Compose | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cache_mb: int = 2048,
        seed: int = 0,
        pad_to: int | None = None,
        decode_cache: DecodeCache | None = None,
        mask_schemes: list[LabelScheme] | None = None,
        weights: list[float] | None = None,
        damage_crops: float = 0.0,
    ):
        missing = [c for c in ("image_path", "mask_path") if c not in rows.columns]
        if missing:
            raise ValueError(f"dataset rows lack {missing}; read the manifest with manifest.load_manifest")
        if len(rows) == 0:
            raise ValueError(f"{rows.attrs.get('manifest', 'manifest')}: no rows to read; check the split")
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"--crop-size must be positive, got {crop_size}")
        self.images = [str(p) for p in rows["image_path"]]  # plain lists pickle fast into workers
        self.masks = [str(p) for p in rows["mask_path"]]
        self.scheme = scheme
        self.crop_size = crop_size
        self.samples_per_epoch = samples_per_epoch or len(self.images)
        self.transform = transform
        self.max_pixels = max_pixels
        self.cache_bytes = int(cache_mb) << 20
        self.seed = seed
        self.pad_to = pad_to
        self.decode_cache = decode_cache
        for name, given in (("mask_schemes", mask_schemes), ("weights", weights)):
            if given is not None and len(given) != len(self.images):
                raise ValueError(f"dataset: {len(given)} {name} for {len(self.images)} rows")
        self.mask_schemes = mask_schemes
        self.weights = None if weights is None else [float(w) for w in weights]
        self.damage_crops = float(damage_crops)  # share of training crops placed on damage (``damage_crop``)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # seen by every worker
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cached = 0  # bytes of in-memory arrays in _cache (memory maps count 0)
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def __getstate__(self) -> dict:
        """Pickled copies (spawned workers) start with an empty cache instead of copying gigabytes."""
        state = dict(self.__dict__)
        state["_cache"], state["_cached"] = OrderedDict(), 0
        return state

    # ------------------------------------------------------------------------------------ sizes
    @property
    def training(self) -> bool:
        return self.crop_size is not None

    def __len__(self) -> int:
        return self.samples_per_epoch if self.training else len(self.images)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose crops and augmentations items get; call it before iterating the loader."""
        self._epoch.fill_(int(epoch))

    # ------------------------------------------------------------------------------------ decoding
    def load(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Row -> ((H, W, 3) uint8 RGB image, (H, W) uint8 class indices), decoded once then cached (LRU)."""
        if row in self._cache:
            self._cache.move_to_end(row)
            return self._cache[row]
        image, index = self.decode(row)
        self.remember(row, image, index)
        return image, index

    def decode(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Row -> (image, class indices), through the disk cache when there is one; no in-memory caching, so
        threads may call it at once (``warm_cache``)."""
        image_path, mask_path = self.images[row], self.masks[row]
        if self.decode_cache is None:
            return self._checked(row, read_image(image_path, self.max_pixels), self._decode_mask(row))
        image = self.decode_cache.get(image_path, "image", lambda: read_image(image_path, self.max_pixels))
        if image.shape[0] * image.shape[1] > self.max_pixels:  # cached under a higher --max-pixels
            check_pixels(image_path, self.max_pixels)  # raises the decompression-bomb message
        index = self.decode_cache.get(mask_path, mask_kind(self.scheme_of(row)), lambda: self._decode_mask(row))
        return self._checked(row, image, index)

    def scheme_of(self, row: int) -> LabelScheme:
        return self.scheme if self.mask_schemes is None else self.mask_schemes[row]

    def _decode_mask(self, row: int) -> np.ndarray:
        """(H, W) uint8 class indices of a row's mask file."""
        mask_path, scheme = self.masks[row], self.scheme_of(row)
        raw = read_mask(mask_path, self.max_pixels)
        try:
            return scheme.decode(raw)
        except UnknownMaskValues as e:
            raise ValueError(
                f"{mask_path}: {e} of scheme {scheme.name!r}; pass the right --labels, or run "
                "`damage-smp manifest check CSV` to list every such mask"
            ) from None

    def _checked(self, row: int, image: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if index.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"{self.images[row]} is {image.shape[1]}x{image.shape[0]} but its mask {self.masks[row]} is "
                f"{index.shape[1]}x{index.shape[0]} (width x height); masks must match their images pixel for pixel"
            )
        return image, index

    def remember(self, row: int, image: np.ndarray, index: np.ndarray) -> None:
        """Keep a decoded row in the LRU cache; in-memory arrays are evicted oldest first to stay in budget."""
        size = memory_cost(image) + memory_cost(index)
        if size > self.cache_bytes or row in self._cache:
            return
        while self._cached + size > self.cache_bytes or len(self._cache) >= MAX_CACHED_ROWS:
            _, (old_image, old_index) = self._cache.popitem(last=False)
            self._cached -= memory_cost(old_image) + memory_cost(old_index)
        self._cache[row] = (image, index)
        self._cached += size

    def decoded_bytes(self) -> int:
        """Bytes of every row decoded (image + index), estimated from the files' headers."""
        return sum(w * h * 4 for w, h in map(image_size, self.images))

    # ------------------------------------------------------------------------------------ items
    def __getitem__(self, index: int) -> dict:
        epoch, i = self.epoch, int(index)
        if not self.training:
            image, mask = self.load(i)
            if self.pad_to:
                image, mask = pad_to_multiple(image, mask, self.pad_to)
            row = i
            rng = np.random.default_rng([self.seed, epoch, i])
        else:
            rng = np.random.default_rng([self.seed, epoch, i, 1])
            row = int(self._order(epoch, i // len(self.images))[i % len(self.images)])
            image, mask = self.load(row)
            if self.damage_crops and rng.random() < self.damage_crops:  # no extra draw at 0: old crops stay
                image, mask = damage_crop(image, mask, self.crop_size, rng, self.scheme_of(row).damage_table)
            else:
                image, mask = random_crop(image, mask, self.crop_size, rng)
        if self.transform is not None:
            self.transform.set_random_state(rng, random.Random(int(rng.integers(2**63))))
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),  # (3, H, W) uint8
            "mask": torch.from_numpy(mask.astype(np.int64)),  # (H, W) int64, 255 = ignore
            "index": row,
        }
        if self.weights is not None:
            item["weight"] = torch.tensor(self.weights[row], dtype=torch.float32)
        return item

    def _order(self, epoch: int, block: int) -> np.ndarray:
        """A seeded permutation of the rows, so every image is visited about equally often per epoch."""
        key = (epoch, block)
        if key not in self._orders:
            if len(self._orders) > 8:
                self._orders.clear()
            self._orders[key] = np.random.default_rng([self.seed, epoch, block, 2]).permutation(len(self.images))
        return self._orders[key]


def mask_kind(scheme: LabelScheme) -> str:
    """The decode cache's name for class indices decoded with ``scheme``."""
    return "index-" + hashlib.sha1(json.dumps(scheme.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def pad_to_multiple(image: np.ndarray, mask: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right to a multiple of ``multiple`` (image 0, mask IGNORE_INDEX); a no-op when it fits."""
    h, w = mask.shape
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return image, mask
    image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
    mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
    return image, mask


def memory_cost(array: np.ndarray) -> int:
    """Bytes an array holds in this process's memory: 0 for a memory map (the page cache holds it, shared) and for
    a broadcast view (a stride of 0: one value standing for many, e.g. pre-training's all-zero masks)."""
    return 0 if isinstance(array, np.memmap) or (array.size and 0 in array.strides) else array.nbytes


def warm_cache(dataset: SegmentationDataset, threads: int = 2) -> float:
    """Decode every row once, in ``threads`` threads (decoders release the GIL), into the dataset's caches.

    Call it before the loader's workers start: forked workers inherit the decoded arrays and memory maps, so
    nothing is decoded in the first epoch, nor once per worker. Rows are warmed only when they all fit the
    in-memory budget or a disk cache holds the big ones (else warming would evict its own work). Returns the
    seconds it took (0 when it did nothing).
    """
    todo = [row for row in range(len(dataset.images)) if row not in dataset._cache]
    if not todo:
        return 0.0
    if dataset.decode_cache is None and dataset.decoded_bytes() > dataset.cache_bytes:
        return 0.0
    start = time.perf_counter()
    decoded = run_with_progress(todo, dataset.decode, threads, f"decoding {len(todo)} training images once")
    for row, (image, index) in zip(todo, decoded, strict=True):
        dataset.remember(row, image, index)
    return time.perf_counter() - start


# ============================================================================================ transforms
def train_transform(strength: float = 1.0) -> A.Compose:
    """Flips and 90-degree rotations always; photometric changes scaled by ``strength`` (0 = geometry only).

    Geometry is exact on masks (flips/rotations move pixels, never interpolate). Blur kernels stay small, as
    1-3 px hairs and scratches must survive them.
    """
    if not 0 <= strength <= 2:
        raise ValueError(f"--aug-strength must be in [0, 2], got {strength}")
    geometry = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
    if strength == 0:
        return A.Compose(geometry)
    s = strength

    def p(x: float) -> float:
        return min(1.0, x * s)

    # scene-like changes first, then the "camera": CLAHE after noise would blow noise on blank paper up into
    # speckles that look like dust
    photometric = [
        A.RandomBrightnessContrast(brightness_limit=0.15 * s, contrast_limit=0.15 * s, p=p(0.5)),
        A.HueSaturationValue(hue_shift_limit=6 * s, sat_shift_limit=12 * s, val_shift_limit=8 * s, p=p(0.3)),
        A.CLAHE(clip_limit=(1.0, 1.0 + 1.5 * s), p=p(0.1)),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 3)), A.MotionBlur(blur_limit=(3, 5))], p=p(0.1)),
        A.GaussNoise(std_range=(0.005, 0.02 * s + 0.005), p=p(0.15)),
        A.ImageCompression(quality_range=(max(40, int(95 - 25 * s)), 95), p=p(0.1)),
    ]
    return A.Compose(geometry + photometric)


# ============================================================================================ loaders
def resolve_workers(num_workers: int) -> int:
    """-1 -> sized to the machine: one core for the main process, at most 8 workers."""
    if num_workers >= 0:
        return num_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 0 if cores <= 1 else min(cores - 1, 8)


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in each worker from torch's per-worker seed (items reseed themselves anyway)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class _Loader(DataLoader):
    """A DataLoader whose worker errors read as the worker raised them: one line, not a worker traceback."""

    def __iter__(self):
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as e:
                clean = unwrap_worker_error(e)
                if clean is e:
                    raise
                raise clean from None
            yield batch


def unwrap_worker_error(e: BaseException) -> BaseException:
    """torch re-raises a worker's error as the same type with the worker's whole traceback as its message
    ("Caught X in DataLoader worker process 0. Original Traceback ..."); give back X with the original message.
    """
    text = str(e)
    if not (text.startswith("Caught ") and "DataLoader worker" in text.split("\n", 1)[0]):
        return e
    kind = type(e)
    for name in (f"{kind.__module__}.{kind.__qualname__}", kind.__qualname__):
        at = text.rfind(f"\n{name}: ")
        if at >= 0:
            try:
                return kind(text[at + len(name) + 3 :].strip())
            except Exception:  # an exception type that cannot be built from one message: keep torch's
                return e
    return e


def make_loader(
    dataset: SegmentationDataset,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = -1,
    device_type: str = "cpu",
    sampler: Sampler | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader sized to the machine: persistent workers, pinned memory on CUDA, prefetching.

    Training items are already random (a function of seed, epoch and index), so ``shuffle`` is for eval
    datasets only; under DDP pass a ``DistributedSampler(dataset, shuffle=False)``. Eval-mode items keep each
    image's own size: batch them with ``batch_size=1`` (or tile them). A training dataset is decoded once
    here (``warm_cache``), before the workers fork, so they start with every image decoded.
    """
    workers = resolve_workers(num_workers)
    if dataset.training:
        warm_cache(dataset, threads=max(2, workers))
    return _Loader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device_type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=seed_worker if workers > 0 else None,
        drop_last=drop_last,
    )


def class_pixel_counts(
    source: SegmentationDataset | pd.DataFrame,
    scheme: LabelScheme | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 2,
) -> np.ndarray:
    """(C,) int64 pixels per class, for automatic class weights.

    Given a dataset, its rows go through its cache (loader workers forked afterwards inherit the decoded
    arrays, so nothing is decoded twice); given manifest rows, only the masks are decoded, in a thread pool.
    """
    if isinstance(source, SegmentationDataset):
        counts = [np.bincount(source.load(i)[1].ravel(), minlength=256) for i in range(len(source.images))]
        return np.sum(counts, axis=0)[: source.scheme.num_classes].astype(np.int64)
    if scheme is None:
        raise ValueError("class_pixel_counts(rows) needs the label scheme")
    counts = run_with_progress(
        list(source["mask_path"]), lambda m: count_classes(m, scheme, max_pixels), workers, "counting classes"
    )
    return np.sum(counts, axis=0)[: scheme.num_classes].astype(np.int64)
