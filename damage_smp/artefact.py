"""Import ARTeFACT (Ivanova et al., WACV 2025) from its Hugging Face parquet shards: images, index masks, manifest.

The dataset (``danielaivanova/damaged-media``) stores each scan as one parquet row: ``id``, ``image`` and
``annotation`` (HF ``Image`` features, i.e. structs ``{bytes, path}``), ``annotation_rgb``, the group columns
``material``, ``content``, ``type`` and free-text descriptions. ``annotation`` is a single-channel PNG: 0 Clean,
1–15 the damage classes in the ``artefact`` scheme's order, 255 Background.

What the import writes under ``OUT``::

  images/<id>.png|.jpg   the scan; copied byte for byte unless it is downscaled or EXIF-rotated (ids that are
                         not safe file names are sanitised: letters, digits, '.', '_', '-')
  masks/<id>.png         8-bit index mask, values exactly as in the annotation (0–15, 255)
  manifest.csv           image,mask,split,material,content,type (paths relative to OUT)
  import.json            the import's settings, warnings, failures and renamed ids; lets a re-run continue it

The shards are streamed one row at a time (never the whole dataset in memory). A re-run skips rows whose files
exist, so an interrupted import continues where it stopped. ARTeFACT has no official split: the manifest gets a
seeded random 70/15/15 split, to be replaced by a grouped one with ``damage-smp manifest split``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from rich.console import Console

from .console import escape, progress_bar
from .images import DEFAULT_MAX_PIXELS, atomic_write_bytes, write_image

REQUIRED_COLUMNS = ("id", "image", "annotation")
GROUP_COLUMNS = ("material", "content", "type")
MASK_VALUES = frozenset([*range(16), 255])  # ARTeFACT: 0 Clean, 1-15 damage, 255 Background
SPLIT_FRACTIONS = (("test", 0.15), ("val", 0.15))  # the rest is train
SPLITS = ("train", "val", "test")
JPEG_QUALITY = 95  # only for JPEG sources that must be re-encoded (downscaled or EXIF-rotated)
MIN_SIDE = 16
STATE_FILE = "import.json"
MANIFEST_FILE = "manifest.csv"
RESPLIT_HINT = (
    "ARTeFACT has no official split and random splits leak near-duplicates between train and test: "
    "re-split by group, e.g. damage-smp manifest split {manifest} --out {out} --by material"
)
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"


class ArtefactImportError(ValueError):
    """Some rows could not be imported; the others were, and the manifest lists them."""


@dataclass(frozen=True)
class ScanRow:
    """One parquet row, known from its cheap columns before any image bytes are read."""

    id: str
    name: str  # safe, unique file stem
    source: Path
    index: int  # row number within its file
    groups: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- the verb
def import_artefact(
    inputs: list[Path],
    out_dir: Path,
    max_side: int | None = None,
    overwrite: bool = False,
    max_pixels: int | None = None,
    seed: int = 0,
) -> Path:
    """Convert ARTeFACT parquet shards (files or folders, searched recursively) into ``out_dir``.

    ``max_pixels`` (default ``images.DEFAULT_MAX_PIXELS``, 200 MP) refuses larger scans before decoding them.
    Returns the manifest's path. Rows that fail (unreadable bytes, size mismatch, above ``max_pixels``) are
    reported and left out; after writing the manifest of the others, ``ArtefactImportError`` lists them.
    """
    max_pixels = check_size_limits(max_side, max_pixels)
    out_dir = Path(out_dir)
    files = find_parquet_files(inputs)
    rows, group_cols, dupes = index_rows(files)
    if not rows:
        raise ValueError(f"{', '.join(map(str, files))}: no rows in these parquet files; pass the ARTeFACT shards")
    previous = check_out_dir(out_dir, max_side, overwrite)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    for msg in dupes:
        console.print(f"[yellow]warning:[/] {escape(msg)}")
    splits = random_split(len(rows), seed)
    state = {
        "dataset": "ARTeFACT (danielaivanova/damaged-media)",
        "inputs": [str(f) for f in files],
        "max_side": max_side,
        "seed": seed,
        "rows": len(rows),
    }
    if overwrite or not (out_dir / STATE_FILE).is_file():  # marks the folder as an import from the start
        atomic_write_bytes(out_dir / STATE_FILE, _json(state))

    images, warnings, pending = sort_done(rows, out_dir, overwrite, previous)
    skipped = len(images)
    failures = import_pending(files, pending, out_dir, max_side, max_pixels, console, images, warnings)

    manifest = write_manifest(out_dir, rows, splits, images, group_cols)
    state |= {
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "imported": len(images),
        "warnings": warnings,
        "failures": failures,
        "renamed": {r.id: r.name for r in rows if r.name != r.id},  # ids that are not safe file stems
    }
    atomic_write_bytes(out_dir / STATE_FILE, _json(state))
    counts = {s: sum(r.name in images and x == s for r, x in zip(rows, splits, strict=True)) for s in SPLITS}
    Console(highlight=False, soft_wrap=True).print(
        f"imported {len(images)} of {len(rows)} scans into {escape(out_dir)} "
        f"({len(images) - skipped} new, {skipped} already there, {len(failures)} failed, "
        f"{len(warnings)} with warnings)\n"
        f"manifest {escape(manifest)}: {counts['train']} train / {counts['val']} val / "
        f"{counts['test']} test, random (seed {seed})\n"
        + escape(RESPLIT_HINT.format(manifest=manifest, out=out_dir / "manifest_by_material.csv"))
    )
    if failures:
        raise import_error(failures, len(rows), len(images), out_dir)
    return manifest


def check_size_limits(max_side: int | None, max_pixels: int | None) -> int:
    """Refuse a --max-side below MIN_SIDE or a --max-pixels below 1; returns max_pixels (None: the default)."""
    if max_side is not None and max_side < MIN_SIDE:
        raise ValueError(f"--max-side {max_side}: too small; give at least {MIN_SIDE} pixels, or leave it out")
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if max_pixels < 1:
        raise ValueError(f"--max-pixels {max_pixels}: must be positive")
    return max_pixels


def sort_done(
    rows: list[ScanRow], out_dir: Path, overwrite: bool, previous: dict
) -> tuple[dict[str, str], dict[str, str], dict[tuple[Path, int], ScanRow]]:
    """(images already written: name -> relative path, their earlier warnings, rows still to import)."""
    images: dict[str, str] = {}
    warnings: dict[str, str] = {}
    pending: dict[tuple[Path, int], ScanRow] = {}
    for row in rows:
        done = None if overwrite else existing_image(out_dir, row.name)
        if done is not None:
            images[row.name] = done
            if row.id in previous.get("warnings", {}):  # keep what the earlier run found
                warnings[row.id] = previous["warnings"][row.id]
        else:
            pending[(row.source, row.index)] = row
    return images, warnings, pending


def import_pending(
    files: list[Path],
    pending: dict[tuple[Path, int], ScanRow],
    out_dir: Path,
    max_side: int | None,
    max_pixels: int,
    console: Console,
    images: dict[str, str],
    warnings: dict[str, str],
) -> dict[str, str]:
    """Import the pending rows (adding to ``images`` and ``warnings``); returns id -> why it failed."""
    failures: dict[str, str] = {}
    with progress_bar(console, elapsed=False) as bar:
        task = bar.add_task("importing ARTeFACT", total=len(images) + len(pending), completed=len(images))
        for source, index, image, annotation in stream_rows(files, set(pending)):  # a copy: pending shrinks
            row = pending[(source, index)]
            try:
                images[row.name], warning = import_row(row, image, annotation, out_dir, max_side, max_pixels)
                if warning:
                    warnings[row.id] = warning
                    bar.console.print(f"[yellow]warning:[/] {escape(warning)}")
            except ValueError as e:
                failures[row.id] = str(e)
                bar.console.print(f"[red]failed:[/] {escape(e)}")
            bar.advance(task)
            del pending[(source, index)]
    for row in pending.values():  # only if a shard changed between the two reads
        failures[row.id] = f"id {row.id}: not found in {row.source} on the second read; was the file replaced?"
    return failures


def import_error(failures: dict[str, str], n_rows: int, n_images: int, out_dir: Path) -> ArtefactImportError:
    ids = ", ".join(list(failures)[:5]) + (f" and {len(failures) - 5} more" if len(failures) > 5 else "")
    first = next(iter(failures.values()))
    return ArtefactImportError(
        f"{len(failures)} of {n_rows} scans failed to import ({ids}; all reasons above and in "
        f"{out_dir / STATE_FILE}; the first: {first}); the manifest lists the {n_images} that did; "
        "fix the cause (re-download those shards, or raise --max-pixels) and run the same command again"
    )


# ------------------------------------------------------------------------------------------- inputs
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
            found.append((rid, path, i, {c: _text(values[c][i]) for c in groups}))
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
def check_out_dir(out_dir: Path, max_side: int | None, overwrite: bool) -> dict:
    """Continue an earlier import with the same settings; never write into someone else's files silently.

    Returns the earlier import's state (import.json), or {} for a fresh import.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--out {out_dir}: is a file; give a folder")
    if overwrite or not out_dir.exists() or not any(out_dir.iterdir()):
        return {}
    state_path = out_dir / STATE_FILE
    if not state_path.is_file():
        raise ValueError(
            f"--out {out_dir}: folder is not empty and holds no earlier import ({STATE_FILE}); "
            "choose a new folder, or pass --overwrite to write into it anyway"
        )
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{state_path}: damaged; pass --overwrite to import again") from None
    if state.get("max_side") != max_side:
        was = state.get("max_side")
        flag = f"--max-side {was}" if was is not None else "no --max-side"
        raise ValueError(
            f"--out {out_dir}: was imported with {flag}; continue it with the same setting, "
            "or pass --overwrite to import everything again at the new size"
        )
    manifest = out_dir / MANIFEST_FILE
    recorded = state.get("manifest_sha256")
    if manifest.is_file() and recorded and hashlib.sha256(manifest.read_bytes()).hexdigest() != recorded:
        raise ValueError(
            f"{manifest}: changed since the import wrote it, and a re-run would replace it; move it away "
            "(and write re-splits to another file with manifest split --out), or pass --overwrite"
        )
    return state


