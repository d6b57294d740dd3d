"""Data manifests: read, audit, build from folders, and split (random / grouped / leave-one-group-out).

A manifest is a CSV with the columns ``image,mask,split`` (split is train, val or test) plus any extra columns
(``material``, ``content``, ...), which are group columns: strings that name where an image comes from, so
that a split can keep every group whole and a study can hold one group out. Paths are relative to the CSV's
folder. ``load_manifest`` adds absolute ``image_path`` and ``mask_path`` columns.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    ImageReadError,
    atomic_write_bytes,
    check_pixels,
    is_truncated_jpeg,
    read_mask,
)
from .labels import IGNORE_INDEX, LabelScheme, UnknownMaskValues

SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("image", "mask", "split")
DEFAULT_MANIFEST = "data_manifest.csv"
MASK_SUFFIX = re.compile(r"[_\-. ]?(masks?|labels?|gt|annotations?|annot|seg|segmentation)$", re.IGNORECASE)
_SHOWN = 5  # per kind of problem, this many files are named; the rest are counted


# ============================================================================================ reading
def load_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a manifest; adds absolute ``image_path``/``mask_path``; attrs: manifest, group_columns."""
    df = _read_manifest(path)
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        first = int(np.flatnonzero(~df["split"].isin(SPLITS))[0])
        raise ValueError(
            f"{path}: unknown split name(s) {bad} (first on line {first + 2}); "
            f"use {', '.join(SPLITS)} in the split column"
        )
    return df


def _read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest without judging its split names (the audit reports those itself)."""
    path = Path(path)
    if not path.is_file():
        if path.name == DEFAULT_MANIFEST:
            raise FileNotFoundError(
                f"{path}: the default manifest is missing; create the bundled sample with `make sample` "
                "(or `damage-smp synth sample`), or give your own with --manifest CSV"
            )
        if path.is_dir():
            raise FileNotFoundError(f"{path}: is a folder; give the manifest CSV file inside it")
        raise FileNotFoundError(
            f"{path}: manifest not found; check the path, or make one with `damage-smp manifest build`"
        )
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise ValueError(
            f"{path}: empty file; a manifest needs the header image,mask,split and one row per image"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({str(e).splitlines()[0]}); fix the file") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(df.columns)}); "
            "a manifest needs the header image,mask,split"
        )
    if df.empty:
        raise ValueError(f"{path}: has a header but no rows; add one row per image (image,mask,split)")
    df = df.apply(lambda col: col.str.strip())
    df["split"] = df["split"].str.lower()
    for col in ("image", "mask"):
        blank = np.flatnonzero(df[col] == "")
        if len(blank):
            raise ValueError(
                f"{path}: {len(blank)} row(s) with an empty {col} cell (first on line {blank[0] + 2}); "
                f"every row needs an image and its mask"
            )
    base = os.path.abspath(path.parent)
    df["image_path"] = [_absolute(base, p) for p in df["image"]]
    df["mask_path"] = [_absolute(base, p) for p in df["mask"]]
    df.attrs["manifest"] = str(path)
    df.attrs["group_columns"] = [c for c in df.columns if c not in (*REQUIRED_COLUMNS, "image_path", "mask_path")]
    return df


def _absolute(base: str, rel: str) -> str:
    if os.sep == "/":
        rel = rel.replace("\\", "/")  # a manifest written on Windows
    return os.path.normpath(os.path.join(base, rel))


def group_columns(df: pd.DataFrame) -> list[str]:
    """The manifest's extra columns (material, content, ...) that name groups of images."""
    known = (*REQUIRED_COLUMNS, "image_path", "mask_path")
    return list(df.attrs.get("group_columns", [c for c in df.columns if c not in known]))


