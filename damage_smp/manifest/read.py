"""The manifest CSV: read and validate it, resolve its paths, select a split, and write one back.

Paths in the CSV are relative to its folder; in memory they are absolute (``image_path``, ``mask_path``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..images import atomic_write_bytes

SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("image", "mask", "split")
DEFAULT_MANIFEST = "data_manifest.csv"


def load_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a manifest; adds absolute ``image_path``/``mask_path``; attrs: manifest, group_columns."""
    df = read_manifest(path)
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        first = int(np.flatnonzero(~df["split"].isin(SPLITS))[0])
        raise ValueError(
            f"{path}: unknown split name(s) {bad} (first on line {first + 2}); "
            f"use {', '.join(SPLITS)} in the split column"
        )
    return df


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest without judging its split names (the audit reports those itself)."""
    path = Path(path)
    df = _read_csv(path)
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
    df["image_path"] = [_absolute(base, p) for p in df["image"].tolist()]  # lists: 100k rows in a blink
    df["mask_path"] = [_absolute(base, p) for p in df["mask"].tolist()]
    df.attrs["manifest"] = str(path)
    df.attrs["group_columns"] = [c for c in df.columns if c not in (*REQUIRED_COLUMNS, "image_path", "mask_path")]
    return df


def _read_csv(path: Path) -> pd.DataFrame:
    """The CSV as strings, or an error that says what is wrong with the file and how to get a good one."""
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
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise ValueError(
            f"{path}: empty file; a manifest needs the header image,mask,split and one row per image"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({str(e).splitlines()[0]}); fix the file") from None


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


def summarize(df: pd.DataFrame) -> str:
    """'train 8 · val 2 · test 2 images' plus group counts per split when the manifest has groups."""
    counts = df["split"].value_counts()
    text = " · ".join(f"{s} {counts.get(s, 0)}" for s in SPLITS) + " images"
    for col in group_columns(df):
        per = df.groupby("split")[col].nunique()
        text += f"; {col}: " + " · ".join(f"{s} {per.get(s, 0)}" for s in SPLITS)
    return text


# ============================================================================================ writing
def refuse_overwrite(paths: list[Path], overwrite: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]}: already exists{more}; pass --overwrite to replace it")


def write_manifest(df: pd.DataFrame, path: Path, warnings: list[str]) -> pd.DataFrame:
    """Write image,mask,split,[groups] with paths relative to the new CSV's folder (atomically).

    Returns the written CSV as read back, with ``warnings`` in its attrs.
    """
    base = os.path.abspath(path.parent)
    out = df[["image_path", "mask_path", "split", *group_columns(df)]].copy()
    out.insert(0, "image", [_relative(p, base) for p in out.pop("image_path")])
    out.insert(1, "mask", [_relative(p, base) for p in out.pop("mask_path")])
    atomic_write_bytes(path, out.to_csv(index=False, lineterminator="\n").encode("utf-8"))
    written = read_manifest(path)
    written.attrs["warnings"] = list(warnings)
    return written


def _relative(path: str, base: str) -> str:
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:  # another drive on Windows
        return Path(path).as_posix()
