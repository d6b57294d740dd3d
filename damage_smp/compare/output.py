"""What compare shows and writes: the result, terminal tables, compare.md/.csv and the plots."""

from __future__ import annotations

import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..console import MISSING, fmt, is_missing
from ..images import atomic_write_bytes
from .reading import SUMMARY_COLUMNS, to_float
from .stats import Unit, setting_key


# ============================================================================================ result
@dataclass
class CompareResult:
    """What compare found: ``runs`` (one row per run), ``groups`` (seed and fold groups), files written."""

    runs: pd.DataFrame
    groups: pd.DataFrame
    metric: str
    split: str
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ============================================================================================ tables
RUN_COLUMNS = ["name", "status", "arch", "encoder", "weights", "weights_path", "init", "self_training", "teacher",
               "round", "schedule", "train_fraction", "seed", "labels", "manifest", "epochs", "epochs_run",
               "time_budget", "steps", "params_trainable", "params_total", "train_time_s", "img_per_s", "peak_mem_mb",
               "energy_wh", "energy_source", "best_val", *SUMMARY_COLUMNS, "metric", "baseline", "delta", "ci_low",
               "ci_high", "n_images", "checkpoint", "group", "path", "note"]  # fmt: skip


def runs_frame(runs: list[dict]) -> pd.DataFrame:
    iou_cols = []
    for run in runs:
        iou_cols += [k for k in run if k.startswith("iou_") and k not in iou_cols]
    rows = [{k: v for k, v in run.items() if k != "_private"} for run in runs]
    df = pd.DataFrame(rows)
    for col in [*RUN_COLUMNS, *iou_cols]:
        if col not in df:
            df[col] = math.nan
    df.insert(0, "row_type", "run")
    return df[["row_type", *RUN_COLUMNS, *iou_cols]]


def pm(row: dict, key: str, spec: str = ".3f") -> str:
    """'mean ± std (n)' for group rows, the bare value for run rows."""
    value = fmt(row.get(key), spec)
    std = row.get(f"{key}_std")
    if is_missing(std):
        return value if row.get(f"{key}_n", 2) else MISSING
    return f"{value} ± {fmt(std, spec)} ({row.get(f'{key}_n')})"


def ci(row: dict) -> str:
    lo, hi = row.get("ci_low"), row.get("ci_high")
    if is_missing(lo):
        return MISSING
    return f"[{lo:+.3f}, {hi:+.3f}]"


def energy(row: dict) -> str:
    value = fmt(row.get("energy_wh"), ".2f")
    source = row.get("energy_source")
    return f"{value} ({source})" if value != MISSING and isinstance(source, str) and source else value


def params(row: dict) -> str:
    t, n = to_float(row.get("params_trainable")), to_float(row.get("params_total"))
    if math.isnan(n):
        return MISSING
    return f"{t / 1e6:.2f}M / {n / 1e6:.2f}M"


def epochs_cell(row: dict) -> str:
    """'run/planned' epochs; under --time-budget also the budget and the optimizer steps it became."""
    cell = f"{fmt(row['epochs_run'], '.0f')}/{fmt(row['epochs'], '.0f')}"
    budget = row.get("time_budget")
    if isinstance(budget, str) and budget:
        cell += f" in {budget} ({fmt(row.get('steps'), '.0f')} steps)"
    return cell


def table_rows(result: CompareResult) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """Headers and cells of the run table and the group table (shared by the terminal and compare.md)."""
    m = result.metric
    head = ["run", "status", "init", "self-training", "schedule", "frac", "seed", "params (train/total)", "epochs",
            "train s", "img/s", "peak MB", "energy Wh", "best val", "mIoU", "damage mIoU", "dmg-vs-clean F1",
            f"Δ {m}", "95% CI"]  # fmt: skip
    rows = []
    for r in result.runs.to_dict("records"):
        rows.append([
            r["name"], r["status"], fmt(r["init"]), fmt(r["self_training"]), fmt(r["schedule"]),
            fmt(r["train_fraction"], "g"), fmt(r["seed"], ".0f"), params(r), epochs_cell(r),
            fmt(r["train_time_s"], ".0f"), fmt(r["img_per_s"], ".1f"), fmt(r["peak_mem_mb"], ".0f"),
            energy(r), fmt(r["best_val"]), fmt(r["miou"]), fmt(r["damage_miou"]),
            fmt(r["damage_f1"]), "baseline" if r["baseline"] == r["name"] else fmt(r["delta"], "+.3f"), ci(r),
        ])  # fmt: skip
    ghead = ["group", "kind", "n", "init", "self-training", "schedule", "frac", "train s", "best val", "mIoU",
             "damage mIoU", "dmg-vs-clean F1", f"Δ {m}", "95% CI"]  # fmt: skip
    grows = []
    for r in result.groups.to_dict("records") if not result.groups.empty else []:
        delta = "baseline" if r["baseline"] == r["name"] else pm(r, "delta", "+.3f")
        grows.append([
            r["name"], r["row_type"], str(r["n"]), fmt(r["init"]), fmt(r["self_training"]), fmt(r["schedule"]),
            fmt(r["train_fraction"], "g"), pm(r, "train_time_s", ".0f"), pm(r, "best_val"), pm(r, "miou"),
            pm(r, "damage_miou"), pm(r, "damage_f1"), delta, ci(r),
        ])  # fmt: skip
    return head, rows, ghead, grows


