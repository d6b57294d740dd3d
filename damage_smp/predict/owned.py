"""What in an output folder predict wrote itself: only those files are skipped, resumed or replaced.

Every image file predict writes carries a mark (a PNG text chunk, a JPEG comment, a TIFF's Software tag:
"written by damage-smp predict"), so its own files are known even when a kill left an image half done. Each image's
``<name>_areas.json`` is its record, written last: the areas and every output's byte size. An output is finished
when the record lists it at its size on disk, so a 0-byte or replaced file is never taken for a prediction. The
batch files (predict.json, legend.png, areas.csv, failures.csv, the shard tables) are ours when the folder's
predict.json is.

A file at a path predict would write that is none of these (e.g. the user's own ``areas.csv`` or ``x_mask.png``)
is refused before anything is written, even with ``--overwrite``; an empty (0-byte) file holds nothing to keep.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..images import TEMP_FILE
from ..rundir import MARKERS
from .inputs import BIG_SUFFIXES, SUFFIXES, Job

WRITTEN_BY = "damage-smp predict"  # in every per-image record: what tells our records from a user's JSON
MARK = b"written by damage-smp predict"  # in every image predict writes
MARK_WITHIN = 4096  # bytes from a file's start the mark is looked for in (it sits right after the headers)
PNG_IHDR_END = 8 + 25  # signature, then IHDR (length, type, 13 bytes, CRC): always the first chunk
BATCH_FILES = (MARKERS["predict"], "legend.png", "areas.csv", "failures.csv")
SHARD_FILE = re.compile(r"^(areas|failures)\.shard-\d+-of-\d+\.csv$")
STALE_TEMP_SECONDS = 600  # a live write keeps its temp file for seconds; one this old was left by a kill


def read_record(job: Job) -> dict | None:
    """This image's record when predict wrote it, else None (missing, empty, foreign)."""
    data = _read_json(job.output("areas"))
    return data if data is not None and data.get("written_by") == WRITTEN_BY else None


def is_final(record: dict | None) -> bool:
    return record is not None and "pixels" in record


def recorded(job: Job, record: dict | None, kind: str) -> bool:
    """The final record lists this output at the size it has on disk (so it is whole and still ours)."""
    return recorded_file(job, record, kind) is not None


def recorded_file(job: Job, record: dict | None, kind: str) -> Path | None:
    """The file the record lists for this output (a confidence map's PNG or TIFF), when it has that size on disk."""
    entry = (record or {}).get("outputs", {}).get(kind)
    if not isinstance(entry, dict):
        return None
    size = entry.get("bytes")
    path = next((p for p in job.candidates(kind) if p.name == entry.get("file")), job.output(kind))
    return path if isinstance(size, int) and size > 0 and _size(path) == size else None


def is_finished(job: Job, record: dict | None, kinds: Sequence[str]) -> bool:
    """``record`` (the job's ``read_record``) is final and lists every requested output at its size on disk."""
    return is_final(record) and all(recorded(job, record, k) for k in kinds)


def is_ours(job: Job, record: dict | None, kind: str, path: Path | None = None) -> bool:
    """This output of the job (``path``, default ``job.output(kind)``; it exists) was written by predict:
    listed in the record, or marked."""
    if kind == "areas":
        return record is not None
    path = path or job.output(kind)
    return recorded_file(job, record, kind) == path or carries_mark(path)


def owned_file(job: Job, record: dict | None, kind: str) -> Path | None:
    """The file of this output that exists and is predict's (the PNG or the TIFF of a confidence map), or None."""
    return next((p for p in job.candidates(kind) if p.is_file() and is_ours(job, record, kind, p)), None)


def output_entry(job: Job, kind: str, path: Path | None = None) -> dict:
    path = path or job.output(kind)
    return {"file": path.name, "bytes": _size(path)}


def marked(data: bytes, suffix: str, mark: bytes = MARK) -> bytes:
    """Encoded PNG or JPEG bytes with the mark inserted (a tEXt chunk after IHDR; a comment after SOI/APP0)."""
    if suffix.lower() == ".png":
        body = b"tEXt" + b"Software\x00" + mark
        chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        return data[:PNG_IHDR_END] + chunk + data[PNG_IHDR_END:]
    at = 2 + (2 + int.from_bytes(data[4:6], "big") if data[2:4] == b"\xff\xe0" else 0)  # JFIF's APP0 stays first
    return data[:at] + b"\xff\xfe" + struct.pack(">H", len(mark) + 2) + mark + data[at:]


def carries_mark(path: Path, mark: bytes = MARK) -> bool:
    try:
        with open(path, "rb") as f:
            return mark in f.read(MARK_WITHIN)
    except OSError:
        return False


def predict_json_is_ours(out: Path) -> bool:
    data = _read_json(out / MARKERS["predict"])
    return data is not None and "run_dir" in data and "label_scheme" in data


def check_nothing_foreign(
    out: Path, jobs: Sequence[Job], records: Sequence[dict | None], kinds: Sequence[str], tables: Iterable[Path]
) -> None:
    """Refuse when a file predict would write exists and predict did not write it, naming the file and the fix.

    ``records``: each job's ``read_record``; ``kinds``: the outputs requested; ``tables``: this shard's tables.
    """
    foreign = foreign_batch_files(out, [*(out / name for name in BATCH_FILES), *tables])
    for job, record in zip(jobs, records, strict=True):
        paths = [(k, path) for k in (*kinds, "areas") for path in job.candidates(k)]
        foreign += [path for k, path in paths if _holds_something(path) and not is_ours(job, record, k, path)]
    refuse_foreign(foreign)


def foreign_batch_files(out: Path, paths: Iterable[Path]) -> list[Path]:
    """Those of ``paths`` that hold something while ``out`` has no predict.json of ours (so they are not ours)."""
    return [] if predict_json_is_ours(out) else [p for p in paths if _holds_something(p)]


def refuse_foreign(foreign: Sequence[Path], fix: str = "give another --out, or move the file away") -> None:
    foreign = list(dict.fromkeys(foreign))
    if foreign:
        more = f" (and {len(foreign) - 1} more such file(s))" if len(foreign) > 1 else ""
        raise FileExistsError(
            f"{foreign[0]}: exists and was not written by damage-smp predict{more}; predict never replaces it "
            f"(not even with --overwrite): {fix}"
        )


def clean_stale_temps(folders: Iterable[Path], now: float | None = None) -> int:
    """Remove temp files of our naming, for our output names, left by a killed predict -> how many went."""
    now = time.time() if now is None else now
    removed = 0
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:  # not made yet
            continue
        for entry in entries:
            m = TEMP_FILE.match(entry.name)
            if m and _our_name(m["name"]) and entry.is_file(follow_symlinks=False):
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS:
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
    return removed


def _our_name(name: str) -> bool:
    ours = (*SUFFIXES.values(), *BIG_SUFFIXES.values())
    return name in BATCH_FILES or bool(SHARD_FILE.match(name)) or name.endswith(ours)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _holds_something(path: Path) -> bool:
    """Anything but an empty file (0 bytes holds nothing to keep) or nothing at all; a folder counts."""
    if path.is_file():
        return _size(path) > 0
    return path.exists() or path.is_symlink()
