"""compare(paths) -> a table of runs, deltas against the scratch baseline, bootstrap intervals and plots.

Reads the files a run directory holds (config.json, env.json, state.json, history.csv, metrics.json,
per_image*.csv) with json/csv/numpy only: it never imports torch, so comparing 100 runs takes a second, not
the ten a torch import alone can take. Nothing here trusts a run directory to be whole: a run with an unreadable
file, no history or no evaluation is listed with its state, never a crash.

Modules: ``reading`` (find run dirs, read one run's files, per-image counts), ``stats`` (metrics from summed
counts, the paired bootstrap, seed/fold groups, baselines, Δ), ``output`` (tables, compare.md/.csv, plots).

How runs are put together (documented in the output notes too):
- **seed groups**: runs whose training settings are equal except for the seed (and run-time-only settings such
  as device or workers) form one unit; its numbers are mean ± sample std (n) over the runs with a value.
- **baseline** (``auto``): for each unit, the unit with encoder weights ``none`` and the same arch, encoder,
  train fraction, label scheme and data (manifest), preferring the one whose other settings differ least.
  ``--baseline NAME`` names one run; its unit is the baseline of every row. Δ = value − baseline unit mean.
- **paired bootstrap**: 2000 resamples (seed 0) of the test images with replacement, the metric recomputed from
  the summed per-image TP/FP/FN counts of both sides on the same resample; the 2.5/97.5 percentiles of the
  difference. A unit's per-image counts are summed over its seeds (pooled), so the interval reflects image
  sampling, not seed-to-seed variation (that is the ± std). Only when both sides were evaluated on the same
  split key and the same images with the same ground truth (equal per-class target pixels per image).
- **folds**: runs trained on leave-one-group-out manifests (``fold-<group>.csv`` from ``manifest split
  --folds``, in one folder) that are otherwise equal form a fold group: one value per fold (the seed mean),
  reported as mean ± std across folds; Δ is taken fold by fold against the baseline's same fold.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from rich.console import Console

from ..rundir import kind_of
from ..runs import discover_runs, is_run_dir
from .output import OUTPUT_FILES, CompareResult, ci, pm, print_tables, runs_frame, write_outputs
from .reading import ImageCounts, read_run
from .stats import (
    BOOTSTRAP_SEED,
    METRICS,
    N_RESAMPLES,
    choose_baselines,
    fill_deltas,
    fold_group_rows,
    group_units,
    metric_from_counts,
    paired_bootstrap,
    seed_group_rows,
)

__all__ = ["compare", "CompareResult", "METRICS", "ImageCounts", "metric_from_counts", "paired_bootstrap", "ci", "pm"]


# ============================================================================================ entry point
def compare(
    paths: list[str | Path] | None = None,
    baseline: str = "auto",
    metric: str = "damage_miou",
    split: str = "test",
    out: str | Path | None = None,
    console: Console | None = None,
    plots: bool = True,
    overwrite: bool = False,
) -> CompareResult:
    """Compare run directories (or every run found up to 3 folders below the given folders).

    Writes ``compare.md``, ``compare.csv`` and the plots into ``out`` (default ``<first folder>/compare``),
    prints the tables, and returns a ``CompareResult``.
    """
    t0 = time.perf_counter()
    if metric not in METRICS:
        raise ValueError(f"--metric {metric!r}: unknown metric; choose one of {', '.join(METRICS)}")
    paths = [Path(p) for p in (paths or ["experiments"])]
    out_dir = Path(out) if out is not None else default_out(paths)
    check_out(out_dir, overwrite)
    run_dirs, names = discover_runs(paths)
    runs = [read_run(d, n, split, metric) for d, n in zip(run_dirs, names, strict=True)]
    notes = [
        "mIoU-type means skip classes absent from both ground truth and prediction (NaN), never count them as 0",
        f"Δ = {metric} − mean of the baseline unit; ± = sample std over seeds (n runs with a value)",
        f"95% CI: paired bootstrap over test images ({N_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}) of the "
        f"{metric} difference; a seed group's per-image counts are summed over its seeds (pooled), so the "
        "interval reflects image sampling, not seed variation",
        "train s = sum of the epochs' seconds; img/s = median over epochs; peak MB = max over epochs (GPU "
        "memory on CUDA, process RSS on CPU); energy = sum over epochs (its source in brackets); best val = "
        "best validation damage mIoU (mIoU where no damage class was present)",
    ]
    units = group_units(runs)
    base_of = choose_baselines(units, baseline, notes)
    fill_deltas(runs, units, base_of, metric, notes)
    groups = seed_group_rows(units, base_of, metric) + fold_group_rows(units, base_of, metric, notes)
    runs_df = runs_frame(runs)
    groups_df = pd.DataFrame(groups)

    result = CompareResult(runs_df, groups_df, metric, split, out_dir, notes=notes)
    write_outputs(result, runs, units, plots)
    result.seconds = time.perf_counter() - t0
    if console is not None:
        print_tables(result, console)
    return result


def check_out(out: Path, overwrite: bool) -> None:
    """An earlier comparison is replaced only with --overwrite; files compare did not write, never."""
    present = [name for name in OUTPUT_FILES if (out / name).exists()]
    if not present:
        return
    if kind_of(out) != "compare" and not is_old_compare(out):
        raise FileExistsError(
            f"{out / present[0]} exists and was not written by damage-smp compare; it is never replaced (not even "
            "with --overwrite): choose another --out or move it away"
        )
    if not overwrite:
        raise FileExistsError(
            f"{out} holds an earlier comparison ({', '.join(present)}); replace it with --overwrite "
            "or choose another --out"
        )


def is_old_compare(out: Path) -> bool:
    """A comparison written before compare.json existed: its compare.md starts with our heading."""
    try:
        with open(out / "compare.md", encoding="utf-8") as f:
            return f.readline().startswith("# Comparison — ")
    except (OSError, UnicodeDecodeError):
        return False


def default_out(paths: list[Path]) -> Path:
    first = paths[0]
    if is_run_dir(first):
        return first.parent / "compare"
    return first / "compare"
