"""report(source, out): one HTML page that people look at, for a predict batch or for a study.

- A predict ``--out`` folder (areas.csv / ``*_areas.json``, ``*_index.png``, predict.json) becomes a gallery:
  scans sorted by damaged area with the damage drawn on top (opacity slider, per-class toggles in the scheme's
  colours), an area table per scan, a collection summary and a class filter (gallery.py, batch.py,
  gallery_html.py); when predict saved the damage probability or uncertainty maps, a layer menu draws those
  instead, colour-mapped, with a colour bar (confidence.py).
- A run directory or a folder of runs becomes a study page: the compare table (from ``compare.compare``, whose
  compare.csv is written beside the page), its plots, and per run its curves, per-class IoU, confusion matrix
  and sample overlays (study.py).

The page is plain HTML + CSS + a little vanilla JavaScript (damage_smp/assets/report/), with no CDN and no
network at view time; images sit in ``<name>_files/`` beside ``<name>.html`` and are linked relatively, so the
two can be zipped and sent. Nothing is overwritten without ``overwrite``; the files folder is built under a
temporary name and swapped in, the HTML written last and atomically. Nothing here imports torch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from rich.console import Console

from ..images import atomic_write_bytes
from ..runs import walk_run_tree
from .page import MARKER, Page, render_page

DEFAULT_THUMB = 1024


@dataclass
class ReportResult:
    """What a report call wrote: the page, its files folder, the kind and how many items it shows."""

    path: Path
    files_dir: Path
    kind: str  # "gallery" or "study"
    n_shown: int
    n_total: int
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# ============================================================================================ entry point
def report(
    source: str | Path,
    out: str | Path,
    *,
    max_images: int | None = None,
    thumb_size: int = DEFAULT_THUMB,
    overwrite: bool = False,
    split: str = "test",
    metric: str = "damage_miou",
    workers: int | None = None,
    console: Console | None = None,
) -> ReportResult:
    """Write ``out`` (an .html file) and ``<out stem>_files/`` for a predict folder, a run dir or a folder of runs."""
    start = time.perf_counter()
    source, out = Path(source), Path(out)
    check_options(max_images, thumb_size)
    files_dir = check_out(out, overwrite)
    kind = detect_kind(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{files_dir.name}.", suffix=".tmp"))
    try:
        (staging / MARKER).write_text("made by damage-smp report; replaced by report --overwrite\n")
        page = Page(staging, quote(files_dir.name))
        if kind == "gallery":
            from .gallery import build_gallery

            built = build_gallery(
                source, page, max_images=max_images, thumb_size=thumb_size, workers=workers, console=console
            )
        else:
            from .study import build_study

            built = build_study(source, page, split=split, metric=metric, thumb_size=thumb_size)
        text = render_page(kind, built.title, built.body, built.data, source)
        publish(staging, files_dir, out, text)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ReportResult(out, files_dir, kind, built.n_shown, built.n_total, time.perf_counter() - start, built.notes)


def check_options(max_images: int | None, thumb_size: int) -> None:
    if max_images is not None and max_images < 1:
        raise ValueError(f"--max-images {max_images}: must be 1 or more (leave it out to show every scan)")
    if not 64 <= thumb_size <= 4096:
        raise ValueError(f"--thumb-size {thumb_size}: must be from 64 to 4096 pixels (default {DEFAULT_THUMB})")


def detect_kind(source: Path) -> str:
    """'gallery' for a predict output folder, 'study' for a run dir or a folder holding run dirs."""
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such folder; give a run dir, an experiments folder or a predict --out")
    if not source.is_dir():
        raise NotADirectoryError(
            f"{source}: not a folder; give a run dir, an experiments folder or a predict --out folder"
        )
    if (source / "config.json").is_file():
        return "study"
    if (source / "predict.json").is_file() or (source / "areas.csv").is_file():
        return "gallery"
    predictions = False  # a folder holding both runs and predictions is a study (compare finds its runs)
    for _, _, filenames in walk_run_tree(source):
        if "config.json" in filenames:
            return "study"
        predictions = predictions or any(f.endswith("_areas.json") for f in filenames)
    if predictions:
        return "gallery"
    raise ValueError(
        f"{source}: neither a predict output (no predict.json, areas.csv or *_areas.json) nor a run dir or "
        "experiments folder (no config.json); give the --out folder of `damage-smp predict` or a run dir"
    )


def check_out(out: Path, overwrite: bool) -> Path:
    """Refuse to replace a report (or anything else) without overwrite; return the files folder's path."""
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out {out}: the report is one HTML page; give a file name ending in .html")
    if out.is_dir():
        raise IsADirectoryError(f"--out {out}: is a folder; give a file name such as {out / 'report.html'}")
    files_dir = out.with_name(f"{out.stem}_files")
    taken = [p for p in (out, files_dir) if p.exists()]
    if taken and not overwrite:
        raise FileExistsError(
            f"--out {out}: {' and '.join(str(p) for p in taken)} already exist; pass --overwrite to replace "
            "the report, or choose another --out"
        )
    if files_dir.exists() and not (files_dir / MARKER).is_file():
        raise FileExistsError(
            f"--out {out}: {files_dir} exists and was not made by damage-smp report, so --overwrite leaves it "
            "alone; move it away or choose another --out"
        )
    return files_dir


def publish(staging: Path, files_dir: Path, out: Path, text: str) -> None:
    """Swap the finished files folder in, then write the page atomically (the old one is removed last)."""
    old = None
    if files_dir.exists():
        old = files_dir.with_name(f".{files_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(files_dir, old)
    os.replace(staging, files_dir)
    atomic_write_bytes(out, text.encode("utf-8"))
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["ReportResult", "report", "detect_kind", "check_out"]
