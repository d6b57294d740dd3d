"""``train --tensorboard``: per-epoch scalars and validation overlays in RUN_DIR/tensorboard/ (rank 0 only).

TensorBoard is an optional extra, so it is imported only here and only when asked for; ``require`` runs before the
run directory is made, so a missing package costs no half-made run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from pathlib import Path

import numpy as np

from .labels import LabelScheme
from .plots import overlay

TENSORBOARD_EXTRA = "pip install 'damage-smp[tensorboard]'"
FOLDER = "tensorboard"
SCALARS = {  # history column -> TensorBoard tag
    "train_loss": "train/loss",
    "val_loss": "val/loss",
    "val_miou": "val/miou",
    "val_damage_miou": "val/damage_miou",
    "lr": "train/lr",
}


def require(enabled: bool) -> None:
    """ValueError naming the extra when --tensorboard is asked for and the package is missing."""
    if enabled and importlib.util.find_spec("tensorboard") is None:
        raise ValueError(f"--tensorboard needs the tensorboard package: {TENSORBOARD_EXTRA}")


@contextlib.contextmanager
def writer_for(run):
    """``run.tb``: a SummaryWriter on RUN_DIR/tensorboard while the loop runs (rank 0, --tensorboard), then closed."""
    run.tb = open_writer(run.cfg.tensorboard and run.main, run.paths.root)
    try:
        yield
    finally:
        if run.tb is not None:
            run.tb.close()


def open_writer(enabled: bool, root: Path):
    """A SummaryWriter on ``root``/tensorboard, or None without --tensorboard (then nothing is written)."""
    if not enabled:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(root / FOLDER))


def log_epoch(run, class_iou: dict[str, float] | None = None, kept: list | None = None) -> None:
    """The last history row (finite values only: NaN = not validated), per-class IoU and overlays, at step = epoch."""
    writer, row = run.tb, run.history[-1]
    if writer is None:
        return
    step = row["epoch"]
    for key, tag in SCALARS.items():
        if math.isfinite(row[key]):
            writer.add_scalar(tag, row[key], step)
    for name, iou in (class_iou or {}).items():
        if math.isfinite(iou):
            writer.add_scalar(f"class_iou/{name}", iou, step)
    for k, (image, pred, target) in enumerate(kept or []):
        panel = overlay_panel(image, pred, target, run.scheme)
        writer.add_image(f"val/overlay_{k}", panel, step, dataformats="HWC")
    writer.flush()


def overlay_panel(image: np.ndarray, pred: np.ndarray, target: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """image | prediction overlay | ground-truth overlay, side by side (as samples/ has them)."""
    panels = [image, overlay(image, pred.astype(np.uint8), scheme), overlay(image, target.astype(np.uint8), scheme)]
    gap = np.full((image.shape[0], 6, 3), 255, np.uint8)
    return np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
