"""Assigning splits: at random, grouped (no group spans two splits), one group held out, or one fold per group.

``split_manifest`` is what ``damage-smp manifest split`` runs; ``build_manifest`` uses the same assignment.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from .read import SPLITS, group_columns, read_manifest, refuse_overwrite, write_manifest


def assign_splits(
    n: int, groups: np.ndarray | None, val: float, test: float, seed: int
) -> tuple[np.ndarray, list[str]]:
    """Split names for n items: at random, or by group so that no group spans two splits.

    Fractions count images. Groups are shuffled with the seed and each goes to the split furthest below its
    target, so a seed always gives the same split. Returns (splits, warnings).
    """
    check_fractions(val, test)
    rng = np.random.default_rng(seed)
    fractions = {"train": 1 - val - test, "val": val, "test": test}
    if groups is None:
        return _random_splits(n, fractions, rng), []
    return _group_splits(n, groups, fractions, rng)


def _random_splits(n: int, fractions: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    order = rng.permutation(n)
    quota = {s: (max(1, round(n * f)) if f > 0 else 0) for s, f in fractions.items() if s != "train"}
    while n - sum(quota.values()) < 1 and sum(quota.values()):
        quota[max(quota, key=quota.get)] -= 1  # train keeps at least one image
    out = np.full(n, "train", dtype=object)
    out[order[: quota["test"]]] = "test"
    out[order[quota["test"] : quota["test"] + quota["val"]]] = "val"
    return out


def _group_splits(
    n: int, groups: np.ndarray, fractions: dict[str, float], rng: np.random.Generator
) -> tuple[np.ndarray, list[str]]:
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


def check_fractions(val: float, test: float) -> None:
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"--val {val} --test {test}: each must be in [0, 1) and together below 1")


def leave_out_splits(
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


def match_value(values: pd.Series, wanted: str, column: str) -> str:
    """``wanted`` as it is spelled in ``values`` (an unambiguous case-insensitive match counts)."""
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
    df = read_manifest(csv)
    columns = group_columns(df)
    if by is not None and by not in columns:
        raise ValueError(f"--by {by!r}: not a group column of {csv} (group columns: {', '.join(columns) or 'none'})")
    check_fractions(val, test)
    out = Path(out)
    if folds:
        plans = _fold_plans(df, out, by, leave_out, val, seed)
    elif leave_out is not None:
        column, value = _parse_leave_out(leave_out, columns, by)
        value = match_value(df[column], value, column)
        plans = [(out, *leave_out_splits(df[column].to_numpy(), value, val, seed, column))]
    else:
        plans = [(out, *assign_splits(len(df), None if by is None else df[by].to_numpy(), val, test, seed))]
    refuse_input_as_output(Path(csv), [p for p, _, _ in plans])
    refuse_overwrite([p for p, _, _ in plans], overwrite)
    return [write_manifest(df.assign(split=splits), path, warns) for path, splits, warns in plans]


def refuse_input_as_output(csv: Path, paths: list[Path]) -> None:
    """The input manifest is never rewritten (not even with --overwrite): a re-split is a new file."""
    for path in paths:
        if path.resolve() == csv.resolve() or (path.exists() and os.path.samefile(path, csv)):
            raise ValueError(
                f"--out {path}: is the input manifest {csv}; `manifest split` never modifies its input "
                "(not even with --overwrite): give another --out, e.g. "
                f"{csv.with_name(csv.stem + '-split' + csv.suffix)}"
            )


def _fold_plans(
    df: pd.DataFrame, out: Path, by: str | None, leave_out: str | None, val: float, seed: int
) -> list[tuple[Path, np.ndarray, list[str]]]:
    """(OUT/fold-<value>.csv, splits, warnings) for each value of ``by``, that value held out as test."""
    if by is None or leave_out is not None:
        raise ValueError("--folds needs --by COLUMN (and no --leave-out): one fold per value of that column")
    if out.suffix.lower() == ".csv":
        raise ValueError(f"--out {out}: with --folds, give a folder; it receives one fold-<value>.csv per value")
    values = sorted(set(df[by]))
    if len(values) < 2:
        raise ValueError(f"--folds --by {by}: the column has {len(values)} value(s); folds need at least 2")
    return [
        (out / f"fold-{slug}.csv", *leave_out_splits(df[by].to_numpy(), value, val, seed, by))
        for value, slug in zip(values, _unique_slugs(values), strict=True)
    ]


def _unique_slugs(values: list[str]) -> list[str]:
    slugs, seen = [], defaultdict(int)
    for v in values:
        s = slugify(v)
        seen[s] += 1
        slugs.append(s if seen[s] == 1 else f"{s}-{seen[s]}")
    return slugs