def split_rows(df: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows of one split, re-indexed 0..n-1 (position == index); their files must exist."""
    where = df.attrs.get("manifest", "the manifest")
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: unknown split; choose one of {', '.join(SPLITS)}")
    rows = df[df["split"] == split].reset_index(drop=True)
    rows.attrs = dict(df.attrs)
    if rows.empty:
        raise ValueError(
            f"{where}: the {split!r} split has no rows; assign some with `damage-smp manifest split` "
            "or edit the split column"
        )
    missing = [p for p in (*rows["image_path"], *rows["mask_path"]) if not os.path.isfile(p)]
    if missing:
        hint = (
            "run `make sample` (or `damage-smp synth sample`)"
            if Path(where).name == DEFAULT_MANIFEST
            else f"fix the paths (relative to the CSV's folder) or run `damage-smp manifest check {where}`"
        )
        raise FileNotFoundError(
            f"{where}: {len(missing)} file(s) of the {split!r} split do not exist (first: {missing[0]}); {hint}"
        )
    return rows


# ============================================================================================ audit
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
    df = _read_manifest(path)
    report = AuditReport(manifest=str(path), class_names=scheme.names)
    problems: dict[str, list[str]] = defaultdict(list)  # kind -> messages, in row order
    valid = df["split"].isin(SPLITS)

    for split in sorted(set(df["split"][~valid])):
        lines = np.flatnonzero(df["split"] == split) + 2
        problems["split"].append(
            f"unknown split name {split!r} on {len(lines)} row(s) (first on line {lines[0]}); use {', '.join(SPLITS)}"
        )
    dupes = df[df.duplicated("image_path", keep=False)].groupby("image_path", sort=False)
    for _, rows in dupes:
        splits = sorted(set(rows["split"]))
        leak = f" in splits {' and '.join(splits)} (leakage between splits)" if len(splits) > 1 else ""
        problems["duplicate"].append(
            f"{rows['image'].iloc[0]}: listed {len(rows)} times (lines {', '.join(str(i + 2) for i in rows.index)})"
            f"{leak}; keep one row per image"
        )

    first = ~df.duplicated("image_path")
    todo = [(i, r.image_path, r.mask_path) for i, r in zip(df.index, df.itertuples(), strict=True) if first[i]]
    results = run_with_progress(todo, lambda t: _check_row(*t[1:], scheme, max_pixels), workers, "checking")
    unknown: dict[str, list] = {}  # value -> [pixels, masks, first mask]
    counts = {s: np.zeros(scheme.num_classes + 1, np.int64) for s in SPLITS}
    report.images = dict.fromkeys(SPLITS, 0)
    for (i, _, _), (row_problems, row_counts, row_unknown) in zip(todo, results, strict=True):
        for kind, msg in row_problems:
            problems[kind].append(msg)
        for value, px in row_unknown.items():
            entry = unknown.setdefault(value, [0, 0, df.at[i, "mask"]])
            entry[0] += px
            entry[1] += 1
        if row_counts is not None and valid[i]:
            counts[df.at[i, "split"]] += row_counts
            report.images[df.at[i, "split"]] += 1
    if unknown:
        problems["values"] += _describe_unknown(unknown, scheme)
    if problems.get("missing") and Path(path).name == DEFAULT_MANIFEST:
        problems["missing"].insert(0, "the bundled sample is missing: run `make sample` (or `damage-smp synth sample`)")
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
    report.group_values = {c: df[c].nunique() for c in group_columns(df)}
    for kind in ("split", "empty", "duplicate", "missing", "unreadable", "size", "values"):
        msgs = problems.get(kind, [])
        report.errors += msgs[:_SHOWN] + (
            [f"... and {len(msgs) - _SHOWN} more like these"] if len(msgs) > _SHOWN else []
        )
    msgs = problems.get("truncated?", [])
    report.warnings += msgs[:_SHOWN] + ([f"... and {len(msgs) - _SHOWN} more"] if len(msgs) > _SHOWN else [])
    return report


def _check_row(image: str, mask: str, scheme: LabelScheme, max_pixels: int):
    """-> (problems [(kind, message)], class counts (C+1,) or None, unknown values {value: pixels})."""
    problems, counts, unknown, size = [], None, {}, None
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
            index = scheme.decode(raw)
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
    return problems, counts, unknown


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
        msgs.insert(0, f"{len(unknown)} unknown mask colours/values: masks saved as JPEG or resized with smoothing?")
    return msgs


def run_with_progress(items: list, fn, workers: int, what: str) -> list:
    """fn over items in a small thread pool (decoders release the GIL), in order, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(f"{what}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar, ThreadPoolExecutor(max(1, workers)) as pool:
        task = bar.add_task(what, total=len(items))
        out = []
        for result in pool.map(fn, items):
            out.append(result)
            bar.advance(task)
    return out


def print_audit(report: AuditReport, console) -> None:
    """One summary: a classes x splits table of pixel shares (%), then errors and warnings."""
    from rich.table import Table

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
    for msg in report.errors:
        console.print(f"[bold red]error:[/] {_escape(msg)}", soft_wrap=True)
    for msg in report.warnings:
        console.print(f"[yellow]warning:[/] {_escape(msg)}", soft_wrap=True)
    verdict = f"[bold red]{len(report.errors)} error(s)[/]" if report.errors else "[green]no errors[/]"
    console.print(f"{verdict}, {len(report.warnings)} warning(s)")


def _percent(p: float) -> str:
    return "–" if p == 0 else "<0.01%" if p < 0.01 else f"{p:.2f}%"


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


# ============================================================================================ splitting
def assign_splits(
    n: int, groups: np.ndarray | None, val: float, test: float, seed: int
) -> tuple[np.ndarray, list[str]]:
    """Split names for n items: at random, or by group so that no group spans two splits.

    Fractions count images. Groups are shuffled with the seed and each goes to the split furthest below its
    target, so a seed always gives the same split. Returns (splits, warnings).
    """
    _check_fractions(val, test)
    rng = np.random.default_rng(seed)
    fractions = {"train": 1 - val - test, "val": val, "test": test}
    if groups is None:
        order = rng.permutation(n)
        quota = {s: (max(1, round(n * f)) if f > 0 else 0) for s, f in fractions.items() if s != "train"}
        while n - sum(quota.values()) < 1 and sum(quota.values()):
            quota[max(quota, key=quota.get)] -= 1  # train keeps at least one image
        out = np.full(n, "train", dtype=object)
        out[order[: quota["test"]]] = "test"
        out[order[quota["test"] : quota["test"] + quota["val"]]] = "val"
        return out, []
    names, inverse, sizes = np.unique(np.asarray(groups, dtype=str), return_inverse=True, return_counts=True)
    wanted = [s for s in SPLITS if fractions[s] > 0]
    filled = dict.fromkeys(SPLITS, 0)
    members: dict[str, list[int]] = {s: [] for s in SPLITS}
    for g in rng.permutation(len(names)):
        split = max(wanted, key=lambda s: fractions[s] * n - filled[s])
        members[split].append(int(g))
        filled[split] += int(sizes[g])
    for split in ("test", "val"):  # a wanted split left empty takes train's smallest group
        if split in wanted and not members[split] and len(members["train"]) > 1:
            g = min(members["train"], key=lambda k: sizes[k])
            members["train"].remove(g)
            members[split].append(g)
    split_of = np.empty(len(names), dtype=object)
    for split, gs in members.items():
        split_of[gs] = split
    warnings = [
        f"the {s!r} split is empty: {len(names)} group(s) cannot fill {len(wanted)} splits"
        for s in wanted
        if not members[s]
    ]
    return split_of[inverse], warnings


def _check_fractions(val: float, test: float) -> None:
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"--val {val} --test {test}: each must be in [0, 1) and together below 1")


def _leave_out_splits(
    groups: np.ndarray, held_out: str, val: float, seed: int, column: str
) -> tuple[np.ndarray, list[str]]:
    """Held-out group -> test; the other groups whole into train/val (val = fraction of the rest)."""
    groups = np.asarray(groups, dtype=str)
    test = groups == held_out
    rest = groups[~test]
    out = np.full(len(groups), "test", dtype=object)
    warnings = []
    if len(np.unique(rest)) >= 2 or val == 0:
        out[~test], warnings = assign_splits(len(rest), rest, val, 0.0, seed)
    else:
        out[~test], _ = assign_splits(len(rest), None, val, 0.0, seed)
        warnings.append(
            f"{column}={held_out}: only one other group, so val was drawn at random from it (not group-held-out)"
        )
    return out, warnings


def _match_value(values: pd.Series, wanted: str, column: str) -> str:
    present = sorted(set(values))
    if wanted in present:
        return wanted
    folded = [v for v in present if v.casefold() == wanted.casefold()]
    if len(folded) == 1:
        return folded[0]
    shown = ", ".join(repr(v) for v in present[:20]) + (" ..." if len(present) > 20 else "")
    raise ValueError(f"--leave-out {column}={wanted}: no such value in column {column!r}; values: {shown}")


def _parse_leave_out(spec: str, columns: list[str], by: str | None) -> tuple[str, str]:
    """'COLUMN=VALUE' or 'VALUE' (with --by COLUMN) -> (column, value)."""
    if "=" in spec and spec.split("=", 1)[0].strip() in columns:
        column, value = spec.split("=", 1)
        return column.strip(), value.strip()
    if by is None:
        raise ValueError(
            f"--leave-out {spec!r}: say which column, as COLUMN=VALUE (columns: {', '.join(columns) or 'none'})"
        )
    return by, spec.strip()


def slugify(value: str) -> str:
    """A group value -> a safe file-name part ('Photographic depiction' -> 'photographic-depiction')."""
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-") or "blank"


def split_manifest(
    csv: str | Path,
    out: str | Path,
    *,
    by: str | None = None,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    leave_out: str | None = None,
    folds: bool = False,
    overwrite: bool = False,
) -> list[pd.DataFrame]:
    """Re-split a manifest: random; grouped ``by`` a column; one group held out; or one fold per group value.

    ``folds`` writes ``OUT/fold-<value>.csv`` for every value of ``by``, each holding that value out as test.
    Returns the written manifests (attrs: manifest, warnings). Never overwrites without ``overwrite``.
    """
    df = _read_manifest(csv)
    columns = group_columns(df)
    if by is not None and by not in columns:
        raise ValueError(f"--by {by!r}: not a group column of {csv} (group columns: {', '.join(columns) or 'none'})")
    _check_fractions(val, test)
    out = Path(out)
    plans: list[tuple[Path, np.ndarray, list[str]]] = []
    if folds:
        if by is None or leave_out is not None:
            raise ValueError("--folds needs --by COLUMN (and no --leave-out): one fold per value of that column")
        if out.suffix.lower() == ".csv":
            raise ValueError(f"--out {out}: with --folds, give a folder; it receives one fold-<value>.csv per value")
        values = sorted(set(df[by]))
        if len(values) < 2:
            raise ValueError(f"--folds --by {by}: the column has {len(values)} value(s); folds need at least 2")
        slugs = _unique_slugs(values)
        for value, slug in zip(values, slugs, strict=True):
            splits, warns = _leave_out_splits(df[by].to_numpy(), value, val, seed, by)
            plans.append((out / f"fold-{slug}.csv", splits, warns))
    elif leave_out is not None:
        column, value = _parse_leave_out(leave_out, columns, by)
        value = _match_value(df[column], value, column)
        splits, warns = _leave_out_splits(df[column].to_numpy(), value, val, seed, column)
        plans.append((out, splits, warns))
    else:
        splits, warns = assign_splits(len(df), None if by is None else df[by].to_numpy(), val, test, seed)
        plans.append((out, splits, warns))
    _refuse_overwrite([p for p, _, _ in plans], overwrite)
    written = []
    for path, splits, warns in plans:
        new = df.assign(split=splits)
        written.append(_write_manifest(new, path, warns))
    return written


def _unique_slugs(values: list[str]) -> list[str]:
    slugs, seen = [], defaultdict(int)
    for v in values:
        s = slugify(v)
        seen[s] += 1
        slugs.append(s if seen[s] == 1 else f"{s}-{seen[s]}")
    return slugs


def _refuse_overwrite(paths: list[Path], overwrite: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]}: already exists{more}; pass --overwrite to replace it")


