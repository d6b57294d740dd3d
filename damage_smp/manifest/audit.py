"""``manifest check``: every row's files, sizes and mask values, duplicates, splits and class coverage.

Each image header and each mask is read once, in a small thread pool; per kind of problem the first few files
are named and the rest counted.
"""

from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from ..colours import SnapStats, closest_pair
from ..console import escape, progress_bar
from ..images import DEFAULT_MAX_PIXELS, ImageReadError, check_pixels, is_truncated_jpeg, read_mask
from ..labels import IGNORE_INDEX, LabelScheme, UnknownMaskValues
from .read import DEFAULT_MANIFEST, SPLITS, group_columns, read_manifest

SHOWN = 5  # per kind of problem, this many files are named; the rest are counted


@dataclass
class AuditReport:
    """What ``manifest check`` found. Errors stop a training run; warnings are worth reading."""

    manifest: str
    class_names: list[str]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    images: dict[str, int] = field(default_factory=dict)  # split -> readable image count
    class_pixels: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (C,) int64 pixel counts
    ignored_pixels: dict[str, int] = field(default_factory=dict)
    group_values: dict[str, int] = field(default_factory=dict)  # group column -> number of distinct values
    colour_tolerance: int = 0
    snapping: dict[str, int] = field(default_factory=dict)  # with a tolerance: pixels/masks snapped, unresolved

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def table(self) -> pd.DataFrame:
        """Classes as rows, splits as columns: an ``images`` count row, then each class's pixel share in %."""
        cols = {}
        for split, counts in self.class_pixels.items():
            total = counts.sum()
            shares = counts / total * 100 if total else np.zeros(len(counts))
            cols[split] = [float(self.images.get(split, 0)), *shares.tolist()]
        return pd.DataFrame(cols, index=["images", *self.class_names])


