"""Reading a predict batch: predict.json (label scheme), areas.csv or the ``*_areas.json`` files, mask paths.

Areas follow predict.area_row: pixels per class and % of the object (every pixel but background). Nothing here
imports torch (predict does), so the report reads the files predict writes rather than calling it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..images import mm2_per_pixel, parse_dpi_text, read_mask
from ..labels import LabelScheme, load_scheme
from ..runs import read_json_lenient
from .page import MARKER

CONFIDENCE = ("prob", "uncertainty")  # areas.csv's columns of the confidence maps (predict --save)
SUFFIXES = {"index": "_index.png", "mask": "_mask.png", "overlay": "_overlay.jpg", "areas": "_areas.json"}


@dataclass
class Scan:
    """One predicted scan: its name in the batch, its files, its pixel counts per class."""

    name: str  # output path below the batch folder without the suffix, e.g. "box1/scan_004"
    source: Path | None  # the original scan (areas 'image' column) when it is still there
    index: Path | None
    mask: Path | None
    overlay: Path | None
    width: int
    height: int
    object_px: int
    damage_pct: float  # % of the object (every pixel but background) in any damage class
    pixels: dict[str, int] = field(default_factory=dict)
    mm2_per_px: float | None = None  # from the scan's resolution (areas.csv dpi), None when unknown
    uncertainty: float | None = None  # mean uncertainty 0..1 (predict --save uncertainty), None when not saved
    levels: dict[str, Path] = field(default_factory=dict)  # confidence maps: "prob" / "uncertainty" -> PNG or TIFF


@dataclass
class Batch:
    folder: Path
    scheme: LabelScheme
    scans: list[Scan]
    run_dir: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ============================================================================================ reading a batch
def read_batch(folder: Path) -> Batch:
    """A predict --out folder -> its scheme, scans and failures; notes say what was missing and assumed."""
    notes = []
    settings = read_json_lenient(folder / "predict.json")[0] or {}
    if settings.get("label_scheme"):
        scheme = LabelScheme.from_dict(settings["label_scheme"], source=str(folder / "predict.json"))
    else:
        scheme = load_scheme("artefact")
        notes.append("no predict.json with a label scheme: the artefact scheme's names and colours are assumed")
    if (folder / "areas.csv").is_file():
        scans = scans_from_table(folder, scheme)
    else:
        scans = scans_from_sidecars(folder, scheme)
        if scans:
            notes.append("no areas.csv (an unfinished or sharded batch): areas come from the *_areas.json files")
    if not scans:
        raise ValueError(
            f"{folder}: no predicted scans (areas.csv is empty and there are no *_areas.json files); "
            "run `damage-smp predict RUN_DIR SCANS --out` into it first"
        )
    missing = sum(s.source is None for s in scans)
    if missing:
        notes.append(
            f"{missing} original scan(s) not found where predict read them: their previews show predict's "
            "overlay (damage colours baked in) or the colour mask"
        )
    return Batch(folder, scheme, scans, str(settings.get("run_dir", "")), read_failures(folder), notes)


def scans_from_table(folder: Path, scheme: LabelScheme) -> list[Scan]:
    """areas.csv rows (predict.area_row's columns) -> scans."""
    path = folder / "areas.csv"
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}); re-run predict into this folder") from None
    except pd.errors.EmptyDataError:
        return []
    missing = [f"{n}_px" for n in scheme.names if f"{n}_px" not in df.columns] + [
        c for c in ("image", "width", "height") if c not in df.columns
    ]
    if missing:
        raise ValueError(
            f"{path}: columns {missing[:4]} missing for label scheme {scheme.name!r}; give the folder of a "
            "`damage-smp predict` batch (its predict.json names the scheme)"
        )
    scans = []
    for row in df.to_dict("records"):
        files = {k: _file(folder, row.get(k, "")) for k in ("index", "mask", "overlay")}
        pixels = {n: _int(row[f"{n}_px"]) for n in scheme.names}
        scan = make_scan(folder, row["image"], files, _int(row["width"]), _int(row["height"]), pixels, scheme)
        scan.mm2_per_px = mm2_per_pixel(parse_dpi_text(row.get("dpi", "")))
        scan.uncertainty = _float_or_none(row.get("uncertainty_mean", ""))
        scan.levels = {k: p for k in CONFIDENCE if (p := _file(folder, row.get(k, ""))) is not None}
        scans.append(scan)
    return scans