def _write_manifest(df: pd.DataFrame, path: Path, warnings: list[str]) -> pd.DataFrame:
    """Write image,mask,split,[groups] with paths relative to the new CSV's folder (atomically)."""
    base = os.path.abspath(path.parent)
    out = df[["image_path", "mask_path", "split", *group_columns(df)]].copy()
    out.insert(0, "image", [_relative(p, base) for p in out.pop("image_path")])
    out.insert(1, "mask", [_relative(p, base) for p in out.pop("mask_path")])
    atomic_write_bytes(path, out.to_csv(index=False, lineterminator="\n").encode("utf-8"))
    written = _read_manifest(path)
    written.attrs["warnings"] = list(warnings)
    return written


def _relative(path: str, base: str) -> str:
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:  # another drive on Windows
        return Path(path).as_posix()


def summarize(df: pd.DataFrame) -> str:
    """'train 8 · val 2 · test 2 images' plus group counts per split when the manifest has groups."""
    counts = df["split"].value_counts()
    text = " · ".join(f"{s} {counts.get(s, 0)}" for s in SPLITS) + " images"
    for col in group_columns(df):
        per = df.groupby("split")[col].nunique()
        text += f"; {col}: " + " · ".join(f"{s} {per.get(s, 0)}" for s in SPLITS)
    return text


