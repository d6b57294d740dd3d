"""Figures and overlays: matplotlib with the Agg backend, written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .images import atomic_write_bytes, write_image  # noqa: E402
from .labels import IGNORE_INDEX, LabelScheme  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def overlay(image: np.ndarray, index: np.ndarray, scheme: LabelScheme, alpha: float = 0.55) -> np.ndarray:
    """Blend class colours over an RGB image where there is damage (clean, background and ignore stay as is)."""
    colours = scheme.colorize(index).astype(np.float32)
    show = np.isin(index, scheme.damage_indices) & (index != IGNORE_INDEX)
    out = image.astype(np.float32)
    out[show] = (1 - alpha) * out[show] + alpha * colours[show]
    return out.clip(0, 255).astype(np.uint8)


def legend_image(scheme: LabelScheme, classes: list[int] | None = None, width: int = 260) -> np.ndarray:
    """A small RGB legend: one colour swatch and name per class."""
    import cv2

    classes = list(range(scheme.num_classes)) if classes is None else classes
    row = 22
    img = np.full((row * len(classes) + 8, width, 3), 255, np.uint8)
    for k, c in enumerate(classes):
        y = 4 + k * row
        cv2.rectangle(img, (6, y + 3), (26, y + row - 5), tuple(int(v) for v in scheme.colors[c]), -1)
        cv2.rectangle(img, (6, y + 3), (26, y + row - 5), (90, 90, 90), 1)
        cv2.putText(img, scheme.names[c], (34, y + row - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1,
                    cv2.LINE_AA)  # fmt: skip
    return img


def save_sample(
    path: str | Path, image: np.ndarray, pred: np.ndarray, target: np.ndarray | None, scheme: LabelScheme
) -> None:
    """image | prediction overlay | ground-truth overlay, side by side, as one JPEG."""
    panels = [image, overlay(image, pred, scheme)]
    if target is not None:
        panels.append(overlay(image, target, scheme))
    gap = np.full((image.shape[0], 6, 3), 255, np.uint8)
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    write_image(path, row, quality=90)


def save_curves(history: list[dict], path: str | Path, title: str = "") -> None:
    """Loss and validation mIoU per epoch."""
    epochs = [int(r["epoch"]) for r in history]

    def col(key):
        return [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in history]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(epochs, col("train_loss"), marker="o", label="train")
    ax1.plot(epochs, col("val_loss"), marker="o", label="val")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("Dice + CE loss")
    ax1.legend()
    ax2.plot(epochs, col("val_miou"), marker="o", label="mIoU (all classes)")
    ax2.plot(epochs, col("val_damage_miou"), marker="o", label="mIoU (damage classes)")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation")
    ax2.legend()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
