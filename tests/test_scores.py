"""damage_smp.scores: exact hand-computed values, and NaN (never 0 or 1) where a denominator is 0."""

import math

import numpy as np
import pytest

from damage_smp import scores


def test_scalar_scores_by_hand():
    tp, fp, fn = 6, 2, 4
    assert scores.iou_score(tp, fp, fn) == 6 / 12
    assert scores.dice_score(tp, fp, fn) == 12 / 18
    assert scores.fbeta_score(tp, fp, fn, beta=1) == 12 / 18
    assert scores.fbeta_score(tp, fp, fn, beta=2) == 30 / (30 + 16 + 2)  # (1+4)·6 / ((1+4)·6 + 4·4 + 2)
    assert scores.fbeta_score(tp, fp, fn, beta=0.5) == pytest.approx(7.5 / (7.5 + 1 + 2))
    assert scores.precision(tp, fp) == 6 / 8
    assert scores.recall(tp, fn) == 6 / 10
    assert scores.ratio(3, 4) == 0.75
    assert type(scores.iou_score(tp, fp, fn)) is float  # a scalar in, a Python float out (JSON-ready)


def test_zero_denominators_are_nan():
    for value in (
        scores.iou_score(0, 0, 0),
        scores.dice_score(0, 0, 0),
        scores.fbeta_score(0, 0, 0, beta=2),
        scores.precision(0, 0),  # never predicted
        scores.recall(0, 0),  # absent from the targets
        scores.ratio(0, 0),
        scores.ratio(5, 0),
        scores.nanmean([math.nan, math.nan]),
        scores.nanmean([]),
        scores.pixel_accuracy([0, 0], [0, 0]),
        scores.frequency_weighted_iou([0, 0], [3, 1], [0, 0]),
    ):
        assert math.isnan(value)
    # predicted but absent from the targets: all false positives, so IoU 0 (not NaN), recall NaN
    assert scores.iou_score(0, 5, 0) == 0.0 and scores.precision(0, 5) == 0.0 and math.isnan(scores.recall(0, 0))


def test_arrays_per_class_and_per_row():
    tp, fp, fn = np.array([8, 0, 0, 2]), np.array([2, 0, 4, 0]), np.array([0, 0, 0, 2])
    iou = scores.iou_score(tp, fp, fn)
    assert iou[0] == 0.8 and math.isnan(iou[1]) and iou[2] == 0.0 and iou[3] == 0.5
    assert scores.nanmean(iou) == pytest.approx((0.8 + 0.0 + 0.5) / 3)  # the absent class is skipped
    assert scores.pixel_accuracy(tp, fn) == 10 / 12
    # target pixels 8, 0, 0, 4 of 12: classes without target pixels weigh 0
    assert scores.frequency_weighted_iou(tp, fp, fn) == pytest.approx(8 / 12 * 0.8 + 4 / 12 * 0.5)
    # (R, C) rows, one result per row; a row with nothing scored is NaN
    rows = np.array([[0.5, math.nan], [math.nan, math.nan], [0.2, 0.4]])
    out = scores.nanmean(rows, axis=1)
    assert out[0] == 0.5 and math.isnan(out[1]) and out[2] == pytest.approx(0.3)
    stacked = scores.frequency_weighted_iou(np.stack([tp, 0 * tp]), np.stack([fp, fp]), np.stack([fn, 0 * fn]), 1)
    assert stacked[0] == pytest.approx(scores.frequency_weighted_iou(tp, fp, fn)) and math.isnan(stacked[1])


def test_no_numpy_warnings(recwarn):
    scores.iou_score(np.zeros(3), np.zeros(3), np.zeros(3))
    scores.nanmean(np.full((2, 3), np.nan), axis=1)
    scores.frequency_weighted_iou(np.zeros((2, 3)), np.ones((2, 3)), np.zeros((2, 3)), axis=1)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