# ============================================================================================ building
def build_manifest(
    images_dir: str | Path,
    masks_dir: str | Path,
    out_csv: str | Path,
    scheme: LabelScheme | None = None,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    group_by: str | None = None,
    leave_out: str | None = None,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> pd.DataFrame:
    """Pair images with masks by relative stem, split them, write the CSV. Returns it (attrs: warnings).

    Mask stems may carry a suffix (``_mask``, ``_label``, ``-gt`` ...). ``group_by`` is a regex searched in
    each image's path relative to ``images_dir`` without its extension (``^([^/]+)/`` = first subfolder,
    ``(.+)_\\d+$`` = stem before a trailing number); its first group (or the whole match) names the image's
    group, written as a ``group`` column, and no group spans two splits. ``leave_out`` puts one group in test.
    With ``scheme``, the first masks are decoded as a quick check (``manifest check`` audits all of them).
    """
    images_dir, masks_dir, out_csv = Path(images_dir), Path(masks_dir), Path(out_csv)
    for flag, folder in (("--images", images_dir), ("--masks", masks_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{flag} {folder}: folder not found; check the path")
    _refuse_overwrite([out_csv], overwrite)
    _check_fractions(val, test)
    pairs, warnings = pair_files(images_dir, masks_dir)
    rels = [key for key, _, _ in pairs]
    groups = None
    if group_by is not None:
        groups = _groups_from_regex(group_by, rels)
    elif leave_out is not None:
        raise ValueError("--leave-out needs --group-by REGEX, which says what the groups are")
    if leave_out is not None:
        value = leave_out.split("=", 1)[1] if leave_out.startswith("group=") else leave_out
        value = _match_value(pd.Series(groups), value.strip(), "group")
        splits, warns = _leave_out_splits(groups, value, val, seed, "group")
    else:
        splits, warns = assign_splits(len(pairs), groups, val, test, seed)
    warnings += warns
    if scheme is not None:
        warnings += _spot_check_masks([m for _, _, m in pairs[:3]], scheme, max_pixels)
    df = pd.DataFrame(
        {
            "image_path": [os.path.abspath(i) for _, i, _ in pairs],
            "mask_path": [os.path.abspath(m) for _, _, m in pairs],
            "split": splits,
        }
    )
    if groups is not None:
        df["group"] = groups
    df.attrs["group_columns"] = ["group"] if groups is not None else []
    return _write_manifest(df, out_csv, warnings)


def pair_files(images_dir: Path, masks_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """(relative stem, image, mask) pairs sorted by stem, plus warnings about unpaired or ambiguous files."""
    images_dir, masks_dir = images_dir.resolve(), masks_dir.resolve()
    image_files, mask_files = _list(images_dir), _list(masks_dir)
    if images_dir != masks_dir:  # one folder nested in the other: each keeps only its own files
        if masks_dir.is_relative_to(images_dir):
            image_files = [p for p in image_files if not p.is_relative_to(masks_dir)]
        if images_dir.is_relative_to(masks_dir):
            mask_files = [p for p in mask_files if not p.is_relative_to(images_dir)]
    else:  # one folder: a.png + a_mask.png
        mask_files = [p for p in mask_files if MASK_SUFFIX.search(p.stem)]
        image_files = [p for p in image_files if not MASK_SUFFIX.search(p.stem)]
    if not image_files:
        raise ValueError(f"--images {images_dir}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    if not mask_files:
        raise ValueError(f"--masks {masks_dir}: no mask files ({', '.join(IMAGE_SUFFIXES)}) found")
    images = _by_key(image_files, images_dir, strip_suffix=False)
    masks = _by_key(mask_files, masks_dir, strip_suffix=True)
    warnings = [
        f"{len(v)} files share the stem {k!r} ({', '.join(p.name for p in v)}); skipped, keep one"
        for d in (images, masks)
        for k, v in d.items()
        if len(v) > 1
    ]
    # a mask folder may be flat while images sit in subfolders: fall back to the bare stem when unique
    mask_by_name = defaultdict(list)
    for k in masks:
        mask_by_name[k.rsplit("/", 1)[-1]].append(k)
    pairs, used, paired = [], set(), set()
    for key, found in sorted(images.items()):
        name = key.rsplit("/", 1)[-1]
        mkey = key if key in masks else (mask_by_name[name][0] if len(mask_by_name.get(name, [])) == 1 else None)
        if mkey is not None:
            paired.add(key)  # ambiguous ones are reported above, not as unpaired
        if mkey is None or mkey in used or len(found) > 1 or len(masks[mkey]) > 1:
            continue
        used.add(mkey)
        pairs.append((found[0].relative_to(images_dir).with_suffix("").as_posix(), found[0], masks[mkey][0]))
    lone = {
        "image(s) without a mask": (
            [v[0] for k, v in sorted(images.items()) if len(v) == 1 and k not in paired],
            images_dir,
        ),
        "mask(s) without an image": (
            [v[0] for k, v in sorted(masks.items()) if len(v) == 1 and k not in used],
            masks_dir,
        ),
    }
    for what, (files, root) in lone.items():
        if files:
            shown = ", ".join(p.relative_to(root).as_posix() for p in files[:_SHOWN])
            warnings.append(f"{len(files)} {what} skipped: {shown}{' ...' if len(files) > _SHOWN else ''}")
    if not pairs:
        raise ValueError(
            f"no image in {images_dir} has a mask in {masks_dir} with the same name (e.g. image "
            f"{image_files[0].relative_to(images_dir).as_posix()}, "
            f"mask {mask_files[0].relative_to(masks_dir).as_posix()}); "
            "name masks after their images, optionally with a suffix such as _mask or _label"
        )
    return pairs, warnings


def _list(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _by_key(files: list[Path], root: Path, strip_suffix: bool) -> dict[str, list[Path]]:
    """Relative path without extension, lower case (mask suffixes removed) -> files."""
    out = defaultdict(list)
    for p in files:
        rel = p.relative_to(root).with_suffix("")
        stem = MASK_SUFFIX.sub("", rel.name) if strip_suffix else rel.name
        out[rel.with_name(stem or rel.name).as_posix().lower()].append(p)
    return out


def _groups_from_regex(pattern: str, rels: list[str]) -> np.ndarray:
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"--group-by {pattern!r}: not a valid regular expression ({e})") from None
    groups, unmatched = [], []
    for rel in rels:
        m = regex.search(rel)
        if m is None:
            unmatched.append(rel)
            continue
        groups.append(next((g for g in m.groups() if g is not None), m.group(0)))
    if unmatched:
        raise ValueError(
            f"--group-by {pattern!r}: does not match {len(unmatched)} image path(s), e.g. {unmatched[0]!r}; "
            "it is searched in each path relative to --images, without extension"
        )
    return np.asarray(groups, dtype=str)


def _spot_check_masks(masks: list[Path], scheme: LabelScheme, max_pixels: int) -> list[str]:
    for mask in masks:
        try:
            count_classes(mask, scheme, max_pixels)
        except ValueError as e:
            return [str(e)]
    return []
