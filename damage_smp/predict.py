"""predict(run_dir, inputs, out): colour masks, index masks, overlays and an area table for scans of any size.

One process runs three stages at once, so the model never waits on disk: a reader pool decodes the next
images, the main thread predicts the current one (``tiling.predict_index``: a ring buffer of ``tile`` rows, so
memory grows with tile x width, never with classes x height x width), and a writer pool encodes and writes
the outputs of the previous ones. Each side holds at most ``workers`` images and at most ~50 MP beyond the
first, so a folder of 100 MP scans keeps one image in each stage.

Per image, named after the input (``<name>`` is its stem, or its whole file name when another input in the
same folder has the same stem, e.g. ``x.jpg`` and ``x.png`` give ``x.jpg_mask.png`` and ``x.png_mask.png``):
``<name>_mask.png`` (scheme colours), ``<name>_index.png`` (scheme mask values; uint16 when a value is above
255), ``<name>_overlay.jpg`` (damage tinted over the scan, a legend of the classes present in a corner) and
``<name>_areas.json`` (pixels per class; written last, so it marks the image as finished). Output folders
mirror the input folders below their common root, so two inputs never share an output name.

Once per batch: ``predict.json`` (run, checkpoint, settings, label scheme), ``legend.png``, ``areas.csv``
(rebuilt from the per-image JSON files, so a resumed batch still lists the images it skipped) and
``failures.csv``. Shards (``--shard K/N`` or ``torchrun``) write ``areas.shard-K-of-N.csv`` and
``failures.shard-K-of-N.csv`` instead; the last shard to finish (or ``merge_areas``) joins them.
"""

from __future__ import annotations

import glob
import os
import re
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    atomic_write_bytes,
    image_size,
    list_images,
    read_image,
    write_image,
)
from .labels import LabelScheme
from .models import ModelBundle, load_bundle
from .plots import legend_image
from .runs import read_json, write_csv, write_json
from .system import resolve_amp, resolve_device
from .tiling import plan_tiles, predict_index

load_run = load_bundle  # the loader for a run dir: load_run(run_dir, checkpoint="best", device="cpu")

SAVE_KINDS = ("colour", "index", "overlay")
SAVE_ALIASES = {
    "color": "colour",
    "mask": "colour",
    "colour": "colour",
    "index": "index",
    "overlay": "overlay",
}
SUFFIXES = {"colour": "_mask.png", "index": "_index.png", "overlay": "_overlay.jpg", "areas": "_areas.json"}
OVERLAY_ALPHA = 0.55  # the same tint as plots.overlay, so samples and predictions look alike
OVERLAY_QUALITY = 90
STRIP_ROWS = 256  # overlays are blended this many rows at a time: temporaries stay ~W x 256 x 3 bytes
INFLIGHT_PIXELS = 50_000_000  # beyond the first image, each pipeline side holds at most this many pixels
TILE_PROGRESS_MIN = 16  # images with at least this many tiles get their own tile progress bar
SETTINGS_COMPARED = ("run_dir", "checkpoint", "epoch", "tile", "overlap", "tta")
GLOB_CHARS = re.compile(r"[*?\[]")
SHARD_TABLE = re.compile(r"^areas\.shard-(\d+)-of-(\d+)\.csv$")


@dataclass(frozen=True)
class Job:
    """One input image and where its outputs go: ``base`` + a suffix from ``SUFFIXES``."""

    source: Path
    base: Path

    def output(self, kind: str) -> Path:
        return self.base.with_name(self.base.name + SUFFIXES[kind])


@dataclass
class PredictResult:
    """What a predict call did. ``failures``: (input path, error message) pairs."""

    n_done: int
    n_skipped: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    out: Path | None = None
    areas: Path | None = None  # areas.csv, or this shard's table
    merged: bool = False  # a shard that found every shard's table and wrote areas.csv
    seconds: float = 0.0


