"""losses: Dice + CE honour the ignore value (zero gradient), match torch's CE, never NaN; class weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from damage_smp.labels import IGNORE_INDEX
from damage_smp.losses import DiceCELoss, class_weights_from_counts


def batch(seed=0, n=2, c=4, size=16):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, size, size, generator=g, requires_grad=True)  # (N, C, H, W)
    target = torch.randint(0, c, (n, size, size), generator=g)  # (N, H, W)
    return logits, target


@pytest.mark.parametrize("dice_weight,ce_weight", [(1.0, 1.0), (1.0, 0.0), (0.0, 1.0)])
def test_ignored_pixels_get_zero_gradient_from_both_terms(dice_weight, ce_weight):
    logits, target = batch()
    target[0, :5] = IGNORE_INDEX  # a band of padding
    target[1, :, -3:] = IGNORE_INDEX
    weights = class_weights_from_counts(np.array([500, 20, 3, 80]))
    loss = DiceCELoss(4, dice_weight, ce_weight, class_weights=weights)(logits, target)
    loss.backward()
    ignored = (target == IGNORE_INDEX).unsqueeze(1).expand_as(logits)  # (N, C, H, W)
    assert torch.count_nonzero(logits.grad[ignored]) == 0
    assert logits.grad[~ignored].abs().max() > 0  # the labelled pixels do learn


def test_ignoring_half_the_image_equals_the_loss_on_the_other_half():
    logits, target = batch(seed=1)
    target[:, :, 8:] = IGNORE_INDEX
    loss_fn = DiceCELoss(4)
    left = DiceCELoss(4)(logits[:, :, :, :8], target[:, :, :8])
    assert loss_fn(logits, target).item() == pytest.approx(left.item(), rel=1e-6)


def test_ce_term_is_torch_cross_entropy_with_weights_and_ignore():
    logits, target = batch(seed=2)
    target[0, 3:6] = IGNORE_INDEX
    weights = torch.tensor([0.2, 3.0, 1.0, 0.8])
    ours = DiceCELoss(4, dice_weight=0.0, ce_weight=1.0, class_weights=weights)(logits, target)
    ref = F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE_INDEX)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    both = DiceCELoss(4, dice_weight=0.5, ce_weight=2.0, class_weights=weights)(logits, target)
    dice = DiceCELoss(4, dice_weight=1.0, ce_weight=0.0)(logits, target)
    assert both.item() == pytest.approx(2.0 * ref.item() + 0.5 * dice.item(), rel=1e-5)


def test_all_ignored_batch_gives_zero_not_nan():
    logits, _ = batch(seed=3)
    target = torch.full((2, 16, 16), IGNORE_INDEX)
    loss = DiceCELoss(4, class_weights=torch.tensor([1.0, 2.0, 0.5, 1.0]))(logits, target)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all() and logits.grad.abs().max() == 0


def test_loss_prefers_the_right_answer_and_runs_in_float32_from_bf16():
    _, target = batch(seed=4)
    good = F.one_hot(target, 4).permute(0, 3, 1, 2).float() * 8  # (N, C, H, W) confident and right
    loss_fn = DiceCELoss(4)
    assert loss_fn(good, target) < 0.01 < loss_fn(-good, target)
    out = loss_fn(good.bfloat16(), target)
    assert out.dtype == torch.float32


def test_class_weights_from_counts():
    w = class_weights_from_counts(np.array([1_000_000, 10_000, 0, 100]))
    assert w.dtype == torch.float32 and w.shape == (4,)
    present = w[[0, 1, 3]]
    assert present.mean().item() == pytest.approx(1.0)
    assert w[0] < w[1] < w[3]  # rarer -> heavier
    assert w[1] / w[0] == pytest.approx(10.0)  # inverse square root: 100x rarer -> 10x the weight
    assert w[2] == 1.0  # absent from training: neutral
    assert torch.equal(class_weights_from_counts(np.zeros(3)), torch.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        class_weights_from_counts(np.array([3, -1]))
    with pytest.raises(ValueError, match="3 entries for 4 classes"):
        DiceCELoss(4, class_weights=torch.ones(3))