def scans_from_sidecars(folder: Path, scheme: LabelScheme) -> list[Scan]:
    """Every ``*_areas.json`` below the folder (skipping report files folders) -> scans."""
    scans = []
    for path in sorted(_walk(folder, SUFFIXES["areas"])):
        record, _ = read_json_lenient(path)
        if not record or "pixels" not in record:
            continue
        base = path.with_name(path.name[: -len(SUFFIXES["areas"])])
        files = {k: base.with_name(base.name + SUFFIXES[k]) for k in ("index", "mask", "overlay")}
        files = {k: p if p.is_file() else None for k, p in files.items()}
        pixels = {n: int(record["pixels"].get(n, 0)) for n in scheme.names}
        scans.append(
            make_scan(
                folder,
                str(record.get("image", "")),
                files,
                int(record.get("width", 0)),
                int(record.get("height", 0)),
                pixels,
                scheme,
                name=base.relative_to(folder).as_posix(),
            )
        )
        scans[-1].mm2_per_px = mm2_per_pixel(record.get("dpi"))
        scans[-1].uncertainty = _float_or_none(record.get("uncertainty_mean"))
        scans[-1].levels = recorded_levels(base, record)
    return scans


def recorded_levels(base: Path, record: dict) -> dict[str, Path]:
    """The confidence maps a record lists (its ``outputs``: the PNG or the TIFF predict wrote, a file name beside
    the record) that exist."""
    outputs = record.get("outputs") if isinstance(record.get("outputs"), dict) else {}
    levels = {}
    for kind in CONFIDENCE:
        entry = outputs.get(kind)
        name = entry.get("file") if isinstance(entry, dict) else None
        if isinstance(name, str) and name == Path(name).name and (base.parent / name).is_file():
            levels[kind] = base.parent / name
    return levels


def _float_or_none(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def gallery_order(scans: list[Scan]) -> tuple[list[Scan], str]:
    """Most uncertain first when the batch saved uncertainty (look where the model hesitates), else most
    damaged first; ties by name. -> (scans, what they are sorted by)."""
    if any(s.uncertainty is not None for s in scans):
        key = lambda s: (-(s.uncertainty if s.uncertainty is not None else -1), s.name)  # noqa: E731
        return sorted(scans, key=key), "mean uncertainty"
    key = lambda s: (-(s.damage_pct if not math.isnan(s.damage_pct) else -1), s.name)  # noqa: E731
    return sorted(scans, key=key), "damage"


def make_scan(
    folder: Path,
    image: str,
    files: dict,
    width: int,
    height: int,
    pixels: dict,
    scheme: LabelScheme,
    name: str | None = None,
) -> Scan:
    """Areas by predict.area_row's rule: % of the object, the object being every pixel but background."""
    if name is None:
        named = next((p for k, p in files.items() if p is not None), None)
        suffix = next((SUFFIXES[k] for k, p in files.items() if p is not None), "")
        name = named.relative_to(folder).as_posix()[: -len(suffix)] if named else Path(image).stem
    bg = scheme.background_index
    total = width * height if width and height else sum(pixels.values())
    obj = total - (pixels.get(scheme.names[bg], 0) if bg is not None else 0)
    damage = sum(pixels.get(scheme.names[i], 0) for i in scheme.damage_indices)
    source = Path(image) if image and Path(image).is_file() else None
    pct = 100.0 * damage / obj if obj > 0 else math.nan
    return Scan(name, source, files["index"], files["mask"], files["overlay"], width, height, obj, pct, pixels)


def read_failures(folder: Path) -> list[tuple[str, str]]:
    path = folder / "failures.csv"
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        return list(zip(df["path"], df["error"], strict=True))
    except (OSError, KeyError, ValueError, pd.errors.EmptyDataError):
        return []


def _walk(folder: Path, suffix: str) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not (here / d / MARKER).is_file()]
        yield from (here / f for f in filenames if f.endswith(suffix))


def _file(folder: Path, rel: str) -> Path | None:
    path = folder / rel if rel else None
    return path if path is not None and path.is_file() else None


def _int(text) -> int:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return 0


def read_index(scan: Scan, scheme: LabelScheme) -> np.ndarray | None:
    """The scan's (H, W) class indices from its index mask, else from its colour mask; None without either."""
    if scan.index is not None:
        return scheme.decode(read_mask(scan.index))
    if scan.mask is not None:
        return scheme.decode(read_mask(scan.mask))
    return None
