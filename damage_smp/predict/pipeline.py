"""The predict loop: reader threads decode ahead, the main thread runs the sliding window, writer threads write.

Each side holds at most ``workers`` images and at most INFLIGHT_PIXELS beyond the first (see the package
docstring).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from ..cleanup import fill_class, parse_min_area, remove_small
from ..console import escape, progress_bar
from ..images import DEFAULT_MAX_PIXELS, image_size, read_image, write_image
from ..models import ModelBundle, load_bundle
from ..plots import legend_image
from ..runs import read_json, write_json
from ..system import resolve_device
from ..thresholds import Decision, resolve_decision
from ..tiling import predict_index
from .backend import ExportedModel, check_backend, is_exported_model, load_exported, tile_model
from .confidence import block_filler, confidence_maps
from .inputs import (
    SAVE_KINDS,
    Job,
    check_options,
    collect_inputs,
    effective_shard,
    parse_save,
    plan_outputs,
)
from .outputs import PredictResult, batch_tables, merge_areas, write_outputs, write_tables
from .owned import check_nothing_foreign, clean_stale_temps, is_finished, predict_json_is_ours, read_record

INFLIGHT_PIXELS = 50_000_000  # beyond the first image, each pipeline side holds at most this many pixels
Loaded = ModelBundle | ExportedModel  # a run's checkpoint, or an exported ONNX file with its sidecar
TILE_PROGRESS_MIN = 16  # images with at least this many tiles get their own tile progress bar
SETTINGS_COMPARED = ("run_dir", "checkpoint", "epoch", "tile", "overlap", "tta", "decision", "threshold", "min_area")
SETTINGS_DEFAULTS = {"decision": "argmax", "min_area": {}}  # what a predict.json without the key was made with


def predict_image(
    bundle: Loaded,
    image: np.ndarray,
    *,
    tile: int = 512,
    overlap: float = 0.5,
    batch_size: int = 4,
    tta: bool = False,
    progress=None,
    model=None,
    decision: Decision | None = None,
    on_block=None,
    flip_entropy: bool = False,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 class indices of ``bundle.scheme``; memory bounded by tile x W.

    On CUDA it runs under the autocast the run trained with (bf16/fp16; argmax barely notices), on CPU in fp32.
    ``model``: what runs the tiles instead of ``bundle.model`` (e.g. an ONNX Runtime session, ``backend``).
    ``decision``: the rule from probabilities to classes (``thresholds.Decision``; default the argmax);
    ``on_block``: sees every block of final probabilities (``tiling.predict_index``); ``flip_entropy``: and, with
    ``tta``, the blended mean entropy of the flips (for the TTA disagreement, ``confidence``).
    """
    return predict_index(
        model or bundle.model, image, bundle.scheme.num_classes, tile=tile, overlap=overlap, batch_size=batch_size,
        device=bundle.device, amp_dtype=bundle.amp_dtype, tta=tta, progress=progress, decide=decision,
        on_block=on_block, flip_entropy=flip_entropy and tta,
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
    backend: str | None = None,
    decision: str = "auto",
    min_area: str | int | dict | None = None,
    dpi: float | None = None,
    console: Console | None = None,
) -> PredictResult:
    """Predict every input image with a run's model and write masks, overlays and areas under ``out``.

    ``inputs``: image files, folders (searched recursively), glob patterns or manifest CSVs (their image
    column). ``shard=(K, N)``, K counting from 1, takes every N-th image of the sorted inputs; under
    ``torchrun`` each rank takes its share of that. Finished images are skipped unless ``overwrite``.
    An image that cannot be read or predicted is listed in ``failures``; the others are all processed.
    ``backend``: ``torch``, or ``onnxruntime`` (CPU; the same tiles through an ONNX Runtime session); None picks
    torch for a run dir. ``run_dir`` may also be an exported ``MODEL.onnx`` with its sidecar ``MODEL.onnx.json``.
    ``decision``: tuned (the run's thresholds.json), argmax, or auto (tuned when the run has one); ``min_area``:
    remove smaller damage (px, or {class: px}; ``cleanup``); ``dpi``: for the mm² of areas.csv (default: the file's).
    """
    console, start, kinds = console or Console(), time.perf_counter(), parse_save(save)
    check_options(tile, overlap, batch_size, workers, max_pixels, dpi)
    k, n = effective_shard(shard)
    out = Path(out)
    mine = plan_outputs(collect_inputs(inputs, exclude=out), out)[k - 1 :: n]
    records = _check_out(out, mine, kinds, k, n)  # before the model is even loaded
    todo = [j for j, r in zip(mine, records, strict=True) if overwrite or not is_finished(j, r, kinds)]
    first, (bundle, backend, dev) = _load_while_reading(todo, max_pixels, run_dir, checkpoint, backend, device)
    rule = resolve_decision(Path(run_dir), decision, bundle.scheme, bundle.checkpoint_path,
                            exported=bundle.sidecar if isinstance(bundle, ExportedModel) else None)  # fmt: skip
    sizes = parse_min_area(min_area, bundle.scheme)
    settings = _settings(run_dir, checkpoint, bundle, rule, sizes, tile=tile, overlap=overlap, tta=tta, backend=backend)
    _prepare_out(out, settings, bundle, overwrite, k, n)
    clean_stale_temps({out, *(j.base.parent for j in mine)})

    n_skipped = len(mine) - len(todo)
    model_text = f"{escape(run_dir)} ({checkpoint}, epoch {bundle.epoch}) on {dev} ({backend}), {_rule_text(rule)}"
    _announce(console, len(todo), n_skipped, (k, n), model_text, overwrite)
    options = dict(tile=tile, overlap=overlap, batch_size=batch_size, tta=tta, model=tile_model(bundle, backend),
                   decision=rule)  # fmt: skip
    pipeline = Pipeline(bundle, kinds, overwrite, max_pixels, workers, options, sizes, first=first)
    n_done, failures = pipeline.run(todo, console, show_progress=int(os.environ.get("RANK", "0")) == 0)
    result = PredictResult(
        n_done, n_skipped, failures, out, write_tables(out, mine, failures, bundle.scheme, k, n, dpi)
    )
    return _merged_if_last(result, k, n, console, start)


