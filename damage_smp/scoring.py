"""evaluate's per-image maps beyond the argmax: the tuned decision, the threshold histogram, and their report.

``image_maps`` runs the sliding window once per image and hands every block of final probabilities to the
tuned rule (``thresholds.Decision``) and to the histogram ``--tune`` fills, so a tuned score costs no second
forward pass. A threshold is never scored on the split it was chosen on (``tuned_decision``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from . import scores
from .cleanup import remove_small
from .console import fmt
from .labels import IGNORE_INDEX, LabelScheme
from .metrics import ConfusionMatrix
from .runs import sha256_file
from .thresholds import FILE, HOW_TO_TUNE, DamageHistogram, Decision, read_thresholds

COMPARED = (("damage-vs-clean F1", "damage_f1"), ("damage-vs-clean IoU", "damage_iou"),
            ("damage-vs-clean precision", "damage_precision"), ("damage-vs-clean recall", "damage_recall"),
            ("damage mIoU", "damage_miou"), ("mIoU", "miou"))  # fmt: skip


def image_maps(predict: Callable, image: np.ndarray, target: np.ndarray, tuned: Decision | None,
               hist: DamageHistogram | None, min_area: dict[int, int], fill: int) -> dict[str, np.ndarray]:  # fmt: skip
    """{"argmax": (H, W) uint8, "tuned": (H, W) uint8 when ``tuned``}; ``hist`` gets every block too (before
    any clean-up); ``min_area`` components are removed from each map (``cleanup.remove_small``)."""
    tuned_map = np.empty(target.shape, np.uint8) if tuned is not None else None

    def on_block(y0: int, y1: int, x0: int, x1: int, probs) -> None:
        if tuned_map is not None:
            tuned_map[y0:y1, x0:x1] = tuned(probs).cpu().numpy()
        if hist is not None:
            hist.update(probs, target[y0:y1, x0:x1])

    maps = {"argmax": predict(image, on_block=on_block)}
    if tuned_map is not None:
        maps["tuned"] = tuned_map
    for index in maps.values():
        remove_small(index, min_area, fill)
    return maps


def tuned_decision(run_dir: Path, split_key: str, scheme: LabelScheme, checkpoint: Path,
                   tune: bool) -> tuple[Decision | None, str]:  # fmt: skip
    """(the tuned rule to score this split with, or None; why / what it is) — never the split it was tuned on."""
    how = HOW_TO_TUNE.format(run=run_dir)
    if tune:
        if split_key != "val":
            raise ValueError(f"--tune chooses the threshold on the run's val split; use `{how}` (no --manifest)")
        return None, "not scored: the threshold is being tuned on this split; evaluate test for a fair tuned score"
    data = read_thresholds(run_dir)
    if data is None:
        return None, f"no {FILE}; make it with `{how}`"
    if data.get("checkpoint_sha256") != sha256_file(checkpoint):
        return None, f"{FILE} was tuned for another checkpoint; tune again with `{how} --checkpoint {checkpoint.stem}`"
    if data.get("split") == split_key:
        return None, f"not scored: the threshold was tuned on {split_key}; evaluate another split (test)"
    return Decision.tuned(scheme, int(data["level"])), f"threshold {data['threshold']:.3f} tuned on {data['split']}"


def tuned_entry(decision: Decision | None, note: str, total: ConfusionMatrix | None, scheme: LabelScheme,
                tolerant: TolerantCounts | None = None) -> dict:  # fmt: skip
    """metrics.json's "tuned" part: the threshold and the scores with it, or why there are none."""
    if decision is None or total is None:
        return {"skipped": note}
    return {"threshold": decision.threshold, "level": decision.level, "note": note,
            "summary": total.summary(scheme), "per_class": total.per_class(scheme),
            "tolerant": tolerant.entry() if tolerant is not None else None,
            "confusion_matrix": total.to_numpy().tolist()}  # fmt: skip