# ============================================================================================ library calls
def predict_image(
    bundle: ModelBundle,
    image: np.ndarray,
    *,
    tile: int = 512,
    overlap: float = 0.5,
    batch_size: int = 4,
    tta: bool = False,
    progress=None,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 class indices of ``bundle.scheme``; memory bounded by tile x W.

    On CUDA it runs under the autocast the run trained with (bf16/fp16; argmax barely notices), on CPU in fp32.
    """
    device = next(bundle.model.parameters()).device
    return predict_index(
        bundle.model, image, bundle.scheme.num_classes, tile=tile, overlap=overlap, batch_size=batch_size,
        device=device, amp_dtype=resolve_amp(bundle.cfg.amp, device), tta=tta, progress=progress,
    )  # fmt: skip


def predict(
    run_dir: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    checkpoint: str = "best",
    tile: int = 512,
    overlap: float = 0.5,
    batch_size: int = 4,
    tta: bool = False,
    device: str = "auto",
    save: Iterable[str] | str = SAVE_KINDS,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 2,
    console: Console | None = None,
) -> PredictResult:
    """Predict every input image with a run's model and write masks, overlays and areas under ``out``.

    ``inputs``: image files, folders (searched recursively), glob patterns or manifest CSVs (their image
    column). ``shard=(K, N)``, K counting from 1, takes every N-th image of the sorted inputs; under
    ``torchrun`` each rank takes its share of that. Finished images are skipped unless ``overwrite``.
    An image that cannot be read or predicted is listed in ``failures``; the others are all processed.
    """
    console = console or Console()
    start = time.perf_counter()
    kinds = parse_save(save)
    check_options(tile, overlap, batch_size, workers, max_pixels)
    k, n = effective_shard(shard)
    out = Path(out)
    jobs = plan_outputs(collect_inputs(inputs, exclude=out), out)
    mine = jobs[k - 1 :: n]

    dev = device_for_rank(device)
    bundle = load_bundle(run_dir, checkpoint, dev)
    settings = {
        "run_dir": str(Path(run_dir).resolve()),
        "checkpoint": checkpoint,
        "checkpoint_path": str(bundle.checkpoint_path),
        "epoch": bundle.epoch,
        "tile": tile,
        "overlap": overlap,
        "tta": tta,
        "label_scheme": bundle.scheme.to_dict(),
    }
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; give a folder for the masks (it is created if missing)")
    check_previous_settings(out, settings, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    if k == 1:  # one shard writes the batch-wide files, so shards never write the same file
        write_json(out / "predict.json", settings)
        if overwrite or not (out / "legend.png").is_file():
            write_image(out / "legend.png", legend_image(bundle.scheme))
    areas_path, failures_path = batch_tables(out, k, n)
    if n > 1:
        areas_path.unlink(missing_ok=True)  # ours, rebuilt below: a merge must never join a stale one

    todo = [j for j in mine if overwrite or not is_finished(j, kinds)]
    n_skipped = len(mine) - len(todo)
    where = f" (shard {k}/{n})" if n > 1 else ""
    console.print(
        f"predicting {len(todo)} image(s){where} with {escape(str(run_dir))} "
        f"({checkpoint}, epoch {bundle.epoch}) on {dev}; {n_skipped} already finished"
        + ("" if overwrite else " (--overwrite redoes them)")
    )
    options = dict(tile=tile, overlap=overlap, batch_size=batch_size, tta=tta)
    pipeline = Pipeline(bundle, kinds, overwrite, max_pixels, workers, options)
    n_done, failures = pipeline.run(todo, console, show_progress=int(os.environ.get("RANK", "0")) == 0)

    failed = {path for path, _ in failures}
    write_csv(failures_path, [{"path": p, "error": e} for p, e in failures], ["path", "error"])
    rows = [
        area_row(j, bundle.scheme, out) for j in mine if str(j.source) not in failed and j.output("areas").is_file()
    ]
    write_csv(areas_path, rows, area_fields(bundle.scheme))
    result = PredictResult(n_done, n_skipped, failures, out, areas_path, seconds=time.perf_counter() - start)
    if n > 1 and all(batch_tables(out, i, n)[0].is_file() for i in range(1, n + 1)):
        try:  # every shard is done (this one last): join the tables, as --merge-areas would
            merge_areas(out)
            result.merged = True
        except ValueError as e:  # e.g. stale tables of another N: this shard's own work is still done
            console.print(f"[yellow]not merged:[/] {escape(str(e))}")
    return result


# ============================================================================================ inputs
def collect_inputs(inputs: Sequence[str | Path], exclude: Path | None = None) -> list[tuple[Path, Path]]:
    """INPUTS -> sorted, de-duplicated [(absolute image path, the folder its output path is relative to)].

    Files under ``exclude`` (the output folder) are left out, so predicting a folder into a subfolder of
    itself never predicts its own masks on the next run.
    """
    if not inputs:
        raise ValueError("no INPUTS given; pass image files, folders, glob patterns or a manifest CSV")
    skip = exclude.resolve() if exclude is not None else None
    found: dict[Path, Path] = {}
    for text in inputs:
        for path, base in expand_input(str(text)):
            path = Path(os.path.abspath(path))
            if skip is not None and path.resolve().is_relative_to(skip):
                continue
            found.setdefault(path, Path(os.path.abspath(base)))
    if not found:
        raise ValueError(f"no image files in {', '.join(map(str, inputs))} (outside --out); check the paths")
    return sorted(found.items())


def expand_input(text: str) -> list[tuple[Path, Path]]:
    """One INPUT -> [(image path, base folder)]: a folder, a manifest CSV, a file or a glob pattern."""
    path = Path(text)
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise ValueError(f"{path}: folder holds no image files ({' '.join(IMAGE_SUFFIXES)}); check the path")
        return [(f, path) for f in files]
    if path.is_file() and path.suffix.lower() == ".csv":
        folder = Path(os.path.abspath(path.parent))
        return [(f, folder if Path(f).is_relative_to(folder) else Path(f).parent) for f in manifest_images(path)]
    if path.is_file():
        return [(path, path.parent)]  # any file: one that is not an image is reported as a failure
    if GLOB_CHARS.search(text):
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
        files = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise ValueError(f"{text}: pattern matches no image files; check it (and quote it in the shell)")
        base = Path(*_until_glob(path.parts))  # the folder before the first wildcard: subfolders are mirrored
        return [(f, base) for f in files]
    raise FileNotFoundError(f"{text}: no such file, folder or glob pattern; check the path")


def _until_glob(parts: tuple[str, ...]) -> list[str]:
    out = []
    for p in parts:
        if GLOB_CHARS.search(p):
            break
        out.append(p)
    return out


def manifest_images(csv: Path) -> list[str]:
    """A manifest CSV's images (absolute); a CSV with only an ``image`` column is enough for predicting."""
    from .manifest import load_manifest

    try:
        columns = [str(c).strip() for c in pd.read_csv(csv, nrows=0, encoding="utf-8-sig").columns]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        columns = []
    if {"image", "mask", "split"} <= set(columns):
        return list(load_manifest(csv)["image_path"])
    if "image" not in columns:
        raise ValueError(f"{csv}: a CSV input needs an 'image' column of image paths (relative to the CSV)")
    df = pd.read_csv(csv, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    df.columns = columns
    base = csv.parent
    return [os.path.normpath(os.path.join(os.path.abspath(base), p.strip())) for p in df["image"] if p.strip()]


def plan_outputs(found: list[tuple[Path, Path]], out: Path) -> list[Job]:
    """Output base paths that mirror the input folders below their common root and never collide.

    A stem shared by several inputs of one folder (``x.jpg``, ``x.png``; compared case-insensitively, as some
    file systems do) keeps the file's suffix in the output name: ``x.jpg_mask.png``. The plan depends on the
    whole sorted input list only, so every shard computes the same one.
    """
    root = Path(os.path.commonpath([str(base) for _, base in found]))
    rels = {path: path.relative_to(root) for path, _ in found}
    stems: dict[tuple[Path, str], int] = defaultdict(int)
    for rel in rels.values():
        stems[(rel.parent, rel.stem.lower())] += 1
    used: set[tuple[Path, str]] = set()
    jobs = []
    for path, _ in found:
        rel = rels[path]
        name = rel.stem if stems[(rel.parent, rel.stem.lower())] == 1 else rel.name
        unique, i = name, 2
        while (
            rel.parent,
            unique.lower(),
        ) in used:  # only for contrived names such as x.png.jpg next to x.png
            unique, i = f"{name}~{i}", i + 1
        used.add((rel.parent, unique.lower()))
        jobs.append(Job(path, out / rel.parent / unique))
    return jobs


def is_finished(job: Job, kinds: Sequence[str]) -> bool:
    """Every requested output and the areas file exist (the areas file is written last)."""
    return all(job.output(k).is_file() for k in (*kinds, "areas"))


# ============================================================================================ options
def parse_save(save: Iterable[str] | str) -> tuple[str, ...]:
    """'colour,index' or ['colour', 'index'] -> ('colour', 'index'); 'color' and 'mask' mean colour."""
    items = save.split(",") if isinstance(save, str) else list(save)
    kinds = []
    for item in (s.strip().lower() for s in items):
        if item not in SAVE_ALIASES:
            raise ValueError(f"--save {item!r}: not an output; choose from {','.join(SAVE_KINDS)}")
        if SAVE_ALIASES[item] not in kinds:
            kinds.append(SAVE_ALIASES[item])
    if not kinds:
        raise ValueError(f"--save is empty; choose one or more of {','.join(SAVE_KINDS)}")
    return tuple(kinds)


def parse_shard(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4): this process is shard 2 of 4 (K counts from 1)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"--shard {text!r}: write it as K/N with K from 1 to N, e.g. --shard 1/4")
    k, n = int(m.group(1)), int(m.group(2))
    check_shard(k, n)
    return k, n


def check_shard(k: int, n: int) -> None:
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"--shard {k}/{n}: K must be from 1 to N (K counts from 1), e.g. --shard 1/{max(n, 1)}")


