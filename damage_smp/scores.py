"""Scores from confusion counts: IoU, Dice, precision, recall, F-beta, pixel accuracy, frequency-weighted IoU.

The one place these formulas live: ``metrics.ConfusionMatrix`` scores one matrix with them, ``compare.stats``
scores thousands of bootstrap resamples at once. In the manner of segmentation_models_pytorch's
``metrics/functional.py`` (a score is a function of the tp / fp / fn counts), but numpy-only, so compare/
and report/ stay torch-free.

Counts are scalars or arrays of any equal (broadcastable) shape; a scalar result is a Python float. A ratio
whose denominator is 0 is NaN — never 0 (which would punish a model for a class the data lack) nor 1 (which
would reward it) — and ``nanmean`` skips NaN, so a class absent from both targets and predictions does not
count in mIoU.
"""

from __future__ import annotations

import numpy as np


def ratio(num, den):
    """num / den elementwise; NaN where den is 0."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den != 0, num / den, np.nan)
    return _scalar(out)


def iou_score(tp, fp, fn):
    """Intersection over union (Jaccard): tp / (tp + fp + fn)."""
    tp, fp, fn = _counts(tp, fp, fn)
    return ratio(tp, tp + fp + fn)


def fbeta_score(tp, fp, fn, beta: float = 1.0):
    """F-beta: (1 + β²) tp / ((1 + β²) tp + β² fn + fp); recall weighs β times as much as precision."""
    tp, fp, fn = _counts(tp, fp, fn)
    b2 = beta * beta
    return ratio((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp)


def dice_score(tp, fp, fn):
    """Dice = F1: 2 tp / (2 tp + fp + fn)."""
    return fbeta_score(tp, fp, fn, beta=1.0)


def precision(tp, fp):
    """tp / (tp + fp): NaN for a class never predicted."""
    tp, fp = _counts(tp, fp)
    return ratio(tp, tp + fp)


def recall(tp, fn):
    """tp / (tp + fn): NaN for a class absent from the targets."""
    tp, fn = _counts(tp, fn)
    return ratio(tp, tp + fn)


def pixel_accuracy(tp, fn, axis: int = -1):
    """Correct / all target pixels, over the classes along ``axis`` (per-class tp and fn counts)."""
    tp, fn = _counts(tp, fn)
    return ratio(tp.sum(axis), (tp + fn).sum(axis))


def frequency_weighted_iou(tp, fp, fn, axis: int = -1):
    """IoU weighted by each class's share of the target pixels, over the classes along ``axis``.

    Classes absent from the targets weigh 0 (their IoU, 0 or NaN, does not enter); NaN without target pixels.
    """
    tp, fp, fn = _counts(tp, fp, fn)
    support = tp + fn
    total = support.sum(axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        weighted = np.where(support > 0, support / total * iou_score(tp, fp, fn), 0.0)
    return _scalar(np.where(np.squeeze(total, axis) > 0, weighted.sum(axis), np.nan))


def nanmean(values, axis: int | None = None):
    """Mean of the non-NaN values (over ``axis``, or all); NaN where there are none, without numpy's warning."""
    values = np.asarray(values, float)
    n = (~np.isnan(values)).sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(n > 0, np.nansum(values, axis) / n, np.nan)
    return _scalar(out)


def _counts(*counts) -> tuple[np.ndarray, ...]:
    # float64 holds integer counts exactly up to 2**53 pixels, so sums and products below are exact
    return tuple(np.asarray(c, float) for c in counts)


def _scalar(out: np.ndarray):
    return float(out) if out.ndim == 0 else out
