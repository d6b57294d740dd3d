"""``manifest merge``: several manifests into one, their relative paths rebased to the new CSV's folder.

Each input's paths are resolved against its own folder and written relative to the output's, so manifests
from different folders combine. Refused: inputs with different group columns (a merged column would be blank
for some rows), and an image listed twice (the same file, after resolving links and ``..``), which would leak
between splits or count twice.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .audit import SHOWN
from .read import group_columns, read_manifest, refuse_overwrite, write_manifest


def merge_manifests(inputs: list[str | Path], out: str | Path, overwrite: bool = False) -> pd.DataFrame:
    """Concatenate manifests (same columns, no shared image) into ``out``; returns it as written."""
    paths, out = [Path(p) for p in inputs], Path(out)
    if len(paths) < 2:
        raise ValueError(
            "manifest merge needs at least two manifests: damage-smp manifest merge A.csv B.csv --out C.csv"
        )
    if any(_same(path, out) for path in paths):
        raise ValueError(
            f"--out {out}: is one of the inputs; `manifest merge` never rewrites an input, give a new --out"
        )
    for k, path in enumerate(paths):
        if any(_same(path, other) for other in paths[:k]):
            raise ValueError(f"{path}: given twice; name each manifest once")
    refuse_overwrite([out], overwrite)
    frames = [read_manifest(p) for p in paths]
    columns = group_columns(frames[0])
    for path, df in zip(paths[1:], frames[1:], strict=True):
        if sorted(group_columns(df)) != sorted(columns):
            raise ValueError(
                f"{paths[0]} has the columns {_columns(columns)} but {path} has {_columns(group_columns(df))}; "
                "merge manifests with the same columns (add or drop a column in one of them first)"
            )
    for path, df in zip(paths, frames, strict=True):
        df["_source"] = [f"{path} line {i + 2}" for i in range(len(df))]
    merged = pd.concat(frames, ignore_index=True)
    _refuse_duplicates(merged)
    merged.attrs["group_columns"] = columns
    return write_manifest(merged.drop(columns="_source"), out, [])


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def _columns(columns: list[str]) -> str:
    return ",".join(["image", "mask", "split", *columns])


def _refuse_duplicates(merged: pd.DataFrame) -> None:
    """An image (its resolved file) in two rows: refused, naming both rows."""
    real = pd.Series([os.path.realpath(p) for p in merged["image_path"].tolist()])
    dupes = real[real.duplicated(keep=False)]
    if dupes.empty:
        return
    groups = list(dupes.groupby(dupes, sort=False).indices.values())
    rows = [merged.at[dupes.index[i], "_source"] for i in groups[0]]
    more = f" (and {len(groups) - 1} more image(s) like it)" if len(groups) > 1 else ""
    raise ValueError(
        f"image {real[dupes.index[groups[0][0]]]} is listed in {' and in '.join(rows[:SHOWN])}{more}; "
        "each image may appear once: drop the duplicate rows from one manifest, then merge"
    )