def effective_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    """(K, N) of this process, 1-based: --shard K/N, split again among torchrun's ranks (WORLD_SIZE, RANK).

    Shard K/N under W ranks is shard (K-1)·W + rank + 1 of N·W: every (K, rank) pair takes a different
    residue class of the sorted inputs, so the parts never overlap and together cover every input.
    """
    k, n = shard or (1, 1)
    check_shard(k, n)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        k, n = (k - 1) * world + rank + 1, n * world
    return k, n


def device_for_rank(name: str) -> torch.device:
    """--device, and under torchrun on CUDA the GPU of this rank (cuda:LOCAL_RANK)."""
    device = torch.device(resolve_device(name))
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # so cuDNN workspaces and autocast live on this rank's GPU
    return device


def check_options(tile: int, overlap: float, batch_size: int, workers: int, max_pixels: int) -> None:
    plan_tiles(tile, tile, tile, overlap)  # raises the --tile / --overlap message
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be at least 1, e.g. 4")
    if workers < 1:
        raise ValueError(f"--workers {workers}: must be at least 1, e.g. 2")
    if max_pixels < 1:
        raise ValueError(f"--max-pixels {max_pixels}: must be positive, e.g. {DEFAULT_MAX_PIXELS}")


def check_previous_settings(out: Path, settings: dict, overwrite: bool) -> None:
    """Refuse to mix predictions of another run, checkpoint or tiling into one output folder."""
    path = out / "predict.json"
    if overwrite or not path.is_file():
        return
    old = read_json(path)
    diffs = [f"{k} {old.get(k)!r} -> {settings[k]!r}" for k in SETTINGS_COMPARED if old.get(k) != settings[k]]
    if diffs:
        raise ValueError(
            f"{out}: holds predictions made differently ({'; '.join(diffs)}); "
            "use another --out, or --overwrite to redo these images"
        )


