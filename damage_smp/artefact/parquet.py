"""Reading ARTeFACT's parquet shards: find them, check their columns, index and stream rows one at a time."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_COLUMNS = ("id", "image", "annotation")
GROUP_COLUMNS = ("material", "content", "type")


@dataclass(frozen=True)
class ScanRow:
    """One parquet row, known from its cheap columns before any image bytes are read."""

    id: str
    name: str  # safe, unique file stem
    source: Path
    index: int  # row number within its file
    groups: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- the verb
def find_parquet_files(inputs: list[Path]) -> list[Path]:
    """Parquet files named directly or found (recursively, hidden folders skipped) under named folders."""
    if not inputs:
        raise ValueError("no input given; pass ARTeFACT .parquet files or a folder holding them")
    files: list[Path] = []
    for p in map(Path, inputs):
        if not p.exists():
            raise FileNotFoundError(f"{p}: not found; pass ARTeFACT .parquet files or a folder holding them")
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*.parquet")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not found:
                raise ValueError(
                    f"{p}: no .parquet files in this folder (searched recursively); download the shards "
                    "first, see docs/artefact.md"
                )
            files += found
        else:
            files.append(p)
    unique = {f.resolve(): f for f in files}  # a file named twice (directly and via its folder) counts once
    return list(unique.values())


def open_parquet(path: Path):
    """pyarrow ParquetFile, with a one-line error for files that are not parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable parquet file ({reason}); pass the ARTeFACT .parquet shards") from None


def check_columns(path: Path, schema) -> None:
    """Refuse a parquet file without ARTeFACT's columns, naming the missing ones."""
    import pyarrow as pa

    names = schema.names
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)} (it has {', '.join(names) or 'none'}); "
            "pass shards of the ARTeFACT dataset danielaivanova/damaged-media"
        )
    for name in ("image", "annotation"):
        t = schema.field(name).type
        ok = pa.types.is_binary(t) or pa.types.is_large_binary(t)
        ok = ok or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0)
        if not ok:
            raise ValueError(
                f"{path}: column {name!r} is {t}, not image bytes (a struct {{bytes, path}} or binary); "
                "pass shards of the ARTeFACT dataset danielaivanova/damaged-media"
            )


def index_rows(files: list[Path]) -> tuple[list[ScanRow], list[str], list[str]]:
    """Read only the cheap columns of every file: rows sorted by id, group columns present, duplicate notes.

    Sorting by id makes file names and the random split independent of how the data were sharded.
    """
    found: list[tuple[str, Path, int, dict]] = []
    group_cols: list[str] = []
    for path in files:
        with open_parquet(path) as pf:
            schema = pf.schema_arrow
            check_columns(path, schema)
            groups = [c for c in GROUP_COLUMNS if c in schema.names]
            group_cols += [c for c in groups if c not in group_cols]
            table = pf.read(columns=["id", *groups])
        ids = table.column("id").to_pylist()
        values = {c: table.column(c).to_pylist() for c in groups}
        for i, rid in enumerate(ids):
            rid = f"{path.stem}-{i}" if rid is None or str(rid).strip() == "" else str(rid)
            found.append((rid, path, i, {c: text_value(values[c][i]) for c in groups}))
    group_cols = [c for c in GROUP_COLUMNS if c in group_cols]
    found.sort(key=lambda r: r[0])  # stable: duplicates keep file order

    rows: list[ScanRow] = []
    seen: dict[str, Path] = {}
    used: set[str] = set()
    dupes: list[str] = []
    for rid, path, i, groups in found:
        if rid in seen:
            dupes.append(f"id {rid} appears in {seen[rid]} and {path} (row {i}); importing it once")
            continue
        seen[rid] = path
        name = unique_name(safe_name(rid), used)
        rows.append(ScanRow(rid, name, path, i, {c: groups.get(c, "") for c in group_cols}))
    return rows, group_cols, dupes


def safe_name(text: str) -> str:
    """An id -> a file stem safe on every file system (letters, digits, '.', '_', '-')."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return name[:120] or "row"


def unique_name(name: str, used: set[str]) -> str:
    """name, or name-2, name-3, ... if two ids sanitise to the same stem (case-insensitive file systems too)."""
    candidate, k = name, 1
    while candidate.lower() in used:
        k += 1
        candidate = f"{name}-{k}"
    used.add(candidate.lower())
    return candidate


def stream_rows(files: list[Path], wanted: set[tuple[Path, int]]):
    """Yield (file, row index, image bytes, annotation bytes) for the wanted rows, one row in memory at a time.

    Row groups without a wanted row are never read, so continuing an import costs little.
    """
    for path in files:
        with open_parquet(path) as pf:
            start = 0
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                todo = {i for i in range(start, start + n) if (path, i) in wanted}
                if todo:
                    batches = pf.iter_batches(batch_size=1, row_groups=[g], columns=["image", "annotation"])
                    i = start
                    for batch in batches:
                        for k in range(batch.num_rows):
                            if i in todo:
                                yield path, i, _bytes(batch, "image", k), _bytes(batch, "annotation", k)
                            i += 1
                start += n


def _bytes(batch, column: str, k: int) -> bytes | None:
    value = batch.column(column)[k].as_py()
    return value.get("bytes") if isinstance(value, dict) else value


# ------------------------------------------------------------------------------------------- outputs


def text_value(value) -> str:
    return "" if value is None else str(value).strip()
