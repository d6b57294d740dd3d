"""DecodeCache on real files: same pixels as a fresh decode, invalidation, budget, and the dataset using it."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

from damage_smp.data import SegmentationDataset, make_loader, train_transform, warm_cache
from damage_smp.decode_cache import DecodeCache, default_decode_cache
from damage_smp.images import ImageReadError, read_image, write_image
from damage_smp.labels import load_scheme

BINARY = load_scheme("binary")


def _image(tmp_path, name: str, h: int = 48, w: int = 40, seed: int = 0):
    array = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    write_image(tmp_path / name, array)
    return tmp_path / name


def _counting(fn):
    calls = []

    def decode():
        calls.append(1)
        return fn()

    return decode, calls


def test_cached_pixels_equal_a_fresh_decode_and_later_reads_do_not_decode(tmp_path):
    path = _image(tmp_path, "a.png")
    cache = DecodeCache(tmp_path / "cache", 1 << 20, min_pixels=0)
    decode, calls = _counting(lambda: read_image(path))
    first = cache.get(path, "image", decode)
    again = DecodeCache(tmp_path / "cache", 1 << 20, min_pixels=0).get(path, "image", decode)  # another run
    assert isinstance(first, np.memmap) and isinstance(again, np.memmap) and not again.flags.writeable
    assert np.array_equal(first, read_image(path)) and np.array_equal(again, read_image(path))
    assert len(calls) == 1
    assert cache.entry(path, "image").is_file() and not list((tmp_path / "cache").glob("*.tmp"))


def test_a_changed_file_is_decoded_again_and_its_stale_entry_removed(tmp_path):
    path = _image(tmp_path, "a.png", seed=0)
    cache = DecodeCache(tmp_path / "cache", 1 << 20, min_pixels=0)
    old_entry = cache.entry(path, "image")
    cache.get(path, "image", lambda: read_image(path))
    _image(tmp_path, "a.png", seed=1)  # same size, new pixels
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a coarse-mtime file system still sees a change
    fresh = cache.get(path, "image", lambda: read_image(path))
    assert np.array_equal(fresh, read_image(path))
    assert not old_entry.exists() and cache.entry(path, "image").is_file()
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_kinds_are_separate_entries(tmp_path):
    path = _image(tmp_path, "a.png")
    cache = DecodeCache(tmp_path / "cache", 1 << 20, min_pixels=0)
    cache.get(path, "image", lambda: read_image(path))
    grey = cache.get(path, "index-x", lambda: read_image(path)[..., 0])
    assert grey.shape == (48, 40) and cache.get(path, "image", lambda: 1 / 0).shape == (48, 40, 3)


def test_the_budget_evicts_least_recently_used_entries(tmp_path):
    paths = [_image(tmp_path, f"i{k}.png", seed=k) for k in range(4)]
    entry_bytes = 48 * 40 * 3 + 128
    cache = DecodeCache(tmp_path / "cache", 2 * entry_bytes + 100, min_pixels=0)
    for k in (0, 1):
        cache.get(paths[k], "image", lambda k=k: read_image(paths[k]))
    os.utime(cache.entry(paths[0], "image"), (1, 1))  # entry 0 is now the least recently used
    cache.get(paths[2], "image", lambda: read_image(paths[2]))
    assert not cache.entry(paths[0], "image").exists()
    assert cache.entry(paths[1], "image").exists() and cache.entry(paths[2], "image").exists()
    assert cache.size_bytes() <= cache.budget_bytes
    big = DecodeCache(tmp_path / "cache", entry_bytes // 2, min_pixels=0)  # larger than its whole budget
    assert not isinstance(big.get(paths[3], "image", lambda: read_image(paths[3])), np.memmap)
    assert not big.entry(paths[3], "image").exists()


def test_small_images_and_unwritable_folders_fall_back_to_the_decoded_array(tmp_path):
    path = _image(tmp_path, "a.png")
    small = DecodeCache(tmp_path / "cache", 1 << 20, min_pixels=10_000)  # 48 x 40 is below it
    assert not isinstance(small.get(path, "image", lambda: read_image(path)), np.memmap)
    assert not (tmp_path / "cache").exists()
    (tmp_path / "blocked").write_text("a file where the cache folder should be")
    broken = DecodeCache(tmp_path / "blocked", 1 << 20, min_pixels=0)
    with pytest.warns(RuntimeWarning, match="cannot write"):
        array = broken.get(path, "image", lambda: read_image(path))
    assert np.array_equal(array, read_image(path))


def test_default_cache_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DAMAGE_SMP_CACHE", str(tmp_path / "root"))
    monkeypatch.setenv("DAMAGE_SMP_DECODE_CACHE_GB", "0.5")
    cache = default_decode_cache()
    assert cache.root == tmp_path / "root" / "decoded" and 0 < cache.budget_bytes <= 2**29
    monkeypatch.setenv("DAMAGE_SMP_DECODE_CACHE_GB", "0")
    assert default_decode_cache() is None
    monkeypatch.setenv("DAMAGE_SMP_DECODE_CACHE_GB", "lots")
    with pytest.raises(ValueError, match="DAMAGE_SMP_DECODE_CACHE_GB='lots'.*0 to turn it off"):
        default_decode_cache()


# ============================================================================================ with the dataset
def _pairs(tmp_path, n: int = 3, h: int = 96, w: int = 80) -> pd.DataFrame:
    rows = []
    for k in range(n):
        rng = np.random.default_rng(k)
        index = (rng.random((h, w)) > 0.7).astype(np.uint8)
        write_image(tmp_path / f"p{k}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        write_image(tmp_path / f"p{k}_m.png", index * 255)
        rows.append((str(tmp_path / f"p{k}.png"), str(tmp_path / f"p{k}_m.png")))
    return pd.DataFrame(rows, columns=["image_path", "mask_path"])


def test_dataset_items_are_identical_with_and_without_the_disk_cache(tmp_path):
    rows = _pairs(tmp_path)
    kwargs = dict(crop_size=64, samples_per_epoch=9, transform=train_transform(1.0))
    plain = SegmentationDataset(rows, BINARY, **kwargs)
    cache = DecodeCache(tmp_path / "cache", 1 << 20, min_pixels=0)
    cached = SegmentationDataset(rows, BINARY, decode_cache=cache, **kwargs)
    assert warm_cache(cached) > 0 and len(cached._cache) == 3 and cached._cached == 0  # maps cost no RAM
    assert len(list(cache.root.glob("*.npy"))) == 6  # 3 images + 3 class-index masks
    for i in range(9):
        a, b = plain[i], cached[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    whole = SegmentationDataset(rows, BINARY, crop_size=None, decode_cache=cache, pad_to=32)[1]
    assert whole["image"].shape == (3, 96, 96) and whole["mask"].dtype == torch.int64


def test_cached_masks_are_per_label_scheme(tmp_path):
    rows = _pairs(tmp_path, n=1)
    cache = DecodeCache(tmp_path / "cache", 1 << 20, min_pixels=0)
    binary = SegmentationDataset(rows, BINARY, crop_size=None, decode_cache=cache)[0]["mask"]
    spec = BINARY.to_dict()
    spec["classes"][1]["values"] = [1]
    spec["ignore_values"] = [255]  # the same files, another meaning: damage pixels are ignored
    other = SegmentationDataset(rows, type(BINARY).from_dict(spec), crop_size=None, decode_cache=cache)[0]["mask"]
    assert set(binary.unique().tolist()) == {0, 1} and set(other.unique().tolist()) == {0, 255}
    assert len(list(cache.root.glob("*.npy"))) == 3  # one image, two class-index versions of one mask


def test_a_cached_image_above_max_pixels_is_still_refused(tmp_path):
    rows = _pairs(tmp_path, n=1)
    cache = DecodeCache(tmp_path / "cache", 1 << 20, min_pixels=0)
    SegmentationDataset(rows, BINARY, crop_size=None, decode_cache=cache)[0]
    with pytest.raises(ImageReadError, match="above the 0 MP limit.*--max-pixels"):
        SegmentationDataset(rows, BINARY, crop_size=None, decode_cache=cache, max_pixels=1000)[0]


def test_loader_workers_crop_from_the_shared_maps(tmp_path):
    rows = _pairs(tmp_path)
    plain = SegmentationDataset(rows, BINARY, crop_size=32, samples_per_epoch=8)
    expected = torch.stack([plain[i]["image"] for i in range(8)])
    cache = DecodeCache(tmp_path / "cache", 1 << 20, min_pixels=0)
    ds = SegmentationDataset(rows, BINARY, crop_size=32, samples_per_epoch=8, decode_cache=cache)
    loader = make_loader(ds, batch_size=4, num_workers=1, device_type="cpu")
    assert len(ds._cache) == 3  # warmed before the workers started
    entries = sorted(cache.root.glob("*.npy"))
    for path in (*rows["image_path"], *rows["mask_path"]):
        os.utime(path, ns=(0, 0))  # a worker that looked the files up again would miss and re-decode them
    assert torch.equal(torch.cat([b["image"] for b in loader]), expected)
    assert sorted(cache.root.glob("*.npy")) == entries  # no worker decoded anything: they used the maps
