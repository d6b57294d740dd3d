"""Validation during training: whole val images by sliding window, and a few overlays for a quick look."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import distributed as ddp
from .config import TrainConfig
from .images import read_image, read_mask
from .labels import IGNORE_INDEX, LabelScheme
from .metrics import ConfusionMatrix
from .plots import save_pr_curve, save_sample
from .runs import RunPaths
from .thresholds import HOW_TO_TUNE, DamageHistogram, write_thresholds
from .tiling import predict_index, predict_probs

KEEP_SIDE = 768  # longest side, in pixels, of the images validate(keep=...) hands back


def validate(model, rows: pd.DataFrame, scheme: LabelScheme, loss_fn, cfg: TrainConfig, device, amp_dtype,
             shard: tuple[int, int] = (0, 1), keep: int = 0) -> dict:  # fmt: skip
    """Whole val images by sliding window: loss on the blended probabilities, confusion-matrix mIoU.

    Also ``class_iou`` (class name -> IoU, from the same confusion matrix) and, with ``keep``, ``kept``: the
    first ``keep`` (image, prediction, target) arrays of this shard, for overlays without another forward pass.
    """
    model.eval()
    cm = ConfusionMatrix(scheme.num_classes, device="cpu")
    loss_sum, n, kept = torch.zeros(2, dtype=torch.float64), 0, []
    rank, world = shard
    for row in rows.iloc[rank::world].itertuples():
        image = read_image(row.image_path, cfg.max_pixels)
        target = torch.from_numpy(load_target(row.mask_path, scheme, cfg.max_pixels)).long()
        probs = predict_probs(
            model,
            image,
            scheme.num_classes,
            tile=cfg.tile,
            overlap=cfg.overlap,
            batch_size=cfg.batch_size,
            device=device,
            amp_dtype=amp_dtype,
        )  # fmt: skip  (C, H, W)
        with torch.no_grad():  # log-probabilities as logits: CE and Dice of the blended prediction
            loss = loss_fn(probs.clamp_min(1e-8).log()[None], target[None].to(probs.device))
        if torch.isfinite(loss) and (target != IGNORE_INDEX).any():
            loss_sum[0] += loss.item()
            n += 1
        pred = probs.argmax(0).cpu()
        cm.update(pred, target)
        if len(kept) < keep:
            kept.append(shrunk(image, pred.numpy(), target.numpy()))
    loss_sum[1] = n
    ddp.all_reduce_sum(loss_sum)
    cm.all_reduce()
    summary = cm.summary(scheme)
    val_loss = (loss_sum[0] / loss_sum[1]).item() if loss_sum[1] > 0 else math.nan
    return {
        "val_loss": val_loss,
        "val_miou": summary["miou"],
        "val_damage_miou": summary["damage_miou"],
        "class_iou": {r["name"]: r["iou"] for r in cm.per_class(scheme)},
        "kept": kept,
    }


def shrunk(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Copies strided to at most KEEP_SIDE pixels a side (copies: a view would hold the whole image)."""
    step = -(-max(arrays[0].shape[:2]) // KEEP_SIDE)
    return tuple(np.ascontiguousarray(a[::step, ::step]) for a in arrays)


def load_target(mask_path: str, scheme: LabelScheme, max_pixels: int) -> np.ndarray:
    try:
        return scheme.decode(read_mask(mask_path, max_pixels))
    except ValueError as e:
        raise ValueError(f"{mask_path}: {e}; check --labels or run `damage-smp manifest check`") from None


def save_samples(paths: RunPaths, rows: pd.DataFrame, scheme: LabelScheme, cfg: TrainConfig, device) -> None:
    """A few validation images with the best model's prediction and the ground truth, for a quick look."""
    from .models import load_bundle

    bundle = load_bundle(paths.root, "best", device)
    for row in rows.head(cfg.samples).itertuples():
        image = read_image(row.image_path, cfg.max_pixels)
        probs = predict_probs(bundle.model, image, scheme.num_classes, tile=cfg.tile, overlap=cfg.overlap,
                              batch_size=cfg.batch_size, device=device)  # fmt: skip
        target = load_target(row.mask_path, scheme, cfg.max_pixels)
        pred = probs.argmax(0).numpy().astype(np.uint8)
        save_sample(paths.samples / f"{Path(row.image_path).stem}.jpg", image, pred, target, scheme)


def tune_thresholds(paths: RunPaths, rows: pd.DataFrame, scheme: LabelScheme, cfg: TrainConfig, device, say) -> None:
    """thresholds.json and pr_curve_val.png from the best checkpoint on the val images (one more val pass).

    Skipped, with a note, when there are no val images or nothing to tune (no damage or no clean class).
    """
    from .models import load_bundle
    from .system import resolve_amp

    how = HOW_TO_TUNE.format(run=paths.root)
    if rows.empty:
        say(f"no val images: thresholds.json not written (later: `{how}`)")
        return
    try:
        hist = DamageHistogram(scheme)
    except ValueError as e:
        say(f"thresholds.json not written: {e}")
        return
    bundle = load_bundle(paths.root, "best", device)
    for row in rows.itertuples():
        image = read_image(row.image_path, cfg.max_pixels)
        target = load_target(row.mask_path, scheme, cfg.max_pixels)
        predict_index(bundle.model, image, scheme.num_classes, tile=cfg.tile, overlap=cfg.overlap,
                      batch_size=cfg.batch_size, device=device, amp_dtype=resolve_amp(cfg.amp, device),
                      on_block=lambda y0, y1, x0, x1, p, t=target: hist.update(p, t[y0:y1, x0:x1]))  # fmt: skip
    try:
        best = hist.best()
    except ValueError as e:
        say(f"thresholds.json not written: {e}")
        return
    write_thresholds(paths.root, best, checkpoint="best", checkpoint_path=bundle.checkpoint_path,
                     epoch=bundle.epoch, split="val", n_images=len(rows), scheme=scheme)  # fmt: skip
    save_pr_curve(hist.curve(), best, paths.root / "pr_curve_val.png", title=f"{paths.root.name} — val")
    say(f"thresholds.json: damage threshold {best['threshold']:.3f} (val F1 {best['f1']:.4f}; "
        f"{best['f1_at_0.5']:.4f} at 0.5)")  # fmt: skip
