"""Numbers across runs: metrics from summed counts, the paired bootstrap, seed/fold groups, baselines, Δ."""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import scores
from .reading import RUNTIME_FIELDS, SUMMARY_COLUMNS, ImageCounts, is_scratch, to_float

METRICS = ("damage_miou", "miou", "mdice", "damage_iou", "damage_f1", "damage_precision", "damage_recall",
           "pixel_accuracy", "fw_iou")  # fmt: skip
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
FOLD_STEM = re.compile(r"^fold[-_](?P<fold>.+)$")
AGGREGATED = ("best_val", *SUMMARY_COLUMNS, "train_time_s", "img_per_s", "peak_mem_mb", "energy_wh", "epochs_run")


# ============================================================================================ bootstrap
def metric_from_counts(sums: np.ndarray, num_classes: int, damage_idx: list[int], metric: str) -> np.ndarray:
    """(R, 3C + 3) summed counts -> (R,) metric values, by the same rules as ``metrics.ConfusionMatrix.summary``.

    IoU/Dice of a class with tp + fp + fn = 0 is NaN and skipped by the means (absent class).
    """
    c = num_classes
    tp, fp, fn = sums[:, :c], sums[:, c : 2 * c], sums[:, 2 * c : 3 * c]
    dtp, dfp, dfn = sums[:, 3 * c], sums[:, 3 * c + 1], sums[:, 3 * c + 2]
    by_metric = {
        "miou": lambda: scores.nanmean(scores.iou_score(tp, fp, fn), axis=1),
        "damage_miou": lambda: scores.nanmean(scores.iou_score(tp, fp, fn)[:, damage_idx], axis=1),
        "fw_iou": lambda: scores.frequency_weighted_iou(tp, fp, fn, axis=1),
        "mdice": lambda: scores.nanmean(scores.dice_score(tp, fp, fn), axis=1),
        "damage_iou": lambda: scores.iou_score(dtp, dfp, dfn),
        "damage_f1": lambda: scores.dice_score(dtp, dfp, dfn),
        "damage_precision": lambda: scores.precision(dtp, dfp),
        "damage_recall": lambda: scores.recall(dtp, dfn),
        "pixel_accuracy": lambda: scores.pixel_accuracy(tp, fn, axis=1),
    }
    if metric not in by_metric:
        raise ValueError(f"--metric {metric!r}: unknown; choose one of {', '.join(METRICS)}")
    return by_metric[metric]()


def paired_bootstrap(
    a: ImageCounts,
    b: ImageCounts,
    metric: str,
    num_classes: int,
    damage_idx: list[int],
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float, float]:
    """(difference a − b on all images, 2.5th, 97.5th percentile) over paired resamples of the images.

    Both sides use the same resample (a multinomial count per image), so the interval is paired. ``a`` and
    ``b`` must list the same images in the same order.
    """
    if a.images != b.images:
        raise ValueError("paired bootstrap needs the same images in the same order on both sides")
    n = len(a.images)
    ma, mb = a.matrix(), b.matrix()  # (n, K)
    full = (metric_from_counts(ma.sum(0, keepdims=True), num_classes, damage_idx, metric)
            - metric_from_counts(mb.sum(0, keepdims=True), num_classes, damage_idx, metric))[0]  # fmt: skip
    weights = resample_weights(n, n_resamples, seed)  # (R, n): how often each image is drawn
    diff = metric_from_counts(weights @ ma, num_classes, damage_idx, metric) - metric_from_counts(
        weights @ mb, num_classes, damage_idx, metric
    )  # (R,)
    diff = diff[~np.isnan(diff)]
    if diff.size < n_resamples // 2:
        return float(full), math.nan, math.nan
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return float(full), float(lo), float(hi)