def _merged_if_last(result: PredictResult, k: int, n: int, console: Console, start: float) -> PredictResult:
    """The last shard to finish (every shard's table is there) joins the tables, as --merge-areas would."""
    every_shard = n > 1 and all(batch_tables(result.out, i, n)[0].is_file() for i in range(1, n + 1))
    result.merged = every_shard and _merge(result.out, console)
    result.seconds = time.perf_counter() - start
    return result


def _load_while_reading(todo: list[Job], max_pixels: int, *model_args) -> tuple[Future | None, tuple]:
    """-> (the first job's image being read, ``load_model(*model_args)``): the first scan decodes while the model
    is built and loaded; an error in loading is reported at once, not after a big scan's decode."""
    early = ThreadPoolExecutor(1, "damage-smp-first-read")
    try:
        first = early.submit(read_image, todo[0].source, max_pixels) if todo else None
        return first, load_model(*model_args)
    finally:
        early.shutdown(wait=False)


def load_model(run_dir: str | Path, checkpoint: str, backend: str | None, device: str):
    """-> (bundle, backend, device): a run dir's checkpoint (backend torch unless given), or an exported ONNX
    file with its sidecar (``predict MODEL.onnx``: backend onnxruntime, on the CPU)."""
    if is_exported_model(run_dir):
        if backend not in (None, "onnxruntime"):
            raise ValueError(f"{run_dir}: an ONNX file runs on --backend onnxruntime; drop --backend {backend}")
        check_backend("onnxruntime", device)
        if checkpoint != "best":
            raise ValueError(f"--checkpoint {checkpoint}: only for a run dir; {run_dir} is one exported model")
        exported = load_exported(run_dir)
        return exported, "onnxruntime", exported.device
    backend = backend or "torch"
    dev = device_for_rank(check_backend(backend, device))
    return load_bundle(run_dir, checkpoint, dev), backend, dev


