"""Will one training step fit? Activation memory measured on two small probes, scaled to the crop and batch.

A step's memory grows with crop² × batch: autograd keeps each layer's input for the backward pass. Rather than a
table of per-model factors, the tensors autograd saves are counted (``saved_tensors_hooks``) on two probe sizes;
their difference is the bytes per pixel of this model, frozen or not, which predicts the full step. The check
refuses before a process would be killed by the OS (CPU) or fail with out-of-memory after minutes (CUDA).
"""

from __future__ import annotations

import psutil
import torch

PROBES = (64, 128)  # probe crops (multiples of 32 that every architecture accepts, PAN's 128 included)
HEADROOM = 1.5  # backward holds activation gradients beside the saved tensors, and allocators fragment


def saved_bytes(model: torch.nn.Module, size: int, num_classes: int, device: torch.device) -> int:
    """Bytes autograd saves for the backward pass of one (1, 3, size, size) image, plus logits and their grad."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.zeros(1, 3, size, size, device=device)
    was_training = model.training
    model.eval()  # no BatchNorm statistics change; the saved tensors are those of training
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
    finally:
        model.train(was_training)
    return sum(storages.values()) + 3 * 4 * num_classes * size * size


def bytes_per_pixel(model: torch.nn.Module, num_classes: int, device: torch.device) -> float:
    """Peak step bytes per image pixel (headroom included): the difference of the two probes, so constants cancel."""
    small, large = (saved_bytes(model, s, num_classes, device) for s in PROBES)
    return HEADROOM * max(0.0, (large - small) / (PROBES[1] ** 2 - PROBES[0] ** 2))


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def check_step_fits(model: torch.nn.Module, cfg, num_classes: int, device: torch.device) -> None:
    """ValueError with the numbers and the fix when --crop-size × --batch-size cannot fit the free memory."""
    model = model.to(device)
    per_pixel = bytes_per_pixel(model, num_classes, device)
    need = per_pixel * cfg.crop_size**2 * cfg.batch_size
    have = free_bytes(device)
    if need <= have:
        return
    where = "GPU memory" if device.type == "cuda" else "memory"
    crop = max(32, int((0.8 * have / (max(per_pixel, 1e-9) * cfg.batch_size)) ** 0.5) // 32 * 32)
    raise ValueError(
        f"--crop-size {cfg.crop_size} with --batch-size {cfg.batch_size}: one training step of {cfg.arch}/"
        f"{cfg.encoder} needs about {need / 2**30:.1f} GB but only {have / 2**30:.1f} GB of {where} is free; "
        f"use --crop-size {crop} or smaller, or a smaller --batch-size (with --accum-steps to keep the effective batch)"
    )
