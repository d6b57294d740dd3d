"""The three stages of a predict batch: reader threads decode ahead, the sliding window predicts, writer threads
write; each side holds at most ``workers`` images and at most INFLIGHT_PIXELS beyond the first (see the package
docstring).

On a CPU, one-tile images are predicted two at a time (``lanes``), each on half the threads; any bigger image
is predicted on this thread with all of them, once the lanes are done, so memory stays that of one band.
"""

from __future__ import annotations

import contextlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from ..cleanup import fill_class, remove_small
from ..console import escape, progress_bar
from ..images import image_size, read_image
from ..models import ModelBundle
from ..thresholds import Decision
from ..tiling import predict_index
from .backend import ExportedModel
from .confidence import block_filler, confidence_maps
from .inputs import Job
from .lanes import Lanes, fits_a_lane, run_here
from .outputs import write_outputs

INFLIGHT_PIXELS = 50_000_000  # beyond the first image, each pipeline side holds at most this many pixels
TILE_PROGRESS_MIN = 16  # images with at least this many tiles get their own tile progress bar
Loaded = ModelBundle | ExportedModel  # a run's checkpoint, or an exported ONNX file with its sidecar


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


class Pipeline:
    """Read ahead, predict, write behind; bounded queues on both sides (see the package docstring)."""

    def __init__(self, bundle: Loaded, kinds, overwrite: bool, max_pixels: int, workers: int, options,
                 min_area: dict[int, int] | None = None, first: Future | None = None, lanes: int = 1):  # fmt: skip
        self.bundle, self.kinds, self.overwrite = bundle, kinds, overwrite
        self.max_pixels, self.workers, self.options = max_pixels, workers, options
        self.min_area = min_area or {}
        self.first = first  # the first job's image, already being read (``predict`` starts it before the model)
        self.lanes = lanes  # one-tile images predicted at once (``lanes``); 1: every image on this thread

    def run(self, jobs: list[Job], console: Console, show_progress: bool = True):
        """-> (images written, [(path, error)]), in input order."""
        progress = progress_bar(console, enabled=show_progress, transient=False)
        with (
            ThreadPoolExecutor(self.workers, "damage-smp-read") as readers,
            ThreadPoolExecutor(self.workers, "damage-smp-write") as writers,
            Lanes(self.lanes) if self.lanes > 1 else contextlib.nullcontext() as lanes,
            progress,
        ):
            batch = _Batch(self, jobs, readers, writers, progress, lanes)
            batch.read_more()
            while batch.reads:
                batch.predict_next()
            while batch.predicting:
                batch.finish_predict()
            while batch.writes:
                batch.finish_write()
        batch.failures.sort()
        return batch.done, batch.failures

    def fits_a_lane(self, image: np.ndarray) -> bool:
        return fits_a_lane(*image.shape[:2], self.options["tile"], self.options["overlap"])

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

    def __init__(self, pipeline: Pipeline, jobs: list[Job], readers, writers, progress: Progress,
                 lanes: Lanes | None = None):  # fmt: skip
        self.pipeline, self.readers, self.writers, self.progress = pipeline, readers, writers, progress
        self.lanes = lanes
        self.pending = iter(jobs)
        self.upcoming: list[tuple[Job, int]] = []  # the next job and its pixels (from its header), waiting for room
        self.reads: deque[tuple[Job, int, Future]] = deque()
        self.predicting: deque[tuple[Job, np.ndarray, Future]] = deque()  # in lanes, or done here, oldest first
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
        """Start predicting the oldest read image: a one-tile image in a free lane, beside the one before it;
        any other here, on all the threads, once the lanes are done (their images go to the writers first)."""
        p = self.pipeline
        job, _, fut = self.reads.popleft()
        self.read_more()  # decode the next image(s) while this one is predicted
        self.progress.update(self.images, description=escape(_shorten(job.source.name)))
        try:
            image = fut.result()  # (H, W, 3) uint8 RGB
        except Exception as e:  # unreadable, empty, not an image: report, go on
            self._fail(job, e)
            return
        if self.lanes is not None and p.fits_a_lane(image):
            while len(self.predicting) >= self.lanes.n:
                self.finish_predict()
            self.predicting.append((job, image, self.lanes.submit(p.predict_one, image, self.progress)))
            return
        while self.predicting:
            self.finish_predict()
        self.predicting.append((job, image, run_here(p.predict_one, image, self.progress)))
        self.finish_predict()

    def finish_predict(self) -> None:
        """Hand the oldest prediction to a writer (after waiting for room among the writes)."""
        p = self.pipeline
        job, image, fut = self.predicting.popleft()
        try:
            index, maps = fut.result()  # (H, W) uint8 class indices, confidence maps
        except Exception as e:  # out of memory, a model that fails on this size: report, go on
            self._fail(job, e)
            return
        while self.writes and not _room(self.writes, image.shape[0] * image.shape[1], p.workers):
            self.finish_write()
        args = (job, image, index, p.bundle.scheme, p.kinds, p.overwrite, maps)
        # the writer owns image and index from here (it tints the image in place); dropping ours
        self.writes.append((job, index.size, self.writers.submit(write_outputs, *args)))

    def _fail(self, job: Job, e: Exception) -> None:
        self.failures.append((str(job.source), _describe(e)))
        self.progress.advance(self.images)

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