def existing_image(out_dir: Path, name: str) -> str | None:
    """The relative image path of a row an earlier run finished (mask written last), else None."""
    if not (out_dir / "masks" / f"{name}.png").is_file():
        return None
    for suffix in (".png", ".jpg"):
        if (out_dir / "images" / f"{name}{suffix}").is_file():
            return f"images/{name}{suffix}"
    return None


def import_row(
    row: ScanRow,
    image: bytes | None,
    annotation: bytes | None,
    out_dir: Path,
    max_side: int | None,
    max_pixels: int,
) -> tuple[str, str | None]:
    """Write one scan's image and index mask; returns (image path relative to out_dir, warning or None).

    Raises ValueError naming the row's id for bytes that cannot be imported.
    """
    where = f"id {row.id} ({row.source.name} row {row.index})"
    if not image:
        raise ValueError(f"{where}: no image bytes stored in the shard; download the shard again")
    if not annotation:
        raise ValueError(f"{where}: no annotation bytes stored in the shard; download the shard again")
    for what, data in (("image", image), ("annotation", annotation)):
        w, h = encoded_size(data, f"{where}: {what}")
        if w * h > max_pixels:
            raise ValueError(
                f"{where}: {what} is {w}x{h} = {w * h / 1e6:.0f} MP, above the {max_pixels / 1e6:.0f} MP "
                "limit; raise it with --max-pixels"
            )
    mask = decode_mask_bytes(annotation, f"{where}: annotation")  # (H, W)
    pixels, rotated = decode_image_bytes(image, f"{where}: image", mask.shape)  # (H, W, 3) BGR
    bad = [v for v in mask_values(mask) if v not in MASK_VALUES]
    warning = None
    if bad:
        warning = f"{where}: annotation holds value(s) {bad} outside 0-15 and 255 (imported as they are)"

    h, w = mask.shape
    scale = min(1.0, max_side / max(h, w)) if max_side else 1.0
    kind = image_kind(image)
    suffix = ".jpg" if kind == ".jpg" else ".png"  # PNG stays lossless; other formats become PNG
    image_path = out_dir / "images" / f"{row.name}{suffix}"
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 wants (width, height)
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)  # area averaging: no aliasing
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)  # nearest: no invented class values
    # an EXIF orientation tag must not survive: read_image would rotate the image away from its mask
    if scale == 1.0 and kind is not None and not rotated and exif_orientation(image) == 1:
        atomic_write_bytes(image_path, image)  # unchanged scan: the original bytes, no generation loss
    else:
        write_image(image_path, cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB), quality=JPEG_QUALITY)
    write_image(out_dir / "masks" / f"{row.name}.png", mask)  # last: its presence marks the row done
    return f"images/{row.name}{suffix}", warning