# ============================================================================================ pipeline
class Pipeline:
    """Read ahead, predict, write behind; bounded queues on both sides (see the module docstring)."""

    def __init__(self, bundle: ModelBundle, kinds, overwrite: bool, max_pixels: int, workers: int, options):
        self.bundle, self.kinds, self.overwrite = bundle, kinds, overwrite
        self.max_pixels, self.workers, self.options = max_pixels, workers, options

    def run(self, jobs: list[Job], console: Console, show_progress: bool = True):
        """-> (images written, [(path, error)]), in input order."""
        failures: list[tuple[str, str]] = []
        done = 0
        reads: deque[tuple[Job, int, Future]] = deque()
        writes: deque[tuple[Job, int, Future]] = deque()
        pending = iter(jobs)
        upcoming: list[Job] = []
        progress = make_progress(console, show_progress)

        def read_more():
            while True:
                if not upcoming:
                    nxt = next(pending, None)
                    if nxt is None:
                        return
                    upcoming.append(nxt)
                pixels = _header_pixels(upcoming[0].source)
                if not _room(reads, pixels, self.workers):
                    return
                job = upcoming.pop()
                reads.append((job, pixels, readers.submit(read_image, job.source, self.max_pixels)))

        def finish_write():
            nonlocal done
            job, _, fut = writes.popleft()
            try:
                fut.result()
                done += 1
            except Exception as e:  # a full disk, an unwritable folder: this image fails, the batch goes on
                failures.append((str(job.source), _describe(e)))
            progress.advance(images)

        with (
            ThreadPoolExecutor(self.workers, "damage-smp-read") as readers,
            ThreadPoolExecutor(self.workers, "damage-smp-write") as writers,
            progress,
        ):
            images = progress.add_task("images", total=len(jobs))
            read_more()
            while reads:
                job, _, fut = reads.popleft()
                read_more()  # decode the next image(s) while this one is predicted
                progress.update(images, description=escape(_shorten(job.source.name)))
                try:
                    image = fut.result()  # (H, W, 3) uint8 RGB
                    index = self.predict_one(image, progress)  # (H, W) uint8 class indices
                except Exception as e:  # unreadable, empty, not an image, out of memory: report, go on
                    failures.append((str(job.source), _describe(e)))
                    progress.advance(images)
                    continue
                while writes and not _room(writes, image.shape[0] * image.shape[1], self.workers):
                    finish_write()
                args = (job, image, index, self.bundle.scheme, self.kinds, self.overwrite)
                writes.append((job, index.size, writers.submit(write_outputs, *args)))
                del image, index  # the writer owns them now (it tints the image in place)
            while writes:
                finish_write()
        failures.sort()
        return done, failures

    def predict_one(self, image: np.ndarray, progress: Progress) -> np.ndarray:
        tiles = None

        def on_tiles(n_done: int, total: int) -> None:
            nonlocal tiles
            if tiles is None and total >= TILE_PROGRESS_MIN:
                tiles = progress.add_task("  tiles", total=total)
            if tiles is not None:
                progress.update(tiles, completed=n_done)

        try:
            return predict_image(self.bundle, image, progress=on_tiles, **self.options)
        finally:
            if tiles is not None:
                progress.remove_task(tiles)


