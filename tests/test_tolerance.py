"""Tolerant per-class precision/recall/F1: pixel-exact at tolerance 0, forgiving a 1-px shift at 2."""

from __future__ import annotations

import math

import numpy as np
import pytest

from damage_smp.labels import IGNORE_INDEX, load_scheme
from damage_smp.metrics import ConfusionMatrix
from damage_smp.scoring import TolerantCounts

SCHEME = load_scheme("artefact")


def _maps(seed: int):
    rng = np.random.default_rng(seed)
    target = rng.choice([0, 0, 1, 4, 9, 16], size=(40, 33)).astype(np.uint8)
    target[rng.random(target.shape) < 0.05] = IGNORE_INDEX
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.choice([0, 1, 4, 5], size=target.shape))
    pred[pred == IGNORE_INDEX] = 0
    return pred.astype(np.uint8), target


def test_tolerance_zero_is_the_pixel_exact_precision_recall_and_f1():
    tol, cm = TolerantCounts(SCHEME, 0), ConfusionMatrix(SCHEME.num_classes)
    for seed in range(3):
        pred, target = _maps(seed)
        tol.update(pred, target)
        cm.update(pred, target)
    exact = {r["name"]: r for r in cm.per_class(SCHEME)}
    for r in tol.per_class():
        e = exact[r["name"]]
        for mine, theirs in ((r["precision"], e["precision"]), (r["recall"], e["recall"]), (r["f1"], e["dice"])):
            assert (math.isnan(mine) and math.isnan(theirs)) or mine == pytest.approx(theirs, abs=1e-12), r["name"]
    assert any(r["support"] and r["predicted"] for r in tol.per_class())


def test_a_one_pixel_shift_is_forgiven_within_two_and_strips_change_nothing():
    target = np.zeros((30, 30), np.uint8)
    target[5:25, 10] = 9  # a 1-px crack
    pred = np.zeros_like(target)
    pred[5:25, 11] = 9  # found one pixel to the right
    exact, loose = TolerantCounts(SCHEME, 0), TolerantCounts(SCHEME, 2)
    exact.update(pred, target)
    loose.update(pred, target)
    assert exact.per_class()[8]["f1"] == 0 and loose.per_class()[8]["f1"] == 1.0
    pred, target = _maps(7)
    whole, strips = TolerantCounts(SCHEME, 2), TolerantCounts(SCHEME, 2)
    strips.STRIP_ROWS = 3
    whole.update(pred, target)
    strips.update(pred, target)
    assert np.array_equal(whole.counts, strips.counts)
    with pytest.raises(ValueError, match="--tolerance -1"):
        TolerantCounts(SCHEME, -1)
