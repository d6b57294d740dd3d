"""Segmentation metrics from one confusion matrix: IoU, Dice, precision, recall, mIoU, damage-vs-clean.

Everything derives from a (C, C) int64 pixel count ``mat[target, pred]`` accumulated with ``torch.bincount``;
pixels whose target is the ignore value (``labels.IGNORE_INDEX``) never enter it. Counts add up exactly, so
matrices from several images, batches or ranks merge by summing (``+``, ``merge``, ``all_reduce``).

Absent classes: a class that occurs in neither the targets nor the predictions has no IoU or Dice at all
(0 / 0); it is reported as NaN and skipped by every mean, never counted as 0 (which would punish a model for
a class the test split does not contain) nor as 1 (which would reward it). A class absent from the targets
but predicted somewhere gets IoU 0: those pixels are all false positives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from . import scores
from .labels import IGNORE_INDEX, LabelScheme

ABSENT_NOTE = (
    "mIoU averages classes present in the ground truth or predictions; "
    "absent classes are NaN (null in JSON) and skipped"
)
_CHUNK = 1 << 24  # pixels per bincount call: bounds the int64 temporaries to ~400 MB on a 100 MP mask


class ConfusionMatrix:
    """Pixel counts ``mat[target, pred]`` over every non-ignored pixel seen by ``update``.

    >>> cm = ConfusionMatrix(3)
    >>> cm.update(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [1, 255]]))
    >>> cm.mat.tolist()
    [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    """

    def __init__(self, num_classes: int, ignore_index: int | None = IGNORE_INDEX, device="cpu"):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.mat = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64, device=device)

    # ------------------------------------------------------------------------------------- accumulate
    def update(self, pred, target) -> None:
        """Add one prediction/target pair: tensors or arrays of class indices, any equal shape, any int type.

        Pixels whose target equals ``ignore_index`` are skipped (whatever was predicted there). A value
        outside ``0..C-1`` elsewhere is a bug upstream and raises ``ValueError``.
        """
        pred, target = self._as_tensor(pred), self._as_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        pred, target = pred.reshape(-1), target.reshape(-1)
        c = self.num_classes
        for start in range(0, target.numel(), _CHUNK):
            t = target[start : start + _CHUNK].long()  # (n,)
            p = pred[start : start + _CHUNK].long()  # (n,)
            if self.ignore_index is not None:
                keep = t != self.ignore_index
                t, p = t[keep], p[keep]
            if t.numel() == 0:
                continue
            if bool(((t < 0) | (t >= c) | (p < 0) | (p >= c)).any()):
                bad = torch.cat([t[(t < 0) | (t >= c)], p[(p < 0) | (p >= c)]]).unique()[:8].tolist()
                raise ValueError(f"class indices {bad} outside 0..{c - 1} (ignore value {self.ignore_index})")
            self.mat += torch.bincount(t * c + p, minlength=c * c).reshape(c, c)

    def _as_tensor(self, x) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        elif not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"expected integer class indices, got dtype {x.dtype}; argmax the logits first")
        return x.to(self.mat.device)

    def reset(self) -> None:
        self.mat.zero_()

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (in place); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class counts into {self.num_classes} classes")
        self.mat += other.mat.to(self.mat.device)
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        out = ConfusionMatrix(self.num_classes, self.ignore_index, self.mat.device)
        out.mat = self.mat.clone()
        return out.merge(other)

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the counts over every rank when torch.distributed is initialised (no-op otherwise)."""
        if dist.is_available() and dist.is_initialized():
            mat = self.mat
            if dist.get_backend() == "nccl" and mat.device.type != "cuda":
                mat = mat.to(torch.device("cuda", torch.cuda.current_device()))  # NCCL reduces CUDA tensors only
            dist.all_reduce(mat, op=dist.ReduceOp.SUM)
            self.mat = mat.to(self.mat.device)
        return self

    # ------------------------------------------------------------------------------------- conversions
    def to_numpy(self) -> np.ndarray:
        """(C, C) int64 counts, rows = target, columns = prediction."""
        return self.mat.detach().cpu().numpy().copy()

    @classmethod
    def from_numpy(cls, mat, ignore_index: int | None = IGNORE_INDEX, device="cpu") -> ConfusionMatrix:
        """A matrix from (C, C) counts (an array, a tensor, or nested lists as in a JSON/CSV file)."""
        arr = np.asarray(mat.cpu() if isinstance(mat, torch.Tensor) else mat)
        if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
            raise ValueError(f"a confusion matrix must be square (C, C), got shape {arr.shape}")
        out = cls(arr.shape[0], ignore_index, device)
        out.mat = torch.as_tensor(arr.astype(np.int64), device=device).clone()
        return out

    @property
    def n_pixels(self) -> int:
        return int(self.mat.sum())

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, n_pixels={self.n_pixels})"

    # ------------------------------------------------------------------------------------- metrics
    def per_class(self, scheme: LabelScheme | Sequence[str] | None = None) -> list[dict]:
        """One dict per class: name, iou, dice (= F1), precision, recall, support, predicted, tp, fp, fn.

        ``support`` counts target pixels of the class, ``predicted`` the pixels predicted as it. A ratio
        whose denominator is 0 is NaN: IoU and Dice of a class absent from both targets and predictions,
        precision of a class never predicted, recall of a class absent from the targets. A class absent
        from the targets but predicted has IoU 0 (all its pixels are false positives).
        """
        names = _class_names(scheme, self.num_classes)
        mat = self.to_numpy()
        tp = np.diag(mat)
        support, predicted = mat.sum(1), mat.sum(0)
        fp, fn = predicted - tp, support - tp
        iou, dice = scores.iou_score(tp, fp, fn), scores.dice_score(tp, fp, fn)
        prec, rec = scores.precision(tp, fp), scores.recall(tp, fn)
        rows = []
        for i, name in enumerate(names):
            rows.append(
                {
                    "name": name,
                    "iou": float(iou[i]),
                    "dice": float(dice[i]),
                    "precision": float(prec[i]),
                    "recall": float(rec[i]),
                    "support": int(support[i]),
                    "predicted": int(predicted[i]),
                    "tp": int(tp[i]),
                    "fp": int(fp[i]),
                    "fn": int(fn[i]),
                }
            )
        return rows

    def damage_vs_clean(self, scheme: LabelScheme) -> dict:
        """Binary damage-vs-clean counts and scores: every damage class merged into one positive class.

        Negatives are the non-damage classes except the scheme's background. Pixels whose *target* is the
        background are left out entirely; a background *prediction* on a damage target is a false negative,
        on a clean target a true negative. Confusing one damage class with another is a true positive here.
        """
        mat = self.to_numpy()
        damage = np.zeros(self.num_classes, bool)
        damage[list(scheme.damage_indices)] = True
        rows = np.ones(self.num_classes, bool)
        if scheme.background_index is not None:
            rows[scheme.background_index] = False
        tp = int(mat[np.ix_(rows & damage, damage)].sum())
        fn = int(mat[np.ix_(rows & damage, ~damage)].sum())
        fp = int(mat[np.ix_(rows & ~damage, damage)].sum())
        tn = int(mat[np.ix_(rows & ~damage, ~damage)].sum())
        if not (rows & ~damage).any():  # no clean class: damage-vs-clean scores do not exist (NaN, shown as —)
            return {"iou": math.nan, "f1": math.nan, "precision": math.nan, "recall": math.nan,
                    "tp": tp, "fp": fp, "fn": fn, "tn": tn}  # fmt: skip
        return {
            "iou": scores.iou_score(tp, fp, fn),
            "f1": scores.dice_score(tp, fp, fn),
            "precision": scores.precision(tp, fp),
            "recall": scores.recall(tp, fn),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
        }

    def summary(self, scheme: LabelScheme) -> dict:
        """Headline numbers; NaN (null in JSON) where a number is undefined.

        - ``miou`` / ``mdice``: mean over classes present in the targets or predictions (absent = NaN, skipped)
        - ``damage_miou``: the same mean over the scheme's damage classes only
        - ``damage_iou`` / ``damage_f1`` (+ precision, recall): binary damage-vs-clean, see ``damage_vs_clean``
        - ``pixel_accuracy``: correct / all non-ignored pixels
        - ``fw_iou``: IoU weighted by each class's share of the target pixels
        - ``absent_classes``: classes in neither targets nor predictions, with ``note`` saying how they count
        """
        _class_names(scheme, self.num_classes)  # shape check
        rows = self.per_class(scheme)
        tp, fp, fn = (np.array([r[k] for r in rows], float) for k in ("tp", "fp", "fn"))
        iou = np.array([r["iou"] for r in rows], float)
        binary = self.damage_vs_clean(scheme)
        return {
            "miou": scores.nanmean(iou),
            "mdice": scores.nanmean([r["dice"] for r in rows]),
            "damage_miou": scores.nanmean(iou[list(scheme.damage_indices)]),
            "damage_iou": binary["iou"],
            "damage_f1": binary["f1"],
            "damage_precision": binary["precision"],
            "damage_recall": binary["recall"],
            "pixel_accuracy": scores.pixel_accuracy(tp, fn),
            "fw_iou": scores.frequency_weighted_iou(tp, fp, fn),
            "n_pixels": self.n_pixels,
            "n_classes_scored": int(np.count_nonzero(~np.isnan(iou))),
            "absent_classes": [r["name"] for r in rows if r["support"] == 0 and r["predicted"] == 0],
            "note": ABSENT_NOTE,
        }