def image_kind(data: bytes) -> str | None:
    """'.png' or '.jpg' from the magic bytes of formats copied as they are; None for others."""
    if data.startswith(_PNG):
        return ".png"
    if data.startswith(_JPEG):
        return ".jpg"
    return None


# ------------------------------------------------------------------------------------------- decoding
def encoded_size(data: bytes, where: str) -> tuple[int, int]:
    """(width, height) from the header only, so that a huge scan is refused before it is decoded."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:
        raise ValueError(f"{where}: not a readable image (corrupt or truncated bytes); re-download the shard") from None


def decode_mask_bytes(data: bytes, where: str = "annotation") -> np.ndarray:
    """Encoded index mask -> (H, W) uint8 (uint16 if values exceed 255), values exactly as stored.

    PIL rather than OpenCV: OpenCV expands palette PNGs to colours, losing the indices. A 3-channel file with
    equal channels is an index mask saved as RGB; one with different channels is refused.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            arr = np.asarray(im)
    except Exception:
        raise ValueError(f"{where}: not a readable image (corrupt or truncated bytes); re-download the shard") from None
    if arr.ndim == 3:
        arr = arr[..., :1] if arr.shape[2] <= 2 else arr[..., :3]  # drop alpha
        if arr.shape[2] == 3 and not ((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()):
            raise ValueError(f"{where}: a colour image, not a single-channel index mask; use the 'annotation' column")
        arr = arr[..., 0]
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype != np.uint8:
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
            raise ValueError(f"{where}: mask values outside 0..65535; this is not an index mask")
        arr = arr.astype(np.uint8 if arr.max(initial=0) <= 255 else np.uint16)
    return np.ascontiguousarray(arr)


def mask_values(mask: np.ndarray) -> list[int]:
    """The distinct values of a (H, W) mask; a histogram for uint8 (np.bincount would copy it as int64)."""
    if mask.dtype == np.uint8:
        hist = cv2.calcHist([mask], [0], None, [256], [0, 256]).ravel()  # (256,) float32 counts
        return np.flatnonzero(hist).tolist()
    return np.unique(mask).tolist()


def decode_image_bytes(data: bytes, where: str, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, bool]:
    """Encoded image -> ((H, W, 3) uint8 BGR, whether EXIF rotation was applied).

    The stored pixel grid is used unless only the EXIF-rotated image matches ``shape`` (the mask's), because
    annotations are drawn on pixel arrays; a mismatch either way is an error naming both sizes.
    """
    buf = np.frombuffer(data, np.uint8)
    raw = _decode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION, data, rotate=False)
    if raw is None:
        raise ValueError(f"{where}: not a readable image (corrupt or truncated bytes); re-download the shard")
    if shape is None or raw.shape[:2] == tuple(shape):
        return raw, False
    if exif_orientation(data) != 1:
        turned = _decode(buf, cv2.IMREAD_COLOR, data, rotate=True)
        if turned is not None and turned.shape[:2] == tuple(shape):
            return turned, True
    raise ValueError(
        f"{where}: image is {raw.shape[1]}x{raw.shape[0]} but its annotation is {shape[1]}x{shape[0]}; "
        "the row is inconsistent, re-download the shard"
    )