def _room(queue: deque, pixels: int, workers: int) -> bool:
    """May one more image of ``pixels`` join a pipeline side? Always when it is empty (one image is the
    least we can hold), else while it has fewer than ``workers`` images and INFLIGHT_PIXELS in total."""
    held = sum(p for _, p, _ in queue)
    return not queue or (len(queue) < workers and held + pixels <= INFLIGHT_PIXELS)


def _header_pixels(path: Path) -> int:
    try:
        w, h = image_size(path)
        return w * h
    except Exception:  # reading it fails too, and is reported there
        return 0


def _shorten(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _describe(e: Exception) -> str:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return f"out of memory while predicting; lower --batch-size or --tile ({str(e).splitlines()[0]})"
    if isinstance(e, ValueError | OSError):
        return str(e) or type(e).__name__
    return f"{type(e).__name__}: {e}"


def make_progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console, disable=not enabled, transient=False,
    )  # fmt: skip


# ============================================================================================ outputs
def write_outputs(
    job: Job, image: np.ndarray, index: np.ndarray, scheme: LabelScheme, kinds: Sequence[str], overwrite: bool
) -> None:
    """Write the requested outputs that are missing (all with ``overwrite``), then the areas file.

    ``image`` is consumed: the overlay is blended into it in place, so a 100 MP scan needs no second copy.
    """
    want = [k for k in kinds if overwrite or not job.output(k).is_file()]
    if "index" in want:
        write_image(job.output("index"), scheme.to_values(index))  # (H, W) uint8, or uint16 above 255
    if "colour" in want:
        _write_bgr(job.output("colour"), colour_table_bgr(scheme)[index])  # (H, W, 3) by lookup, no floats
    if "overlay" in want:
        bgr = tint_in_place(image, index, scheme)
        draw_legend(bgr, scheme, [c for c in present_classes(index, scheme) if c in scheme.damage_indices])
        _write_bgr(job.output("overlay"), bgr)
    counts = count_classes(index, scheme.num_classes)
    write_json(
        job.output("areas"),
        {
            "image": str(job.source),
            "width": int(index.shape[1]),
            "height": int(index.shape[0]),
            "pixels": {name: int(c) for name, c in zip(scheme.names, counts, strict=True)},
        },
    )


