"""train --damage-crops F: that share of the training crops holds a damage pixel (foreground oversampling)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from damage_smp.config import TrainConfig
from damage_smp.crops import damage_crop, random_crop
from damage_smp.data import SegmentationDataset
from damage_smp.images import write_image
from damage_smp.labels import load_scheme

BINARY = load_scheme("binary")  # 0 Clean, 1 Damage


def _one_speck(tmp_path, h: int = 300, w: int = 260) -> SegmentationDataset:
    """One image whose only damage is a 5 x 5 speck near a corner: uniform crops rarely see it."""
    index = np.zeros((h, w), np.uint8)
    index[h - 12 : h - 7, 9:14] = 1
    image = np.full((h, w, 3), 128, np.uint8)
    image[index == 1] = 255
    write_image(tmp_path / "a.png", image)
    write_image(tmp_path / "a_m.png", index)
    return pd.DataFrame({"image_path": [str(tmp_path / "a.png")], "mask_path": [str(tmp_path / "a_m.png")]})


def _share_with_damage(rows, share: float, n: int = 200, seed: int = 0) -> float:
    ds = SegmentationDataset(rows, BINARY, crop_size=64, samples_per_epoch=n, seed=seed, damage_crops=share)
    return float(np.mean([bool((ds[i]["mask"] == 1).any()) for i in range(n)]))


def test_damage_crops_holds_damage_in_that_share_of_the_crops(tmp_path):
    rows = _one_speck(tmp_path)
    uniform, always, half = (_share_with_damage(rows, s) for s in (0.0, 1.0, 0.5))
    assert uniform < 0.15  # a 5 x 5 speck in a 300 x 260 image: about 7 % of 64 px crops reach it
    assert always == 1.0
    assert 0.4 < half < 0.7  # half placed on damage, plus the uniform ones that reach it by chance


def test_zero_keeps_the_uniform_crops_of_before(tmp_path):
    rows = _one_speck(tmp_path)
    plain = SegmentationDataset(rows, BINARY, crop_size=64, samples_per_epoch=12)
    zero = SegmentationDataset(rows, BINARY, crop_size=64, samples_per_epoch=12, damage_crops=0.0)
    assert all(torch.equal(plain[i]["mask"], zero[i]["mask"]) for i in range(12))


@pytest.mark.parametrize("shape", [(40, 30), (3000, 2000)])  # smaller than the crop (padded); a grid-sampled scan
def test_the_damage_pixel_lands_anywhere_in_the_crop_and_the_crop_stays_aligned(shape):
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    mask[h // 2, w - 3] = 1  # one pixel, near the right border
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.arange(w, dtype=np.uint16)[None, :] % 251  # the column, to check alignment
    places = set()
    for k in range(40):
        rng = np.random.default_rng(k)
        img, m = damage_crop(image, mask, 64, rng, BINARY.damage_table)
        ys, xs = np.nonzero(m == 1)
        assert len(ys) == 1
        places.add((int(ys[0]), int(xs[0])))
        assert img[ys[0], xs[0], 0] == (w - 3) % 251
    assert len(places) > 10


def test_a_mask_without_damage_gets_a_uniform_crop():
    mask = np.zeros((100, 120), np.uint8)
    image = np.zeros((100, 120, 3), np.uint8)
    a = damage_crop(image, mask, 64, np.random.default_rng(3), BINARY.damage_table)
    b = random_crop(image, mask, 64, np.random.default_rng(3))
    assert np.array_equal(a[1], b[1])


def test_flag_is_checked():
    with pytest.raises(ValueError, match="--damage-crops: must be in"):
        TrainConfig(damage_crops=1.5)