# ----------------------------------------------------------------------------------------- image level
def image_detection(per_image_mats: Iterable, scheme: LabelScheme, min_pixels: int = 1) -> dict:
    """Image-level damage detection: does an image contain damage, and did the model say so?

    An image "has damage" in its target when at least ``min_pixels`` target pixels are of a damage class,
    and "is flagged" when at least ``min_pixels`` pixels are predicted as a damage class. As in
    damage-vs-clean, pixels whose target is the background (and ignored pixels) are not counted.
    ``per_image_mats``: one ``ConfusionMatrix`` or (C, C) array per image.
    Returns precision, recall, f1 (NaN when undefined), accuracy and the tp/fp/fn/tn image counts.
    """
    if min_pixels < 1:
        raise ValueError(f"min_pixels must be >= 1, got {min_pixels}")
    tp = fp = fn = tn = 0
    for m in per_image_mats:
        mat = m.to_numpy() if isinstance(m, ConfusionMatrix) else np.asarray(m)
        if mat.shape != (scheme.num_classes, scheme.num_classes):
            raise ValueError(f"per-image matrix of shape {mat.shape} does not fit {scheme.num_classes} classes")
        damage = np.zeros(scheme.num_classes, bool)
        damage[list(scheme.damage_indices)] = True
        rows = np.ones(scheme.num_classes, bool)
        if scheme.background_index is not None:
            rows[scheme.background_index] = False
        has = mat[rows & damage].sum() >= min_pixels
        flagged = mat[np.ix_(rows, damage)].sum() >= min_pixels
        tp += int(has and flagged)
        fn += int(has and not flagged)
        fp += int(flagged and not has)
        tn += int(not has and not flagged)
    n = tp + fp + fn + tn
    return {
        "precision": scores.precision(tp, fp),
        "recall": scores.recall(tp, fn),
        "f1": scores.dice_score(tp, fp, fn),
        "accuracy": scores.ratio(tp + tn, n),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "n_images": n,
        "min_pixels": int(min_pixels),
    }


# ----------------------------------------------------------------------------------------- helpers
def _class_names(scheme, num_classes: int) -> list[str]:
    if scheme is None:
        return [f"class_{i}" for i in range(num_classes)]
    names = list(scheme.names) if isinstance(scheme, LabelScheme) else [str(n) for n in scheme]
    if len(names) != num_classes:
        raise ValueError(f"label scheme has {len(names)} classes but the confusion matrix has {num_classes}")
    return names