def _decode(buf: np.ndarray, flags: int, data: bytes, rotate: bool) -> np.ndarray | None:
    arr = cv2.imdecode(buf, flags)
    if arr is not None and arr.size:
        return arr
    try:  # formats OpenCV cannot decode (some TIFF/WebP variants)
        from PIL import ImageOps

        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im) if rotate else im
            return np.ascontiguousarray(np.asarray(im.convert("RGB"))[..., ::-1])
    except Exception:
        return None


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1 = as stored) of encoded image bytes."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.getexif().get(0x0112, 1))
    except Exception:
        return 1


# ------------------------------------------------------------------------------------------- manifest
def random_split(n: int, seed: int = 0) -> list[str]:
    """n labels: 15 % test, 15 % val (at least one each once n >= 3), the rest train; seeded."""
    labels = np.full(n, "train", dtype=object)
    order = np.random.default_rng(seed).permutation(n)
    start = 0
    for name, fraction in SPLIT_FRACTIONS:
        k = max(1, round(n * fraction)) if n >= 3 else 0
        labels[order[start : start + k]] = name
        start += k
    return labels.tolist()


def write_manifest(
    out_dir: Path, rows: list[ScanRow], splits: list[str], images: dict[str, str], group_cols: list[str]
) -> Path:
    """Atomically write OUT/manifest.csv for the rows that have files: image,mask,split,<group columns>.

    No id column: the manifest module treats every other column as a group, and one group per scan would only
    add noise to per-group tables; the file stems are the ids (import.json maps any that had to change).
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["image", "mask", "split", *group_cols], lineterminator="\n")
    writer.writeheader()
    for row, split in zip(rows, splits, strict=True):
        if row.name in images:
            writer.writerow({"image": images[row.name], "mask": f"masks/{row.name}.png", "split": split, **row.groups})
    path = out_dir / MANIFEST_FILE
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    return path


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _json(data: dict) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")