def class_table(result: CompareResult) -> tuple[list[str], list[list[str]]]:
    """Per-class IoU: one row per unit (group means for seed groups, the run otherwise)."""
    runs = result.runs
    iou_cols = [c for c in runs.columns if c.startswith("iou_")]
    rows = []
    grouped = set()
    if not result.groups.empty:
        for r in result.groups[result.groups["row_type"] == "seeds"].to_dict("records"):
            rows.append([r["name"], *[fmt(r.get(c)) for c in iou_cols]])
            grouped.update(r["members"].split(";"))
    for r in runs.to_dict("records"):
        if r["name"] not in grouped and any(not math.isnan(to_float(r.get(c))) for c in iou_cols):
            rows.append([r["name"], *[fmt(r.get(c)) for c in iou_cols]])
    return ["run / group", *[c[4:] for c in iou_cols]], rows


KEY_COLUMNS = ("run", "status", "init", "self-training", "schedule", "frac", "seed", "damage mIoU", "group", "kind",
               "n")  # fmt: skip


def print_tables(result: CompareResult, console: Console) -> None:
    """The run and group tables (key columns only on a narrow terminal) and per-class IoU (classes as rows)."""
    head, rows, ghead, grows = table_rows(result)
    wide = console.width >= 200
    title = f"runs — {result.split} split, metric {result.metric}" + ("" if wide else " (all columns: compare.md)")
    print_table(console, title, head, rows, wide, status_column=1)
    if grows:
        print_table(console, "seed and fold groups (mean ± std (n))", ghead, grows, wide)
    chead, crows = class_table(result)
    if len(chead) > 1 and crows:
        fit = max(1, (console.width - 18) // 14)
        table = Table(title="per-class IoU" + ("" if len(crows) <= fit else f" (first {fit}; all in compare.md)"))
        table.add_column("class")
        for row in crows[:fit]:
            table.add_column(escape(row[0]), justify="right", overflow="fold")
        for k, name in enumerate(chead[1:], start=1):
            table.add_row(escape(name), *[row[k] for row in crows[:fit]])
        console.print(table)
    for note in result.notes:
        console.print(f"[dim]note: {escape(note)}[/]")
    console.print(escape(f"wrote {', '.join(str(p) for p in result.files)}  ({result.seconds:.2f} s)"))


def print_table(console: Console, title: str, head: list[str], rows: list[list[str]], wide: bool,
                status_column: int | None = None) -> None:  # fmt: skip
    """A rich table; on a narrow terminal only key columns, fewer still until the name column gets ~24 chars."""
    keep = [i for i, h in enumerate(head) if wide or i == 0 or h in KEY_COLUMNS or h.startswith(("Δ", "95%"))]
    if not wide and rows:

        def width(i: int) -> int:  # cells and headers never wrap (but the name column's)
            return max(len(head[i]), *(len(r[i]) for r in rows)) + 3

        need = min(18, max(len(r[0]) for r in rows))
        for name in ("frac", "kind", "n", "seed", "schedule", "status", "self-training", "init"):
            if console.width - 4 - sum(width(i) for i in keep if i) >= need:
                break
            keep = [i for i in keep if head[i] != name]
    table = Table(title=title)
    for i in keep:  # the name column folds; the others never wrap
        table.add_column(escape(head[i]), overflow="fold", no_wrap=i > 0)
    styles = {"broken": "red", "failed": "red", "interrupted": "yellow", "not evaluated": "dim"}
    for row in rows:
        style = styles.get(row[status_column]) if status_column is not None else None
        table.add_row(*[escape(row[i]) for i in keep], style=style)
    console.print(table)


# ============================================================================================ outputs
def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


OUTPUT_FILES = ("compare.md", "compare.csv", "per_class_iou.png", "val_curves.png", "score_vs_time.png",
                "data_efficiency.png")  # fmt: skip


def write_outputs(result: CompareResult, runs: list[dict], units: list[Unit], plots: bool) -> None:
    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    marker = {"written_by": "damage-smp compare", "metric": result.metric, "split": result.split}
    atomic_write_bytes(out / "compare.json", (json.dumps(marker, indent=2) + "\n").encode("utf-8"))
    head, rows, ghead, grows = table_rows(result)
    chead, crows = class_table(result)
    md = [f"# Comparison — {result.split} split, metric `{result.metric}`", "", f"{len(rows)} run(s).", "",
          markdown_table(head, rows), ""]  # fmt: skip
    if grows:
        md += ["## Seed and fold groups (mean ± std (n))", "", markdown_table(ghead, grows), ""]
    if len(chead) > 1 and crows:
        md += ["## Per-class IoU", "", markdown_table(chead, crows), ""]
    md += ["## Notes", "", *[f"- {n}" for n in result.notes], ""]
    md_path, csv_path = out / "compare.md", out / "compare.csv"
    atomic_write_bytes(md_path, "\n".join(md).encode("utf-8"))
    both = pd.concat([result.runs, result.groups], ignore_index=True) if not result.groups.empty else result.runs
    buf = io.StringIO()
    both.to_csv(buf, index=False, float_format="%.6g", lineterminator="\n")
    atomic_write_bytes(csv_path, buf.getvalue().encode("utf-8"))
    result.files = [md_path, csv_path]
    if plots:
        result.files += write_plots(result, runs, units)


def write_plots(result: CompareResult, runs: list[dict], units: list[Unit]) -> list[Path]:
    from .. import plots as P  # matplotlib only when plotting

    out, m = result.out_dir, result.metric
    files = []
    # ---- per-class IoU: one bar per unit (seed-group mean ± std), classes on the x axis
    shown = [u for u in units if not math.isnan(u.mean("metric")[0])][: P.MAX_BARS]
    iou_cols = [c for c in result.runs.columns if c.startswith("iou_")]
    if shown and iou_cols:
        series = {u.label: ([u.mean(c)[0] for c in iou_cols], [u.mean(c)[1] for c in iou_cols]) for u in shown}
        P.save_per_class_bars([c[4:] for c in iou_cols], series, out / "per_class_iou.png")
        files.append(out / "per_class_iou.png")
    # ---- validation curves
    curves = {}
    for run in runs:
        hist = run["_private"]["history"]
        if hist:
            score = [h.get("val_damage_miou", math.nan) for h in hist]
            if all(math.isnan(s) for s in score):
                score = [h.get("val_miou", math.nan) for h in hist]
            curves[run["name"]] = ([h["epoch"] for h in hist], score, run.get("weights") or "")
    if curves:
        P.save_curves_overlay(curves, out / "val_curves.png", ylabel="validation score (damage mIoU)")
        files.append(out / "val_curves.png")
    # ---- score vs train time
    points = [
        (r["name"], r["train_time_s"], r["metric"], r.get("weights") or "?")
        for r in runs
        if not (math.isnan(to_float(r.get("metric"))) or math.isnan(to_float(r.get("train_time_s"))))
    ]
    if points:
        P.save_score_vs_time(points, out / "score_vs_time.png", ylabel=f"{result.split} {m}")
        files.append(out / "score_vs_time.png")
    # ---- data efficiency: units equal but for the train fraction, one line per weights/schedule setting
    lines = data_efficiency_lines(units)
    if lines:
        P.save_data_efficiency(lines, out / "data_efficiency.png", ylabel=f"{result.split} {m}")
        files.append(out / "data_efficiency.png")
    return files


def data_efficiency_lines(units: list[Unit]) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """{weights/schedule label: (fractions, means, stds)} for settings trained at 2+ train fractions."""
    families: dict[tuple, list[Unit]] = defaultdict(list)
    for unit in units:
        cfg = unit.first["_private"]["cfg"]
        if cfg is None or math.isnan(unit.mean("metric")[0]):
            continue
        families[(setting_key(cfg, drop={"train_fraction"}), unit.first["_private"]["data_id"])].append(unit)
    lines = {}
    for members in families.values():
        fractions = sorted({float(u.first["train_fraction"]) for u in members})
        if len(fractions) < 2:
            continue
        members = sorted(members, key=lambda u: float(u.first["train_fraction"]))
        first = members[0].first
        label = f"{first['weights']} {first['schedule']} ({first['arch']}/{first['encoder']})"
        while label in lines:
            label += "'"
        lines[label] = (
            [float(u.first["train_fraction"]) for u in members],
            [u.mean("metric")[0] for u in members],
            [u.mean("metric")[1] for u in members],
        )
    return lines
