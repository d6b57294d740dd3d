"""The learning-rate schedule: linear warmup, then poly, cosine or constant, stretched to the run's steps."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warmup, then poly (power 0.9) or cosine decay to 0 over the remaining steps, or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return (1 - progress) ** 0.9


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
