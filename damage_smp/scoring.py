"""evaluate's per-image maps beyond the argmax: the tuned decision, the threshold histogram, and their report.

``image_maps`` runs the sliding window once per image and hands every block of final probabilities to the
tuned rule (``thresholds.Decision``) and to the histogram ``--tune`` fills, so a tuned score costs no second
forward pass. A threshold is never scored on the split it was chosen on (``tuned_decision``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from .cleanup import remove_small
from .console import fmt
from .labels import LabelScheme
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


def tuned_entry(decision: Decision | None, note: str, total: ConfusionMatrix | None, scheme: LabelScheme) -> dict:
    """metrics.json's "tuned" part: the threshold and the scores with it, or why there are none."""
    if decision is None or total is None:
        return {"skipped": note}
    return {"threshold": decision.threshold, "level": decision.level, "note": note,
            "summary": total.summary(scheme), "per_class": total.per_class(scheme),
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