def _settings(run_dir: str | Path, checkpoint: str, bundle: Loaded, rule: Decision, sizes: dict, **tiling) -> dict:
    """predict.json: what made these predictions (a later batch into the same folder must match its
    SETTINGS_COMPARED; not the backend, which gives the same masks, so a batch may resume on the other one)."""
    return {
        "run_dir": str(Path(run_dir).resolve()),
        "checkpoint": checkpoint,
        "checkpoint_path": str(bundle.checkpoint_path),
        "epoch": bundle.epoch,
        **tiling,
        "decision": rule.kind,
        "threshold": rule.threshold,
        "min_area": {bundle.scheme.names[c]: px for c, px in sizes.items()},
        "label_scheme": bundle.scheme.to_dict(),
    }


def _check_out(out: Path, jobs: list[Job], kinds: Sequence[str], k: int, n: int) -> list[dict | None]:
    """Refuse a file as --out, or files there that predict would write but did not -> each job's record."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; give a folder for the masks (it is created if missing)")
    records = [read_record(j) for j in jobs]
    check_nothing_foreign(out, jobs, records, kinds, batch_tables(out, k, n))
    return records


def _prepare_out(out: Path, settings: dict, bundle: Loaded, overwrite: bool, k: int, n: int) -> None:
    """Create ``out``, refusing predictions made differently; shard 1 writes the batch-wide files
    (so shards never write the same file); a shard's stale areas table goes, so no merge ever joins it."""
    check_previous_settings(out, settings, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    if k == 1:
        write_json(out / "predict.json", settings)
        legend = out / "legend.png"
        if overwrite or not legend.is_file() or legend.stat().st_size == 0:
            write_image(legend, legend_image(bundle.scheme))
    if n > 1:
        batch_tables(out, k, n)[0].unlink(missing_ok=True)  # rebuilt when this shard is done


def _merge(out: Path, console: Console) -> bool:
    """Every shard is done (this one last): join the tables, as --merge-areas would. -> merged?"""
    try:
        merge_areas(out)
        return True
    except ValueError as e:  # e.g. stale tables of another N: this shard's own work is still done
        console.print(f"[yellow]not merged:[/] {escape(e)}")
        return False


def _announce(console: Console, n_todo: int, n_skipped: int, shard: tuple[int, int], model: str, overwrite: bool):
    where = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    console.print(
        f"predicting {n_todo} image(s){where} with {model}; {n_skipped} already finished"
        + ("" if overwrite else " (--overwrite redoes them)")
    )


def _rule_text(rule: Decision) -> str:
    return f"damage threshold {rule.threshold:.3f} from thresholds.json" if rule.kind == "tuned" else "argmax"


def device_for_rank(name: str) -> torch.device:
    """--device, and under torchrun on CUDA the GPU of this rank (cuda:LOCAL_RANK)."""
    device = torch.device(resolve_device(name))
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # so cuDNN workspaces and autocast live on this rank's GPU
    return device


def check_previous_settings(out: Path, settings: dict, overwrite: bool) -> None:
    """Refuse to mix predictions of another run, checkpoint or tiling into one output folder."""
    if overwrite or not predict_json_is_ours(out):  # an empty predict.json (nothing to compare) is replaced
        return
    old = read_json(out / "predict.json")
    was = {k: old.get(k, SETTINGS_DEFAULTS.get(k)) for k in SETTINGS_COMPARED}
    diffs = [f"{k} {was[k]!r} -> {settings[k]!r}" for k in SETTINGS_COMPARED if was[k] != settings[k]]
    if diffs:
        raise ValueError(
            f"{out}: holds predictions made differently ({'; '.join(diffs)}); "
            "use another --out, or --overwrite to redo these images"
        )


class Pipeline:
    """Read ahead, predict, write behind; bounded queues on both sides (see the package docstring)."""

    def __init__(self, bundle: Loaded, kinds, overwrite: bool, max_pixels: int, workers: int, options,
                 min_area: dict[int, int] | None = None, first: Future | None = None):  # fmt: skip
        self.bundle, self.kinds, self.overwrite = bundle, kinds, overwrite
        self.max_pixels, self.workers, self.options = max_pixels, workers, options
        self.min_area = min_area or {}
        self.first = first  # the first job's image, already being read (``predict`` starts it before the model)

    def run(self, jobs: list[Job], console: Console, show_progress: bool = True):
        """-> (images written, [(path, error)]), in input order."""
        progress = progress_bar(console, enabled=show_progress, transient=False)
        with (
            ThreadPoolExecutor(self.workers, "damage-smp-read") as readers,
            ThreadPoolExecutor(self.workers, "damage-smp-write") as writers,
            progress,
        ):
            batch = _Batch(self, jobs, readers, writers, progress)
            batch.read_more()
            while batch.reads:
                batch.predict_next()
            while batch.writes:
                batch.finish_write()
        batch.failures.sort()
        return batch.done, batch.failures

    def predict_one(self, image: np.ndarray, progress: Progress) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """-> (the (H, W) uint8 class map, cleaned up; the confidence maps --save asks for)."""
        tiles = None
        scheme = self.bundle.scheme
        maps = confidence_maps(self.kinds, image.shape[:2])
        fill = block_filler(maps, scheme.damage_indices, scheme.num_classes) if maps else None

        def on_tiles(n_done: int, total: int) -> None:
            nonlocal tiles
            if tiles is None and total >= TILE_PROGRESS_MIN:
                tiles = progress.add_task("  tiles", total=total)
            if tiles is not None:
                progress.update(tiles, completed=n_done)

        try:
            index = predict_image(self.bundle, image, progress=on_tiles, on_block=fill,
                                  flip_entropy="uncertainty" in maps, **self.options)  # fmt: skip
            if self.min_area:
                remove_small(index, self.min_area, fill_class(scheme))
            return index, maps
        finally:
            if tiles is not None:
                progress.remove_task(tiles)


class _Batch:
    """One ``Pipeline.run``: the jobs not yet read, the reads and writes in flight, what was done and failed."""

    def __init__(self, pipeline: Pipeline, jobs: list[Job], readers, writers, progress: Progress):
        self.pipeline, self.readers, self.writers, self.progress = pipeline, readers, writers, progress
        self.pending = iter(jobs)
        self.upcoming: list[tuple[Job, int]] = []  # the next job and its pixels (from its header), waiting for room
        self.reads: deque[tuple[Job, int, Future]] = deque()
        self.writes: deque[tuple[Job, int, Future]] = deque()
        self.done = 0
        self.failures: list[tuple[str, str]] = []
        self.images = progress.add_task("images", total=len(jobs))

    def read_more(self) -> None:
        """Start decoding the next images while there is room among the reads."""
        p = self.pipeline
        while True:
            if not self.upcoming:
                nxt = next(self.pending, None)
                if nxt is None:
                    return
                self.upcoming.append((nxt, _header_pixels(nxt.source)))  # read once, however long it waits
            pixels = self.upcoming[0][1]
            if not _room(self.reads, pixels, p.workers):
                return
            job, _ = self.upcoming.pop()
            fut, p.first = p.first, None  # the first image's read, started before the model loaded
            fut = fut or self.readers.submit(read_image, job.source, p.max_pixels)
            self.reads.append((job, pixels, fut))

    def predict_next(self) -> None:
        """Predict the oldest read image and hand it to a writer (after waiting for room among the writes)."""
        p = self.pipeline
        job, _, fut = self.reads.popleft()
        self.read_more()  # decode the next image(s) while this one is predicted
        self.progress.update(self.images, description=escape(_shorten(job.source.name)))
        try:
            image = fut.result()  # (H, W, 3) uint8 RGB
            index, maps = p.predict_one(image, self.progress)  # (H, W) uint8 class indices, confidence maps
        except Exception as e:  # unreadable, empty, not an image, out of memory: report, go on
            self.failures.append((str(job.source), _describe(e)))
            self.progress.advance(self.images)
            return
        while self.writes and not _room(self.writes, image.shape[0] * image.shape[1], p.workers):
            self.finish_write()
        args = (job, image, index, p.bundle.scheme, p.kinds, p.overwrite, maps)
        # the writer owns image and index from here (it tints the image in place); returning drops ours
        self.writes.append((job, index.size, self.writers.submit(write_outputs, *args)))

    def finish_write(self) -> None:
        job, _, fut = self.writes.popleft()
        try:
            fut.result()
            self.done += 1
        except Exception as e:  # a full disk, an unwritable folder: this image fails, the batch goes on
            self.failures.append((str(job.source), _describe(e)))
        self.progress.advance(self.images)


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
