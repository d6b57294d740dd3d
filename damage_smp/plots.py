"""Figures and overlays: matplotlib with the Agg backend, written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import cv2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .images import atomic_write_bytes, write_image  # noqa: E402
from .labels import LabelScheme  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


OVERLAY_ALPHA = 0.55
STRIP_ROWS = 256  # overlays are blended this many rows at a time: temporaries stay ~W x 256 x 3 bytes
DARK_ABOVE = 110  # outline in black where the scan is brighter than this (grey level), else in white


def overlay(image: np.ndarray, index: np.ndarray, scheme: LabelScheme, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """An RGB copy of the image with damage in its display colour and outlined (``tint_in_place``)."""
    return tint_in_place(image.copy(), index, scheme, alpha, to_bgr=False)


def display_table(scheme: LabelScheme, bgr: bool = True) -> np.ndarray:
    """(256, 3) uint8 class index -> display colour (BGR for OpenCV, or RGB)."""
    table = np.zeros((256, 3), np.uint8)
    table[: scheme.num_classes] = scheme.display_colors[:, ::-1] if bgr else scheme.display_colors
    return table


def outline_width(shape: tuple[int, ...]) -> int:
    """Outline thickness in pixels: 1, and 1 more per 1000 pixels of the shorter side."""
    return 1 + min(shape[:2]) // 1000


def lookup_colours(index: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class indices -> (H, W, 3) uint8 ``table[index]`` ((256, 3) table), by OpenCV's LUT:
    several times faster than numpy's fancy indexing."""
    out = cv2.merge([index, index, index])
    return cv2.LUT(out, np.ascontiguousarray(table).reshape(1, 256, 3), dst=out)  # in place: one (H, W, 3) array


def tint_in_place(image: np.ndarray, index: np.ndarray, scheme: LabelScheme, alpha: float = OVERLAY_ALPHA,
                  to_bgr: bool = True) -> np.ndarray:  # fmt: skip
    """RGB image -> overlay in the same buffer (BGR for OpenCV when ``to_bgr``): damage pixels blended with
    their class's display colour and a contrasting outline along the inner edge of each damage region (black
    where the scan is light, white where it is dark), so damage stays visible on any scan.

    Works in strips of STRIP_ROWS rows on uint8 (with ``outline_width`` rows of context for the edges), so no
    full-size copy is ever made. Clean, background and ignored pixels stay as they are.
    """
    colours = display_table(scheme, bgr=to_bgr)
    damage = scheme.damage_table.astype(np.uint8) * 255  # (256,) 0/255: OpenCV's mask convention
    r, h = outline_width(image.shape), image.shape[0]
    kernel = np.ones((3, 3), np.uint8)
    for y0 in range(0, h, STRIP_ROWS):
        y1 = min(y0 + STRIP_ROWS, h)
        strip, idx = image[y0:y1], index[y0:y1]  # (s, W, 3) view, (s, W)
        if to_bgr:
            cv2.cvtColor(strip, cv2.COLOR_RGB2BGR, dst=strip)
        show = cv2.LUT(idx, damage)  # (s, W) uint8 0/255
        if not cv2.countNonZero(show):
            continue
        light = cv2.cvtColor(strip, cv2.COLOR_BGR2GRAY if to_bgr else cv2.COLOR_RGB2GRAY) > DARK_ABOVE
        cv2.copyTo(cv2.addWeighted(strip, 1 - alpha, lookup_colours(idx, colours), alpha, 0.0), show, strip)
        c0, c1 = max(0, y0 - r), min(h, y1 + r)
        mask = cv2.LUT(index[c0:c1], damage)
        inner = cv2.erode(mask, kernel, iterations=r, borderType=cv2.BORDER_REPLICATE)
        ys, xs = np.nonzero((mask > inner)[y0 - c0 : y1 - c0])  # the inner edge of each damage region
        strip[ys, xs] = np.where(light[ys, xs], 0, 255).astype(np.uint8)[:, None]
    return image


def legend_image(scheme: LabelScheme, classes: list[int] | None = None, width: int = 260) -> np.ndarray:
    """A small RGB legend: one colour swatch and name per class."""
    classes = list(range(scheme.num_classes)) if classes is None else classes
    row = 22
    img = np.full((row * len(classes) + 8, width, 3), 255, np.uint8)
    for k, c in enumerate(classes):
        y = 4 + k * row
        cv2.rectangle(img, (6, y + 3), (26, y + row - 5), tuple(int(v) for v in scheme.display_colors[c]), -1)
        cv2.rectangle(img, (6, y + 3), (26, y + row - 5), (40, 40, 40), 1)  # a border: a white swatch shows
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


def save_curves(history: list[dict], path: str | Path, title: str = "", loss_label: str = "Dice + CE loss",
                val_label: str = "val", scores: bool = True) -> None:  # fmt: skip
    """Loss and validation mIoU per epoch (``scores=False``: the loss alone, e.g. pre-training)."""
    epochs = [int(r["epoch"]) for r in history]

    def col(key):
        return [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in history]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(epochs, col("train_loss"), marker="o", label="train")
    ax1.plot(epochs, col("val_loss"), marker="o", label=val_label)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel(loss_label)
    ax1.legend()
    ax2.plot(epochs, col("val_miou"), marker="o", label="mIoU (all classes)")
    ax2.plot(epochs, col("val_damage_miou"), marker="o", label="mIoU (damage classes)")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation")
    ax2.legend()
    ax2.set_visible(scores)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


# ============================================================================================ evaluate / compare
MAX_BARS = 12  # units shown in the per-class bar chart; more bars than this are unreadable