def count_classes(mask_path: str | Path, scheme: LabelScheme, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one mask and count its pixels per class: (C + 1,) int64, the last entry the ignored pixels."""
    try:
        index = scheme.decode(read_mask(mask_path, max_pixels))
    except UnknownMaskValues as e:
        raise ValueError(
            f"{mask_path}: {e} of scheme {scheme.name!r}; pass the right --labels, or run "
            "`damage-smp manifest check CSV` to list every such mask"
        ) from None
    counts = np.bincount(index.ravel(), minlength=256).astype(np.int64)
    return np.append(counts[: scheme.num_classes], counts[IGNORE_INDEX])


def audit_manifest(
    path: str | Path, scheme: LabelScheme, max_pixels: int = DEFAULT_MAX_PIXELS, workers: int = 3
) -> AuditReport:
    """Check every row: files, sizes, mask values, duplicates, splits, class coverage. Reads each mask once."""
    df = read_manifest(path)
    report = AuditReport(manifest=str(path), class_names=scheme.names, colour_tolerance=scheme.colour_tolerance)
    problems: dict[str, list[str]] = defaultdict(list)  # kind -> messages, in row order
    _table_problems(df, problems)
    counts = _check_files(df, scheme, max_pixels, workers, report, problems)
    if problems.get("missing") and Path(path).name == DEFAULT_MANIFEST:
        problems["missing"].insert(0, "the bundled sample is missing: run `make sample` (or `damage-smp synth sample`)")
    _tally_splits(df, counts, scheme, report, problems)
    report.group_values = {c: df[c].nunique() for c in group_columns(df)}
    for kind in ("split", "empty", "duplicate", "missing", "unreadable", "size", "values"):
        msgs = problems.get(kind, [])
        report.errors += msgs[:SHOWN] + ([f"... and {len(msgs) - SHOWN} more like these"] if len(msgs) > SHOWN else [])
    for kind in ("truncated?", "unresolved"):
        msgs = problems.get(kind, [])
        report.warnings += msgs[:SHOWN] + ([f"... and {len(msgs) - SHOWN} more"] if len(msgs) > SHOWN else [])
    report.warnings += _tolerance_warning(scheme)
    return report


def _tolerance_warning(scheme: LabelScheme) -> list[str]:
    """A tolerance of half the distance between two classes' colours makes the colours between them ambiguous."""
    pair = closest_pair(*scheme.palette()) if scheme.colour_tolerance else None
    if pair is None or 2 * scheme.colour_tolerance < pair[0]:
        return []
    return [
        f"--colour-tolerance {scheme.colour_tolerance}: the colours {pair[1]} and {pair[2]} of two classes are only "
        f"{pair[0]} apart, so colours between them are ambiguous (no label); below {(pair[0] + 1) // 2} none are"
    ]


def _tally_snapping(report: AuditReport, mask: str, stats: SnapStats, problems: dict) -> None:
    """Add one mask's snapping to the report; a mask with unresolved colours is named (a warning)."""
    totals, pixels = report.snapping, stats.pixels
    for key, value in (("pixels", pixels), ("snapped", stats.snapped), ("unresolved", stats.unresolved)):
        totals[key] = totals.get(key, 0) + value
    totals["snapped_masks"] = totals.get("snapped_masks", 0) + (stats.snapped > 0)
    if stats.unresolved:
        totals["unresolved_masks"] = totals.get("unresolved_masks", 0) + 1
        first = ", ".join(sorted(stats.colours, key=stats.colours.get, reverse=True)[:3])
        problems["unresolved"].append(
            f"{mask}: {stats.unresolved:,} px ({stats.unresolved / max(pixels, 1):.1%}) stay unresolved with "
            f"--colour-tolerance {report.colour_tolerance} ({stats.ambiguous:,} ambiguous between classes, "
            f"{stats.unknown:,} near no class colour; e.g. {first}); they get no label"
        )


def _table_problems(df: pd.DataFrame, problems: dict[str, list[str]]) -> None:
    """What the CSV itself gets wrong, before any file is opened: unknown split names, duplicated images."""
    for split in sorted(set(df["split"][~df["split"].isin(SPLITS)])):
        lines = np.flatnonzero(df["split"] == split) + 2
        problems["split"].append(
            f"unknown split name {split!r} on {len(lines)} row(s) (first on line {lines[0]}); use {', '.join(SPLITS)}"
        )
    dupes = df[df.duplicated("image_path", keep=False)]
    # plain lists: per-group pandas indexing takes a minute for 50k duplicated pairs
    images, splits, lines = dupes["image"].tolist(), dupes["split"].tolist(), (dupes.index + 2).tolist()
    for rows in dupes.groupby("image_path", sort=False).indices.values():  # positions in dupes, in row order
        names = sorted({splits[i] for i in rows})
        leak = f" in splits {' and '.join(names)} (leakage between splits)" if len(names) > 1 else ""
        problems["duplicate"].append(
            f"{images[rows[0]]}: listed {len(rows)} times (lines {_first_few([lines[i] for i in rows])})"
            f"{leak}; keep one row per image"
        )


def _first_few(numbers: list[int]) -> str:
    """'2, 3, 4, 5, 6 and 99995 more': a row listed 100k times must not make a line of 100k numbers."""
    shown = ", ".join(str(n) for n in numbers[:SHOWN])
    return shown + (f" and {len(numbers) - SHOWN} more" if len(numbers) > SHOWN else "")


def _check_files(
    df: pd.DataFrame,
    scheme: LabelScheme,
    max_pixels: int,
    workers: int,
    report: AuditReport,
    problems: dict[str, list[str]],
) -> dict[str, np.ndarray]:
    """Open each image and mask once (a duplicated row is checked once); fills ``report.images``.

    Returns split -> (C + 1,) pixel counts of the rows training can read, the last entry the ignored pixels.
    """
    valid = df["split"].isin(SPLITS)
    rows = df[~df.duplicated("image_path")]
    todo = list(zip(rows.index.tolist(), rows["image_path"].tolist(), rows["mask_path"].tolist(), strict=True))
    listed = df["image_path"].value_counts()  # rows per image: the bar counts rows, a duplicate with its first
    weights = listed[rows["image_path"]].tolist()
    results = run_with_progress(
        todo, lambda t: _check_row(*t[1:], scheme, max_pixels), workers, "checking rows", weights=weights
    )
    unknown: dict[str, list] = {}  # value -> [pixels, masks, first mask]
    counts = {s: np.zeros(scheme.num_classes + 1, np.int64) for s in SPLITS}
    report.images = dict.fromkeys(SPLITS, 0)
    for (i, _, _), (row_problems, row_counts, row_unknown, row_snap) in zip(todo, results, strict=True):
        for kind, msg in row_problems:
            problems[kind].append(msg)
        for value, px in row_unknown.items():
            entry = unknown.setdefault(value, [0, 0, df.at[i, "mask"]])
            entry[0] += px
            entry[1] += 1
        if row_snap is not None:
            _tally_snapping(report, df.at[i, "mask"], row_snap, problems)
        if row_counts is not None and valid[i]:
            counts[df.at[i, "split"]] += row_counts
            report.images[df.at[i, "split"]] += 1
    if unknown:
        problems["values"] += _describe_unknown(unknown, scheme)
    return counts


def _tally_splits(
    df: pd.DataFrame,
    counts: dict[str, np.ndarray],
    scheme: LabelScheme,
    report: AuditReport,
    problems: dict[str, list[str]],
) -> None:
    """Pixel counts per split into the report; empty splits and classes that train lacks become findings."""
    for split in SPLITS:
        report.class_pixels[split] = counts[split][:-1]
        report.ignored_pixels[split] = int(counts[split][-1])
        if not (df["split"] == split).any():
            msg = f"the {split!r} split has no rows"
            if split == "test":
                report.warnings.append(f"{msg}; `evaluate` needs one (`damage-smp manifest split` makes it)")
            else:
                problems["empty"].append(f"{msg}; training needs train and val (`damage-smp manifest split`)")
    absent = [n for n, c in zip(scheme.names, report.class_pixels["train"], strict=True) if c == 0]
    if report.images["train"] and absent:
        report.warnings.append(
            f"{len(absent)} class(es) have no pixels in train: {', '.join(absent)}; the model cannot learn them "
            "(add images with them, or merge classes with another --labels scheme)"
        )


def _check_row(image: str, mask: str, scheme: LabelScheme, max_pixels: int):
    """-> (problems [(kind, message)], class counts (C+1,) or None, unknown values {value: pixels}, SnapStats)."""
    problems, counts, unknown, size, snap = [], None, {}, None, None
    try:
        size = check_pixels(image, max_pixels)  # header only; a bomb is refused before any decoding
        problems += _truncation(image)
    except ImageReadError as e:
        problems.append(("missing" if "not found" in str(e) else "unreadable", str(e)))
    except OSError as e:  # permissions, a file vanishing mid-audit
        problems.append(("unreadable", f"{image}: cannot be read ({e.strerror or e}); check the file"))
    try:
        raw = read_mask(mask, max_pixels)
        try:
            index, snap = scheme.decode_counted(raw)
            hist = np.bincount(index.ravel(), minlength=256).astype(np.int64)
            counts = np.append(hist[: scheme.num_classes], hist[IGNORE_INDEX])
        except UnknownMaskValues as e:
            unknown = _unknown_pixels(raw, e.values)
        if size is not None and (raw.shape[1], raw.shape[0]) != size:
            problems.append(
                (
                    "size",
                    f"{image} is {size[0]}x{size[1]} but its mask {mask} is {raw.shape[1]}x{raw.shape[0]} "
                    "(width x height); a mask must match its image pixel for pixel",
                )
            )
    except ImageReadError as e:
        problems.append(("missing" if "not found" in str(e) else "unreadable", str(e)))
    except ValueError as e:
        problems.append(("unreadable", f"{mask}: {e}"))
    except OSError as e:
        problems.append(("unreadable", f"{mask}: cannot be read ({e.strerror or e}); check the file"))
    if any(kind != "truncated?" for kind, _ in problems):
        counts = None  # a row that training cannot read does not count in the table
    return problems, counts, unknown, snap


def _truncation(path: str) -> list[tuple[str, str]]:
    """Cheap end-marker check: a truncated PNG fails to decode in training; a truncated JPEG decodes grey."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg"):
        return []
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 4096))
        tail = f.read()
    if suffix == ".png" and b"IEND" not in tail:
        return [("unreadable", f"{path}: truncated PNG (no end chunk); re-export or re-copy the file")]
    if suffix != ".png" and b"\xff\xd9" not in tail:
        if is_truncated_jpeg(Path(path).read_bytes()):  # confirmed by a full decode: training would fail on it
            return [("unreadable", f"{path}: truncated JPEG (its data ends mid-image); re-export or re-copy the file")]
        return [("truncated?", f"{path}: JPEG has no end marker (truncated?); re-export it if it looks cut off")]
    return []


def _unknown_pixels(raw: np.ndarray, values: list) -> dict[str, int]:
    """Pixel count per value/colour that the scheme does not know (only on the error path)."""
    if raw.ndim == 2:
        uniq, n = np.unique(raw, return_counts=True)
        keys = [str(int(u)) for u in uniq]
    else:
        rgb = raw[..., :3].astype(np.int64)
        uniq, n = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2], return_counts=True)
        keys = [f"#{int(u):06X}" for u in uniq]
    wanted = {str(v) for v in values}
    return {k: int(c) for k, c in zip(keys, n, strict=True) if k in wanted}


def _describe_unknown(unknown: dict[str, list], scheme: LabelScheme) -> list[str]:
    ranked = sorted(unknown.items(), key=lambda kv: -kv[1][0])
    msgs = [
        f"mask value/colour {value} is not in label scheme {scheme.name!r}: {px:,} px in {n} mask(s), "
        f"first {first}; pass the right --labels (a JSON file can add it) or fix the masks"
        for value, (px, n, first) in ranked
    ]
    if len(unknown) > 50:
        pair = closest_pair(*scheme.palette())
        safe = f"--colour-tolerance {(pair[0] - 1) // 2 if pair else 16}"
        hint = f" {safe} snaps colours near one class's colour to it" if not scheme.colour_tolerance else ""
        msgs.insert(
            0, f"{len(unknown)} unknown mask colours/values: masks saved as JPEG or resized with smoothing?{hint}"
        )
    return msgs


def run_with_progress(items: list, fn, workers: int, what: str, weights: list[int] | None = None) -> list:
    """fn over items in a small thread pool (decoders release the GIL), in order, with a progress bar.

    ``weights``: how far each item advances the bar (e.g. the manifest rows it stands for); 1 each by default.
    """
    weights = [1] * len(items) if weights is None else weights
    with progress_bar(elapsed=False) as bar, ThreadPoolExecutor(max(1, workers)) as pool:
        task = bar.add_task(what, total=sum(weights))
        out = []
        for result, weight in zip(pool.map(fn, items), weights, strict=True):
            out.append(result)
            bar.advance(task, weight)
    return out


def print_audit(report: AuditReport, console) -> None:
    """One summary: a classes x splits table of pixel shares (%), then errors and warnings."""
    splits = [s for s in SPLITS if report.images.get(s)] or list(SPLITS)
    total = sum(report.images.values())
    groups = ", ".join(f"{c} ({n} values)" for c, n in report.group_values.items())
    table = Table(title=f"{report.manifest}: {total} images" + (f"; groups: {groups}" if groups else ""))
    table.add_column("class")
    for s in splits:
        table.add_column(s, justify="right")
    table.add_row("images", *[str(report.images.get(s, 0)) for s in splits], end_section=True)
    shares = report.table
    for name in report.class_names:
        table.add_row(name, *[_percent(shares.at[name, s]) for s in splits])
    ignored = [report.ignored_pixels.get(s, 0) for s in splits]
    if any(ignored):
        table.add_row("(ignored px)", *[f"{v:,}" for v in ignored])
    console.print(table)
    if report.colour_tolerance:
        console.print(_snapping_line(report), soft_wrap=True)
    for msg in report.errors:
        console.print(f"[bold red]error:[/] {escape(msg)}", soft_wrap=True)
    for msg in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(msg)}", soft_wrap=True)
    verdict = f"[bold red]{len(report.errors)} error(s)[/]" if report.errors else "[green]no errors[/]"
    console.print(f"{verdict}, {len(report.warnings)} warning(s)")


def _snapping_line(report: AuditReport) -> str:
    """'colour tolerance 12: 20,936 px (32.0%) snapped in 3 mask(s); 2,349 px (3.6%) in 3 mask(s) unresolved'."""
    t = report.snapping
    total = max(t.get("pixels", 0), 1)
    return (
        f"colour tolerance {report.colour_tolerance}: {t.get('snapped', 0):,} px ({t.get('snapped', 0) / total:.1%}) "
        f"snapped to a class colour in {t.get('snapped_masks', 0)} mask(s); {t.get('unresolved', 0):,} px "
        f"({t.get('unresolved', 0) / total:.1%}) in {t.get('unresolved_masks', 0)} mask(s) unresolved (no label)"
    )


def _percent(p: float) -> str:
    return "–" if p == 0 else "<0.01%" if p < 0.01 else f"{p:.2f}%"


def table_problems(df: pd.DataFrame) -> list[str]:
    """The CSV's own errors that `manifest check` reports (unknown splits, an image listed twice or in two
    splits), without opening a file: train refuses a manifest that has them."""
    problems: dict[str, list[str]] = {"split": [], "duplicate": []}
    _table_problems(df, problems)
    return problems["split"] + problems["duplicate"]


def check_leakage(df: pd.DataFrame, manifest: str, allow: bool) -> str | None:
    """Refuse, as `manifest check` does, an image listed twice or in two splits (evaluate would score what a
    model trained on); with ``allow`` (train --allow-leakage) return the warning instead."""
    problems = table_problems(df)
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    if not allow:
        raise ValueError(
            f"{manifest}: {problems[0]}{more}; `damage-smp manifest check {manifest}` lists them all. "
            "Fix the manifest, or pass --allow-leakage to train anyway"
        )
    return f"{problems[0]}{more} (--allow-leakage)"
