"""The training loss: Dice (smp.losses.DiceLoss) + cross-entropy, with class weights and the ignore value.

Pixels at the ignore value (``labels.IGNORE_INDEX``: padding, unlabelled areas) get zero gradient from both
terms; a batch that is entirely ignored gives a loss of 0 (with a graph), never NaN. An optional per-sample weight
(``train --pseudo-weight``: pseudo-labelled crops count W times a labelled one) scales every pixel of a sample in
both terms' sums; without it the loss is exactly smp's Dice + the weighted-mean cross-entropy.
"""

from __future__ import annotations

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn

from .labels import IGNORE_INDEX


class SampleWeightedDice(smp.losses.DiceLoss):
    """smp's multiclass ``DiceLoss`` (its softmax, one-hot and ignore masking), with an optional (N,) weight per
    sample on each pixel's share of the class sums: Dice = 2 sum(w p t) / sum(w (p + t)). Weight None: smp's own."""

    sample_weight: torch.Tensor | None = None  # set by DiceCELoss.forward for one call

    def compute_score(self, output, target, smooth=0.0, eps=1e-7, dims=None) -> torch.Tensor:
        if self.sample_weight is None:
            return super().compute_score(output, target, smooth, eps, dims)
        w = self.sample_weight.to(output.device, output.dtype).view(-1, *([1] * (output.dim() - 1)))  # (N, 1, 1)
        intersection = (w * output * target).sum(dims)
        cardinality = (w * (output + target)).sum(dims)
        return (2 * intersection + smooth) / (cardinality + smooth).clamp_min(eps)


class DiceCELoss(nn.Module):
    """dice_weight x multiclass soft Dice + ce_weight x (class-weighted) cross-entropy.

    Dice is smp's ``DiceLoss(mode="multiclass")``: it masks ignored pixels out of both the prediction and the
    one-hot target, and classes absent from the batch's target contribute 0. Cross-entropy is averaged over
    the non-ignored pixels exactly like ``nn.CrossEntropyLoss(weight=...)``, but with the denominator clamped
    so an all-ignored batch gives 0 instead of 0/0. ``forward(..., weight)`` takes an optional (N,) per-sample
    weight: each pixel of sample n counts ``weight[n]`` times in both means (ignored pixels still count 0).
    """

    def __init__(
        self,
        num_classes: int,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        class_weights: torch.Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} entries for {num_classes} classes")
        self.num_classes = num_classes
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.ignore_index = ignore_index
        self.dice = SampleWeightedDice(mode="multiclass", from_logits=True, ignore_index=ignore_index)
        weight = torch.ones(num_classes) if class_weights is None else torch.as_tensor(class_weights).float()
        # reduction="none": we average ourselves, see forward
        self.ce = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index, reduction="none")

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """logits (N, C, H, W) float, target (N, H, W) long with values 0..C-1 or ignore_index, optional (N,)
        per-sample weight -> scalar."""
        logits = logits.float()  # under autocast the loss is still computed in float32
        target = target.long()
        sample = None if weight is None else weight.to(logits.device, torch.float32).view(-1, 1, 1)  # (N, 1, 1)
        loss = logits.new_zeros(())
        if self.ce_weight:
            valid = target != self.ignore_index  # (N, H, W)
            per_pixel = self.ce(logits, target)  # (N, H, W): weight[t] * -log p_t, 0 at ignored pixels
            # the weighted mean of nn.CrossEntropyLoss(reduction="mean"), with the 0/0 of an all-ignored batch
            # turned into 0 (and no host sync to test for it)
            w = self.ce.weight[target.clamp(0, self.num_classes - 1)] * valid  # (N, H, W)
            if sample is not None:
                per_pixel, w = per_pixel * sample, w * sample
            ce = per_pixel.sum() / w.sum().clamp_min(1e-12)
            loss = loss + self.ce_weight * ce
        if self.dice_weight:
            self.dice.sample_weight = weight  # read by SampleWeightedDice.compute_score
            try:
                loss = loss + self.dice_weight * self.dice(logits, target)
            finally:
                self.dice.sample_weight = None
        return loss


def class_weights_from_counts(counts: np.ndarray) -> torch.Tensor:
    """(C,) training pixel counts -> (C,) CE weights: 1/sqrt(frequency), scaled to mean 1 over present classes.

    Inverse-sqrt (rather than inverse) frequency lifts rare damage classes without letting a class seen in a
    handful of pixels dominate the loss. Classes absent from the training pixels get 1.0: they are never a
    target in training, so their weight only matters if they appear later (e.g. after --train-fraction), and
    a neutral 1.0 is the least surprising value. All-zero counts give all ones.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"class pixel counts must be a 1-D array of non-negative numbers, got {counts!r}")
    weights = np.ones_like(counts)
    present = counts > 0
    if present.any():
        inv = 1.0 / np.sqrt(counts[present] / counts.sum())
        weights[present] = inv / inv.mean()
    return torch.tensor(weights, dtype=torch.float32)
