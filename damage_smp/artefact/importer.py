"""The import itself: settings, resumable per-row writes, the manifest and import.json."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console

from ..console import escape, progress_bar
from ..images import DEFAULT_MAX_PIXELS, atomic_write_bytes, write_image
from .decode import decode_image_bytes, decode_mask_bytes, encoded_size, exif_orientation, image_kind, mask_values
from .parquet import ScanRow, find_parquet_files, index_rows, stream_rows

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


class ArtefactImportError(ValueError):
    """Some rows could not be imported; the others were, and the manifest lists them."""


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


def _json(data: dict) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")