def colour_table_bgr(scheme: LabelScheme) -> np.ndarray:
    """(256, 3) uint8 class index -> BGR colour (OpenCV's order, so no full-size RGB->BGR copy)."""
    table = np.zeros((256, 3), np.uint8)
    table[: scheme.num_classes] = scheme.colors[:, ::-1]
    return table


def tint_in_place(image: np.ndarray, index: np.ndarray, scheme: LabelScheme, alpha: float = OVERLAY_ALPHA):
    """RGB image -> BGR overlay in the same buffer: damage pixels blended with their class colour.

    Works in strips of STRIP_ROWS rows on uint8 (cv2.addWeighted rounds like plots.overlay's float maths
    within 1 grey level), so no full-size float32 copy is ever made.
    """
    colours = colour_table_bgr(scheme)
    is_damage = np.zeros(256, bool)
    is_damage[scheme.damage_indices] = True
    for y0 in range(0, image.shape[0], STRIP_ROWS):
        strip = image[y0 : y0 + STRIP_ROWS]  # (s, W, 3) view
        cv2.cvtColor(strip, cv2.COLOR_RGB2BGR, dst=strip)
        idx = index[y0 : y0 + STRIP_ROWS]
        show = is_damage[idx]  # (s, W) bool
        if show.any():
            blended = cv2.addWeighted(strip, 1 - alpha, colours[idx], alpha, 0.0)
            np.copyto(strip, blended, where=show[..., None])
    return image


def draw_legend(bgr: np.ndarray, scheme: LabelScheme, classes: list[int]) -> None:
    """Paste a legend of ``classes`` into the top-left corner, scaled with the image (~1/6 of its short
    side); skipped when it would cover more than half the image (legend.png has every class anyway)."""
    if not classes:
        return
    legend = np.ascontiguousarray(legend_image(scheme, classes)[..., ::-1])  # RGB -> BGR
    h, w = bgr.shape[:2]
    lh, lw = legend.shape[:2]
    scale = min(max(1.0, min(h, w) / 1500), 0.5 * w / lw, 0.5 * h / lh)
    if scale < 0.75:  # text below ~8 px high is unreadable
        return
    size = (max(1, round(lw * scale)), max(1, round(lh * scale)))
    legend = cv2.resize(legend, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    m = max(2, round(8 * scale))
    m = min(m, h - size[1], w - size[0])
    bgr[m : m + size[1], m : m + size[0]] = legend


def present_classes(index: np.ndarray, scheme: LabelScheme) -> list[int]:
    return [int(c) for c in np.flatnonzero(count_classes(index, scheme.num_classes))]


def count_classes(index: np.ndarray, num_classes: int, chunk: int = 1 << 22) -> np.ndarray:
    """(C,) int64 pixel counts per class, in chunks (a whole 100 MP map would be copied to int64)."""
    flat = index.reshape(-1)
    counts = np.zeros(num_classes, np.int64)
    for s in range(0, flat.size, chunk):
        counts += np.bincount(flat[s : s + chunk], minlength=num_classes)[:num_classes]
    return counts


def _write_bgr(path: Path, bgr: np.ndarray) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, OVERLAY_QUALITY] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(path.suffix, bgr, params)
    if not ok:
        raise OSError(f"{path}: could not encode the image ({bgr.shape[1]}x{bgr.shape[0]})")
    atomic_write_bytes(path, buf.tobytes())


# ============================================================================================ areas
def area_fields(scheme: LabelScheme) -> list[str]:
    fields = ["image", "mask", "index", "overlay", "width", "height", "object_px", "damage_px", "damage_pct"]
    for i, name in enumerate(scheme.names):
        fields.append(f"{name}_px")
        if i != scheme.background_index:
            fields.append(f"{name}_pct")
    return fields


