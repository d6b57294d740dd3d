"""SegmentationDataset, crops, transforms and loaders on real files: alignment, padding, odd inputs."""

from __future__ import annotations

import pickle
import random

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from damage_smp.data import (
    SegmentationDataset,
    class_pixel_counts,
    make_loader,
    resolve_workers,
    train_transform,
)
from damage_smp.images import write_image
from damage_smp.labels import IGNORE_INDEX, load_scheme
from damage_smp.manifest import load_manifest, split_rows

ARTEFACT = load_scheme("artefact")
BINARY = load_scheme("binary")
# class k of the binary scheme is drawn in the image as this grey level, so the class can be read back
GREY = np.array([40, 215], np.uint8)


def _rows(pairs) -> pd.DataFrame:
    return pd.DataFrame({"image_path": [str(i) for i, _ in pairs], "mask_path": [str(m) for _, m in pairs]})


def _l_shape(h: int, w: int) -> np.ndarray:
    """(h, w) binary index with an L shape: no flip or rotation maps it onto itself."""
    index = np.zeros((h, w), np.uint8)
    index[h // 6 : h - h // 6, w // 5 : w // 5 + max(2, w // 6)] = 1
    index[h - h // 6 - max(2, h // 6) : h - h // 6, w // 5 : w - w // 8] = 1
    return index


def _coded_pair(tmp_path, name: str, h: int, w: int):
    """An image whose grey level encodes the class, and its binary index mask (values 0/1)."""
    index = _l_shape(h, w)
    image = np.repeat(GREY[index][..., None], 3, axis=2)
    write_image(tmp_path / f"{name}.png", image)
    write_image(tmp_path / f"{name}_m.png", index)
    return tmp_path / f"{name}.png", tmp_path / f"{name}_m.png", index


def _class_from_image(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 -> (H, W) class read back from the grey level."""
    return (image.float().mean(0) > float(GREY.mean())).long()


# ============================================================================================ eval mode
def test_eval_items_are_whole_uint8_images_and_long_masks(tiny_manifest):
    rows = split_rows(load_manifest(tiny_manifest), "val")
    ds = SegmentationDataset(rows, ARTEFACT, crop_size=None)
    assert len(ds) == 2
    item = ds[1]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 64, 64)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (64, 64)
    assert item["index"] == 1
    expected = ARTEFACT.decode(cv2.imread(rows["mask_path"][1])[..., ::-1].copy())
    assert (item["mask"].numpy() == expected).all()
    raw = cv2.imread(rows["image_path"][1])[..., ::-1]
    assert (item["image"].permute(1, 2, 0).numpy() == raw).all()  # no normalisation


def test_eval_pad_to_multiple_of_32_with_ignore(tmp_path):
    image_path, mask_path, index = _coded_pair(tmp_path, "odd", 37, 70)
    item = SegmentationDataset(_rows([(image_path, mask_path)]), BINARY, crop_size=None, pad_to=32)[0]
    assert item["image"].shape == (3, 64, 96) and item["mask"].shape == (64, 96)
    assert (item["mask"][:37, :70].numpy() == index).all()
    assert (item["mask"][37:] == IGNORE_INDEX).all() and (item["mask"][:, 70:] == IGNORE_INDEX).all()
    assert (item["image"][:, 37:] == 0).all()
    plain = SegmentationDataset(_rows([(image_path, mask_path)]), BINARY, crop_size=None)[0]
    assert plain["mask"].shape == (37, 70)  # padding is optional


@pytest.mark.parametrize("h, w", [(1024, 1020), (37, 2000)])
def test_odd_sizes_work_in_both_modes(tmp_path, h, w):
    image_path, mask_path, index = _coded_pair(tmp_path, f"s{h}", h, w)
    rows = _rows([(image_path, mask_path)])
    whole = SegmentationDataset(rows, BINARY, crop_size=None)[0]
    assert whole["image"].shape == (3, h, w) and (whole["mask"].numpy() == index).all()
    ds = SegmentationDataset(rows, BINARY, crop_size=64, samples_per_epoch=6)
    for i in range(6):
        item = ds[i]
        assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (64, 64)
        labelled = item["mask"] != IGNORE_INDEX
        assert (_class_from_image(item["image"])[labelled] == item["mask"][labelled]).all()


# ============================================================================================ training mode
def test_training_crops_are_reproducible_per_seed_and_epoch(tiny_manifest):
    rows = split_rows(load_manifest(tiny_manifest), "train")
    ds = SegmentationDataset(rows, ARTEFACT, crop_size=32, samples_per_epoch=20, transform=train_transform(1.0))
    assert len(ds) == 20
    first = [ds[i] for i in range(20)]
    assert sorted({int(x["index"]) for x in first}) == list(range(8))  # a permutation visits every image
    again = SegmentationDataset(rows, ARTEFACT, crop_size=32, samples_per_epoch=20, transform=train_transform(1.0))
    assert all(
        torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        for a, b in zip(first, map(again.__getitem__, range(20)), strict=True)
    )
    ds.set_epoch(1)
    second = [ds[i] for i in range(20)]
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(first, second, strict=True))


def test_image_smaller_than_crop_is_padded_with_ignore(tmp_path):
    image_path, mask_path, index = _coded_pair(tmp_path, "tiny", 20, 12)
    ds = SegmentationDataset(_rows([(image_path, mask_path)]), BINARY, crop_size=64, samples_per_epoch=8)
    offsets = set()
    for i in range(8):
        item = ds[i]
        labelled = item["mask"] != IGNORE_INDEX
        assert int(labelled.sum()) == 20 * 12  # every image pixel once, padding never a class
        ys, xs = torch.nonzero(labelled, as_tuple=True)
        y0, x0 = int(ys.min()), int(xs.min())
        assert (item["mask"][y0 : y0 + 20, x0 : x0 + 12].numpy() == index).all()
        assert (item["image"][:, ~labelled] == 0).all()
        offsets.add((y0, x0))
    assert len(offsets) > 1  # small images land at random places in the crop


@pytest.mark.parametrize("strength", [0.0, 1.0, 2.0])
def test_image_and_mask_stay_aligned_through_the_training_transform(tmp_path, strength):
    _, _, index = _coded_pair(tmp_path, "shape", 48, 40)
    image = np.repeat(GREY[index][..., None], 3, axis=2)
    transform = train_transform(strength)
    rng = np.random.default_rng(0)
    seen = set()
    for i in range(200):
        if i >= 40 and len(seen) == 8:
            break
        transform.set_random_state(rng, random.Random(int(rng.integers(1 << 31))))  # as the dataset does
        out = transform(image=image, mask=index)
        mask = out["mask"]
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        if strength == 0:
            assert (_class_from_image(torch.from_numpy(out["image"]).permute(2, 0, 1)).numpy() == mask).all()
        else:  # photometric ops move grey levels (Otsu finds the two again) and blur edges: compare interiors
            grey = out["image"].mean(axis=2).astype(np.uint8)
            derived = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]
            kernel = np.ones((5, 5), np.uint8)
            interior = cv2.erode(mask, kernel).astype(bool) | cv2.erode(1 - mask, kernel).astype(bool)
            assert interior.mean() > 0.4 and (derived[interior] == mask[interior]).all()
        seen.add((mask.shape, mask.tobytes()))
    assert len(seen) == 8  # all flips and rotations of the L happened, each aligned


def test_dataset_crops_stay_aligned_with_augmentation(tmp_path):
    image_path, mask_path, _ = _coded_pair(tmp_path, "big", 150, 130)
    rows = _rows([(image_path, mask_path)])
    ds = SegmentationDataset(rows, BINARY, crop_size=96, samples_per_epoch=30, transform=train_transform(0))
    for i in range(30):
        item = ds[i]
        labelled = item["mask"] != IGNORE_INDEX
        assert labelled.all()
        assert (_class_from_image(item["image"]) == item["mask"]).all()


# ============================================================================================ odd inputs
def _single(tmp_path, image_file, mask_index):
    mask_path = tmp_path / "mask.png"
    write_image(mask_path, mask_index)
    return SegmentationDataset(_rows([(image_file, mask_path)]), BINARY, crop_size=None)[0]


def test_grayscale_rgba_and_16bit_inputs(tmp_path):
    index = np.zeros((10, 14), np.uint8)
    gray = np.arange(140, dtype=np.uint8).reshape(10, 14)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    item = _single(tmp_path, tmp_path / "gray.png", index)
    assert item["image"].shape == (3, 10, 14) and (item["image"] == torch.from_numpy(gray)).all()

    rgb = np.random.default_rng(0).integers(0, 255, (10, 14, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((10, 14), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    item = _single(tmp_path, tmp_path / "rgba.png", index)
    assert (item["image"].permute(1, 2, 0).numpy() == rgb).all()  # alpha dropped, colours kept

    deep = (np.arange(140, dtype=np.uint16).reshape(10, 14) * 450).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    item = _single(tmp_path, tmp_path / "deep.png", index)
    assert item["image"].dtype == torch.uint8 and (item["image"][1].numpy() == (deep >> 8)).all()


def test_exif_rotated_jpeg_is_upright(tmp_path):
    stored = np.full((20, 40, 3), 128, np.uint8)  # 40 wide, 20 high as stored
    stored[:8, :8] = (255, 0, 0)  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif, quality=98)
    index = np.zeros((40, 20), np.uint8)  # masks are drawn on the upright image: 20 wide, 40 high
    item = _single(tmp_path, tmp_path / "rot.jpg", index)
    assert item["image"].shape == (3, 40, 20)
    top_right = item["image"][:, 1:6, -6:-1].float().mean((1, 2))
    assert top_right[0] > 200 and top_right[1] < 60  # the stored top-left is displayed at the top right


# ============================================================================================ errors and cache
def test_size_mismatch_and_unknown_values_name_the_files(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((16, 16, 3), np.uint8))
    write_image(tmp_path / "a_m.png", np.zeros((16, 12), np.uint8))
    with pytest.raises(ValueError, match=r"a.png is 16x16 but its mask .*a_m.png is 12x16"):
        SegmentationDataset(_rows([(tmp_path / "a.png", tmp_path / "a_m.png")]), BINARY, crop_size=None)[0]
    write_image(tmp_path / "b_m.png", np.full((16, 16), 9, np.uint8))
    with pytest.raises(ValueError, match=r"b_m.png: .*\(9\).*--labels.*manifest check"):
        SegmentationDataset(_rows([(tmp_path / "a.png", tmp_path / "b_m.png")]), BINARY, crop_size=None)[0]


def test_cache_decodes_once_and_stays_in_budget(tmp_path):
    pairs = []
    for k in range(5):
        image_path, mask_path, _ = _coded_pair(tmp_path, f"c{k}", 256, 256)  # 256 KiB decoded each
        pairs.append((image_path, mask_path))
    ds = SegmentationDataset(_rows(pairs), BINARY, crop_size=None, cache_mb=1)
    for i in range(5):
        ds[i]
    assert ds._cached == 1 << 20 and sorted(ds._cache) == [1, 2, 3, 4]  # the oldest was evicted
    for image_path, mask_path in pairs:
        image_path.unlink()
        mask_path.unlink()
    assert ds[3]["image"].shape == (3, 256, 256)  # served from memory, files no longer needed
    with pytest.raises(ValueError, match="c0.png: file not found"):
        ds[0]


# ============================================================================================ loaders
def test_loader_batches_and_the_epoch_reaches_persistent_workers(tiny_manifest):
    rows = split_rows(load_manifest(tiny_manifest), "train")
    ds = SegmentationDataset(rows, ARTEFACT, crop_size=32, samples_per_epoch=8, transform=train_transform(1.0))
    loader = make_loader(ds, batch_size=4, num_workers=1, device_type="cpu", drop_last=True)
    assert loader.persistent_workers and not loader.pin_memory and loader.prefetch_factor == 4
    epochs = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == 2 and batches[0]["image"].shape == (4, 3, 32, 32)
        assert batches[0]["image"].dtype == torch.uint8 and batches[0]["mask"].dtype == torch.int64
        epochs.append(torch.cat([b["image"] for b in batches]))
    direct = torch.stack([ds[i]["image"] for i in range(8)])  # ds.epoch is 1 here, computed in this process
    assert torch.equal(epochs[1], direct) and not torch.equal(epochs[0], epochs[1])
    assert resolve_workers(-1) >= 0 and resolve_workers(3) == 3


def test_class_pixel_counts_from_rows_and_from_dataset(tmp_path):
    pairs, expected = [], np.zeros(2, np.int64)
    for k, (h, w) in enumerate([(30, 20), (17, 41)]):
        image_path, mask_path, index = _coded_pair(tmp_path, f"p{k}", h, w)
        pairs.append((image_path, mask_path))
        expected += np.bincount(index.ravel(), minlength=2)
    rows = _rows(pairs)
    assert (class_pixel_counts(rows, BINARY) == expected).all()
    ds = SegmentationDataset(rows, BINARY, crop_size=16)
    assert (class_pixel_counts(ds) == expected).all()
    assert len(ds._cache) == 2  # decoded into the dataset's cache for the loader to reuse
    assert len(pickle.loads(pickle.dumps(ds))._cache) == 0  # spawned workers do not receive the cache