def save_laid_out(fig, path: str | Path, dpi: int = 100) -> None:
    """Like save_figure for a figure already laid out (tight_layout): one render instead of two (faster)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


WEIGHT_MARKERS = {"imagenet": "o", "none": "s", "path": "^"}


def save_confusion_matrix(mat: np.ndarray, names: list[str], path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix (rows = ground truth, columns = prediction), shares annotated in %.

    Rows without target pixels (absent classes) stay blank rather than 0, matching the metrics' NaN rule.
    """
    mat = np.asarray(mat, np.float64)
    rows = mat.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(rows > 0, mat / rows, np.nan)  # (C, C)
    c = len(names)
    side = max(4.0, 0.42 * c + 2.2)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    ax.set_facecolor("#e4e4e4")  # rows of classes absent from the ground truth show grey, not "0 %"
    im = ax.imshow(np.ma.masked_invalid(norm), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(c), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(c), [f"{n} ({int(s):,})" for n, s in zip(names, rows[:, 0], strict=True)], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth (target pixels)")
    for i in range(c):
        for j in range(c):
            v = norm[i, j]
            if not np.isnan(v) and v >= 0.005:
                ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=6 if c > 10 else 8,
                        color="white" if v > 0.55 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the row's pixels")
    ax.set_title((title or "confusion matrix (row-normalised, %)") + "\ngrey rows: class absent from the ground truth",
                 fontsize=9)  # fmt: skip
    save_figure(fig, path)


def save_per_class_bars(
    names: list[str], series: dict[str, tuple[list[float], list[float]]], path: str | Path, ylabel: str = "IoU"
) -> None:
    """Grouped bars: one group per class, one bar per run/group (mean, with the std as an error bar)."""
    labels = list(series)[:MAX_BARS]
    n = max(1, len(labels))
    x = np.arange(len(names))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) * (1 + n / 3)), 4.2))
    for k, label in enumerate(labels):
        means, stds = (np.array(v, float) for v in series[label])
        ax.bar(x + (k - (n - 1) / 2) * width, np.nan_to_num(means), width, label=label,
               yerr=np.where(np.isnan(stds), 0, stds), capsize=1.5, error_kw={"lw": 0.6})  # fmt: skip
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=1 + n // 6, loc="upper right")
    ax.set_title("per-class IoU (absent classes have no bar)", fontsize=9)
    fig.tight_layout()
    save_laid_out(fig, path)


def save_curves_overlay(curves: dict[str, tuple[list, list, str]], path: str | Path, ylabel: str) -> None:
    """Validation curves of several runs on one axis, coloured by encoder weights (imagenet / none / path).

    Up to 12 runs get a line and a legend entry each; more are drawn as one NaN-separated line per weights
    setting (one artist instead of a hundred: fast, and a hundred legend entries would be unreadable anyway).
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {"imagenet": "tab:blue", "none": "tab:orange", "path": "tab:green"}
    if len(curves) <= 12:
        for name, (epochs, values, weights) in curves.items():
            ax.plot(epochs, values, marker=".", lw=1, alpha=0.8, color=colours.get(weights, "tab:gray"), label=name)
    else:
        for weights in sorted({w for *_, w in curves.values()}):
            xs, ys = [], []
            for epochs, values, w in curves.values():
                if w == weights:
                    xs += [*epochs, np.nan]
                    ys += [*values, np.nan]
            ax.plot(xs, ys, lw=0.8, alpha=0.6, color=colours.get(weights, "tab:gray"),
                    label=f"weights {weights} ({sum(w == weights for *_, w in curves.values())} runs)")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_laid_out(fig, path)


def save_score_vs_time(points: list[tuple[str, float, float, str]], path: str | Path, ylabel: str) -> None:
    """(name, train seconds, score, weights) per run: what each run's score cost in training time."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for weights in sorted({p[3] for p in points}):
        sel = [p for p in points if p[3] == weights]
        ax.scatter([p[1] for p in sel], [p[2] for p in sel], marker=WEIGHT_MARKERS.get(weights, "x"),
                   label=f"weights {weights}")  # fmt: skip
    if len(points) <= 20:
        for name, x, y, _ in points:
            ax.annotate(name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_laid_out(fig, path)


def save_data_efficiency(
    lines: dict[str, tuple[list[float], list[float], list[float]]], path: str | Path, ylabel: str
) -> None:
    """Score vs the fraction of training images, one line (mean ± std over seeds) per weights setting."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, (fractions, means, stds) in lines.items():
        ax.errorbar(fractions, means, yerr=np.nan_to_num(np.array(stds, float)), marker="o", capsize=3,
                    label=label)  # fmt: skip
    ax.set_xscale("log")
    ticks = sorted({f for fractions, _, _ in lines.values() for f in fractions})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("fraction of training images (log scale)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_laid_out(fig, path)


def save_pr_curve(curve: dict, best: dict, path: str | Path, title: str = "") -> None:
    """Damage-vs-clean precision over recall for every threshold, the tuned one and 0.5 marked."""
    prec, rec = np.asarray(curve["precision"], float), np.asarray(curve["recall"], float)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ok = ~(np.isnan(prec) | np.isnan(rec))
    ax.plot(rec[ok], prec[ok], color="#1f77b4", lw=1.5, label="damage vs clean, every threshold")
    half = (len(prec) - 1) // 2
    if ok[half]:
        ax.plot(rec[half], prec[half], "s", color="#888888", label=f"0.5: F1 {best['f1_at_0.5']:.3f}")
    ax.plot(best["recall"], best["precision"], "o", color="#d62728",
            label=f"tuned {best['threshold']:.3f}: F1 {best['f1']:.3f}")  # fmt: skip
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (damage pixels found)")
    ax.set_ylabel("precision (predicted damage that is damage)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title or "precision-recall, damage vs clean", fontsize=9)
    save_figure(fig, path)