def area_row(job: Job, scheme: LabelScheme, out: Path) -> dict:
    """One areas.csv row from an image's areas file: pixels per class and % of the object (every pixel but
    Background); ``damage_pct`` is the share of all damage classes together. Output paths are relative to out.
    """
    record = read_json(job.output("areas"))
    pixels = record["pixels"]
    total = int(record["width"]) * int(record["height"])
    bg = scheme.background_index
    obj = total - (int(pixels.get(scheme.names[bg], 0)) if bg is not None else 0)
    damage = sum(int(pixels.get(scheme.names[i], 0)) for i in scheme.damage_indices)

    def pct(n: int) -> float:
        return 100.0 * n / obj if obj > 0 else float("nan")

    row = {"image": record["image"], "width": record["width"], "height": record["height"]}
    for kind in SAVE_KINDS:
        path = job.output(kind)
        row["mask" if kind == "colour" else kind] = path.relative_to(out).as_posix() if path.is_file() else ""
    row.update(object_px=obj, damage_px=damage, damage_pct=pct(damage))
    for i, name in enumerate(scheme.names):
        row[f"{name}_px"] = int(pixels.get(name, 0))
        if i != bg:
            row[f"{name}_pct"] = pct(int(pixels.get(name, 0)))
    return row


def batch_tables(out: Path, k: int, n: int) -> tuple[Path, Path]:
    """(areas table, failures table) of shard k of n; areas.csv and failures.csv when unsharded."""
    if n == 1:
        return out / "areas.csv", out / "failures.csv"
    return out / f"areas.shard-{k}-of-{n}.csv", out / f"failures.shard-{k}-of-{n}.csv"


def merge_areas(out_dir: str | Path) -> tuple[Path, int]:
    """Join every shard's areas.shard-K-of-N.csv (and failures tables) into areas.csv (and failures.csv).

    Returns (areas.csv path, number of images). Refuses when a shard's table is missing or when tables of
    different N are mixed, naming the files and what to do.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"--merge-areas {out}: folder not found; give a predict --out folder")
    tables = {}
    for path in out.iterdir():
        m = SHARD_TABLE.match(path.name)
        if m:
            tables[int(m.group(1)), int(m.group(2))] = path
    if not tables:
        raise FileNotFoundError(
            f"--merge-areas {out}: no areas.shard-K-of-N.csv there; "
            "run predict with --shard K/N (or under torchrun) first"
        )
    splits = sorted({n for _, n in tables})
    if len(splits) > 1:
        raise ValueError(
            f"--merge-areas {out}: shard tables of {' and '.join(map(str, splits))} shards are mixed; "
            "delete the stale areas.shard-*-of-N.csv files and merge again"
        )
    n = splits[0]
    missing = [f"{k}/{n}" for k in range(1, n + 1) if (k, n) not in tables]
    if missing:
        raise ValueError(
            f"--merge-areas {out}: shard(s) {', '.join(missing)} have not finished (no areas table); "
            "run them with --shard, then merge again"
        )
    areas = _concat([tables[k, n] for k in range(1, n + 1)]).sort_values("image", kind="stable")
    failures = _concat([batch_tables(out, k, n)[1] for k in range(1, n + 1)], ["path", "error"])
    atomic_write_bytes(out / "areas.csv", areas.to_csv(index=False, lineterminator="\n").encode("utf-8"))
    atomic_write_bytes(out / "failures.csv", failures.to_csv(index=False, lineterminator="\n").encode("utf-8"))
    return out / "areas.csv", len(areas)


def _concat(paths: list[Path], columns: list[str] | None = None) -> pd.DataFrame:
    frames = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in paths if p.is_file()]
    frames = [f for f in frames if len(f.columns)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns or [])


def print_result(result: PredictResult, console: Console) -> None:
    """The end-of-batch summary: counts, where things are, and every failure on its own line."""
    console.print(
        f"predicted {result.n_done}, skipped {result.n_skipped} finished, failed {len(result.failures)} "
        f"in {result.seconds:.0f}s -> {escape(str(result.out))}"
    )
    if result.areas is not None:
        merged = "  (every shard is done: merged into areas.csv)" if result.merged else ""
        console.print(f"areas: {escape(str(result.areas))}{merged}")
    if result.failures:
        console.print(f"[bold red]{len(result.failures)} image(s) failed[/] (also in failures.csv):")
        for path, error in result.failures:
            line = error if error.startswith(path) else f"{path}: {error}"  # most errors name their file already
            console.print(f"  {escape(line)}", soft_wrap=True)


__all__ = [
    "PredictResult",
    "load_run",
    "merge_areas",
    "parse_shard",
    "predict",
    "predict_image",
    "print_result",
]