def print_decisions(console: Console, entry: dict) -> None:
    """argmax and tuned scores side by side, clearly labelled (or one line saying why there is no tuned one)."""
    tuned = entry["tuned"]
    if "skipped" in tuned:
        console.print(f"tuned threshold: {tuned['skipped']}")
        return
    table = Table(title=f"decision rule: argmax vs tuned ({tuned['note']})")
    for col in ("metric", "argmax", f"tuned ≥ {tuned['threshold']:.3f}"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for label, key in COMPARED:
        table.add_row(label, fmt(entry["summary"][key], ".4f"), fmt(tuned["summary"][key], ".4f"))
    console.print(table)


def print_tolerant(console: Console, entry: dict) -> None:
    """Per damage class: pixel-exact F1 beside precision, recall and F1 within the tolerance."""
    tol = entry["tolerant"]
    exact = {r["name"]: r for r in entry["per_class"]}
    table = Table(title=f"damage classes within {tol['tolerance_px']} px (as thin cracks are scored)")
    for col in ("class", "F1 exact", "precision ±px", "recall ±px", "F1 ±px", "target px"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for r in tol["per_class"]:
        if r["support"] or r["predicted"]:
            cells = [fmt(v, ".4f") for v in (exact[r["name"]]["dice"], r["precision"], r["recall"], r["f1"])]
            table.add_row(r["name"], *cells, f"{r['support']:,}")
    console.print(table)


# ============================================================================================ tolerance
class TolerantCounts:
    """Precision, recall and F1 of each damage class with a distance tolerance, as thin cracks are scored.

    A predicted pixel of class c is a hit when a true pixel of c lies within ``tolerance`` pixels (a disk of
    that radius, ``cv2.MORPH_ELLIPSE``); a true pixel is found when a predicted pixel of c lies within it.
    precision = predicted hits / predicted, recall = true found / true. At tolerance 0 both hits are the
    overlap, so these are the pixel-exact precision, recall and F1 (= Dice). Pixels whose target is ignored
    count in neither. Dilated in strips of ``STRIP_ROWS`` rows (with ``tolerance`` rows of context each side),
    so memory is a few strips of masks, whatever the image size.
    """

    STRIP_ROWS = 1024

    def __init__(self, scheme: LabelScheme, tolerance: int):
        if tolerance < 0:
            raise ValueError(f"--tolerance {tolerance}: must be a distance in pixels >= 0, e.g. 2")
        self.scheme, self.tolerance = scheme, int(tolerance)
        size = 2 * self.tolerance + 1
        self.kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        self.counts = np.zeros((scheme.num_classes, 4), np.int64)  # predicted, predicted hits, true, true found

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """One image: (H, W) uint8 predicted and target class indices."""
        t, h = self.tolerance, pred.shape[0]
        for y0 in range(0, h, self.STRIP_ROWS):
            y1 = min(y0 + self.STRIP_ROWS, h)
            c0, c1 = max(0, y0 - t), min(h, y1 + t)  # rows of context
            p, g, keep = pred[c0:c1], target[c0:c1], slice(y0 - c0, y1 - c0)
            valid = g != IGNORE_INDEX
            for c in self.scheme.damage_indices:
                pc, gc = ((p == c) & valid).view(np.uint8), (g == c).view(np.uint8)
                if not (pc[keep].any() or gc[keep].any()):
                    continue
                near_true, near_pred = cv2.dilate(gc, self.kernel), cv2.dilate(pc, self.kernel)
                pk, gk = pc[keep].view(bool), gc[keep].view(bool)
                self.counts[c] += (pk.sum(), (pk & near_true[keep].view(bool)).sum(),
                                   gk.sum(), (gk & near_pred[keep].view(bool)).sum())  # fmt: skip

    def per_class(self) -> list[dict]:
        rows = []
        for c in self.scheme.damage_indices:
            n_pred, hit, n_true, found = (int(v) for v in self.counts[c])
            prec, rec = scores.ratio(hit, n_pred), scores.ratio(found, n_true)
            f1 = _harmonic(prec, rec, n_pred + n_true)
            rows.append({"name": self.scheme.names[c], "precision": prec, "recall": rec, "f1": f1,
                         "predicted": n_pred, "predicted_hits": hit, "support": n_true, "found": found})  # fmt: skip
        return rows

    def entry(self) -> dict:
        return {"tolerance_px": self.tolerance, "per_class": self.per_class()}


def _harmonic(prec: float, rec: float, n: int) -> float:
    """F1 = 2PR / (P + R); 0 when one side is empty and the other is not (as Dice), NaN when both are."""
    if n == 0:
        return math.nan
    if math.isnan(prec) or math.isnan(rec) or prec + rec == 0:
        return 0.0
    return 2 * prec * rec / (prec + rec)