@functools.lru_cache(maxsize=8)
def resample_weights(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(R, n) int64 counts of each image in R bootstrap resamples of n images (drawn with replacement).

    The same (n, seed) always gives the same resamples, so every comparison on one test set is paired on the
    same draws; cached because a study compares many runs on one test set. Integer counts: the sums are
    exact, and an int64 matmul avoids BLAS threads (which crawl on a busy machine).
    """
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))  # (R, n) drawn image indices
    offsets = (np.arange(n_resamples)[:, None] * n + idx).ravel()
    weights = np.bincount(offsets, minlength=n_resamples * n).reshape(n_resamples, n).astype(np.int64)
    weights.flags.writeable = False
    return weights


# ============================================================================================ grouping
@dataclass
class Unit:
    """Runs equal in every training setting but the seed (and run-time-only settings)."""

    key: tuple
    runs: list[dict]
    label: str = ""
    baseline: Unit | None = None
    is_baseline: bool = False
    pooled: ImageCounts | None = None
    pooled_note: str = ""

    @property
    def first(self) -> dict:
        return self.runs[0]

    def mean(self, column: str) -> tuple[float, float, int]:
        values = np.array([to_float(r.get(column)) for r in self.runs], float)
        values = values[~np.isnan(values)]
        if not values.size:
            return math.nan, math.nan, 0
        std = float(values.std(ddof=1)) if values.size > 1 else math.nan
        return float(values.mean()), std, int(values.size)


def setting_key(cfg: dict | None, drop: set[str] = frozenset()) -> tuple:
    if cfg is None:
        return ()
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in cfg.items()
                        if k not in RUNTIME_FIELDS and k not in drop))  # fmt: skip


def group_units(runs: list[dict]) -> list[Unit]:
    """Seed groups, in the order their first run appears; broken runs stay alone."""
    units: dict[tuple, Unit] = {}
    for i, run in enumerate(runs):
        cfg = run["_private"]["cfg"]
        key = ("broken", i) if cfg is None else (setting_key(cfg), run["_private"]["data_id"])
        units.setdefault(key, Unit(key, [])).runs.append(run)
    out = list(units.values())
    for unit in out:
        unit.label = unit_label(unit)
        for run in unit.runs:
            run["group"] = unit.label if len(unit.runs) > 1 else ""
    return out


def unit_label(unit: Unit) -> str:
    names = [r["name"] for r in unit.runs]
    if len(names) == 1:
        return names[0]
    prefix = os.path.commonprefix(names).rstrip("-_.s")
    return f"{prefix or names[0] + '…'} ({seed_list(unit.runs)})"


def seed_list(runs: list[dict]) -> str:
    """'seeds 0,1,2', or 'seeds 0–12, 26 runs' when long or repeated."""
    seeds = [r.get("seed") for r in runs]
    if len(set(map(str, seeds))) == len(seeds) and len(seeds) <= 6:
        return "seeds " + ",".join(str(s) for s in seeds)
    numeric = sorted(s for s in seeds if isinstance(s, int))
    span = f"{numeric[0]}–{numeric[-1]}" if numeric else "?"
    return f"seeds {span}, {len(seeds)} runs"


def choose_baselines(units: list[Unit], baseline: str, notes: list[str]) -> dict[int, Unit | None]:
    """unit index -> its baseline unit (auto: weights none, same arch/encoder/fraction/labels/data)."""
    by_id: dict[int, Unit | None] = {}
    if baseline != "auto":
        match = [u for u in units for r in u.runs if baseline in (r["name"], Path(r["path"]).name, r["path"])]
        if not match:
            names = ", ".join(r["name"] for u in units for r in u.runs)
            raise ValueError(f"--baseline {baseline!r}: no such run; use auto or one of: {names}")
        base = match[0]
        base.is_baseline = True
        notes.append(f"baseline: {base.label} (given with --baseline)")
        return {id(u): base for u in units}
    missing = []
    for unit in units:
        cfg = unit.first["_private"]["cfg"]
        if cfg is None:
            by_id[id(unit)] = None
            continue
        candidates = []
        for other in units:
            ocfg = other.first["_private"]["cfg"]
            if ocfg is None or not is_scratch(ocfg):
                continue
            same = all(ocfg.get(k) == cfg.get(k) for k in ("arch", "encoder", "train_fraction", "labels",
                                                             "ignore_background"))  # fmt: skip
            if same and other.first["_private"]["data_id"] == unit.first["_private"]["data_id"]:
                differ = sum(ocfg.get(k) != cfg.get(k) for k in cfg if k not in RUNTIME_FIELDS)
                candidates.append((differ, units.index(other), other))
        if candidates:
            base = min(candidates, key=lambda c: c[:2])[2]
            base.is_baseline = True
            by_id[id(unit)] = base
        else:
            by_id[id(unit)] = None
            missing.append(unit.label)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        notes.append(
            f"no baseline (a run with --encoder-weights none and the same arch, encoder, train fraction, labels "
            f"and manifest) for: {shown}; their Δ is blank — train one, or pick one with --baseline RUN"
        )
    return by_id


def pool_counts(unit: Unit) -> ImageCounts | None:
    """Sum a unit's per-image counts over its seeds (needs the same images with the same ground truth)."""
    if unit.pooled is not None or unit.pooled_note:
        return unit.pooled
    counts = [r["_private"]["counts"] for r in unit.runs if r["_private"]["counts"] is not None]
    if not counts:
        unit.pooled_note = "no per-image counts"
        return None
    ref = counts[0]
    total = ref
    for c in counts[1:]:
        c = c.aligned(ref.images)
        if c is None or not c.same_truth(ref):
            unit.pooled_note = "seeds evaluated on different images"
            return None
        total = total + c
    unit.pooled = total
    return total


def interval(a: ImageCounts | None, b: ImageCounts | None, run: dict, metric: str) -> tuple[float, float, str]:
    """Bootstrap CI of a − b, or NaNs and why not."""
    if a is None or b is None:
        return math.nan, math.nan, "no per-image counts"
    b = b.aligned(a.images)
    if b is None:
        return math.nan, math.nan, "different test images"
    if not a.same_truth(b):
        return math.nan, math.nan, "different ground truth"
    private = run["_private"]
    _, lo, hi = paired_bootstrap(a, b, metric, a.tp.shape[1], private["damage_idx"] or [])
    return lo, hi, ""


def fill_deltas(runs: list[dict], units: list[Unit], base_of: dict, metric: str, notes: list[str]) -> None:
    """Per-run Δ against the baseline unit mean, and the bootstrap CI of the run against the pooled baseline."""
    skipped = defaultdict(int)
    for unit in units:
        base = base_of.get(id(unit))
        for run in unit.runs:
            run.update(baseline=base.label if base else "", delta=math.nan, ci_low=math.nan, ci_high=math.nan)
            if base is None:
                continue
            base_mean = base.mean("metric")[0]
            run["delta"] = to_float(run.get("metric")) - base_mean
            if base is unit or math.isnan(to_float(run.get("metric"))):
                continue
            lo, hi, why = interval(run["_private"]["counts"], pool_counts(base), run, metric)
            run["ci_low"], run["ci_high"] = lo, hi
            if why:
                skipped[why] += 1
    for why, n in skipped.items():
        notes.append(f"no bootstrap interval for {n} run(s): {why}")


def seed_group_rows(units: list[Unit], base_of: dict, metric: str) -> list[dict]:
    """One row per seed group of 2+ runs: mean, std and n of every number; Δ and CI of the pooled group."""
    rows = []
    for unit in units:
        if len(unit.runs) < 2:
            continue
        row = aggregate_row(unit.label, "seeds", unit.runs, unit)
        base = base_of.get(id(unit))
        row["baseline"] = base.label if base else ""
        row["delta"] = row["metric"] - base.mean("metric")[0] if base else math.nan
        row["ci_low"] = row["ci_high"] = math.nan
        if base is not None and base is not unit:
            a, b = pool_counts(unit), pool_counts(base)
            row["ci_low"], row["ci_high"], _ = interval(a, b, unit.first, metric)
        rows.append(row)
    return rows


def aggregate_row(label: str, kind: str, runs: list[dict], unit: Unit | None) -> dict:
    first = runs[0]
    row = {"row_type": kind, "name": label, "n": len(runs), "members": ";".join(r["name"] for r in runs)}
    for k in ("arch", "encoder", "weights", "init", "self_training", "round", "schedule", "train_fraction", "labels",
              "epochs", "params_trainable", "params_total"):  # fmt: skip
        row[k] = first.get(k)
    row["seed"] = ",".join(str(r.get("seed")) for r in runs)
    row["status"] = ",".join(sorted({r["status"] for r in runs}))
    columns = [*AGGREGATED, "metric", *[k for k in first if k.startswith("iou_")]]
    tmp = Unit((), runs)
    for k in columns:
        mean, std, n = tmp.mean(k)
        row[k], row[f"{k}_std"], row[f"{k}_n"] = mean, std, n
    return row


def fold_group_rows(units: list[Unit], base_of: dict, metric: str, notes: list[str]) -> list[dict]:
    """Fold groups: units equal but for a fold-<group>.csv manifest in the same folder; mean ± std over folds."""
    folds: dict[tuple, dict[str, Unit]] = defaultdict(dict)
    for unit in units:
        cfg = unit.first["_private"]["cfg"]
        if cfg is None:
            continue
        manifest = Path(str(cfg.get("manifest", "")))
        m = FOLD_STEM.match(manifest.stem)
        if not m:
            continue
        key = (setting_key(cfg, drop={"manifest"}), str(manifest.parent))
        folds[key][m["fold"]] = unit
    rows = []
    for by_fold in folds.values():
        if len(by_fold) < 2:
            continue
        names = sorted(by_fold)
        first = by_fold[names[0]]
        label = f"{first.label} (folds {','.join(names)})"
        row = {"row_type": "folds", "name": label, "n": len(names), "members": ";".join(
            r["name"] for f in names for r in by_fold[f].runs)}  # fmt: skip
        for k in ("arch", "encoder", "weights", "init", "self_training", "round", "schedule", "train_fraction",
                  "labels", "epochs", "params_trainable", "params_total"):  # fmt: skip
            row[k] = first.first.get(k)
        row["status"] = ",".join(sorted({r["status"] for f in names for r in by_fold[f].runs}))
        columns = [*AGGREGATED, "metric", *[k for k in first.first if k.startswith("iou_")]]
        for k in columns:
            values = np.array([by_fold[f].mean(k)[0] for f in names], float)
            row[k], row[f"{k}_std"], row[f"{k}_n"] = _mean_std_n(values)
        deltas = []
        for f in names:
            base = base_of.get(id(by_fold[f]))
            deltas.append(by_fold[f].mean("metric")[0] - base.mean("metric")[0] if base else math.nan)
        row["delta"], row["delta_std"], row["delta_n"] = _mean_std_n(np.array(deltas, float))
        row["baseline"] = "per fold" if row["delta_n"] else ""
        row["ci_low"] = row["ci_high"] = math.nan
        rows.append(row)
    if rows:
        notes.append(
            "fold groups: runs equal but for a fold-<group>.csv manifest (same folder) — one value per fold "
            "(the mean over its seeds), shown as mean ± std across folds; Δ is taken fold by fold"
        )
    return rows


def _mean_std_n(values: np.ndarray) -> tuple[float, float, int]:
    values = values[~np.isnan(values)]
    if not values.size:
        return math.nan, math.nan, 0
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else math.nan, int(values.size)
