"""Small images two at a time on a CPU: two prediction lanes, each running its forwards on half the threads.

A one-tile image (up to ``--tile`` on each side and at most 1 MP: the usual photograph, page or validation
image) is too small to keep two cores busy inside one forward: its many small layers each split the work and
then wait for every thread. Two such images predicted at once, each on one intra-op thread, took 0.88–0.93×
the time of the same forwards one after another on two threads (Unet-lite0, 512 × 384, 2 cores;
docs/prediction.md), and the softmax, decision and clean-up of one image run while the other is in its forward.

PyTorch's OpenMP thread count is per thread (``omp_set_num_threads`` sets the calling thread's count; MKL's
is per thread too), so each lane sets its own in its thread and the caller's stays as it was. It also sets the
default that threads started later begin with, which ``Lanes`` restores when it closes. With any other
parallel backend (TBB, PyTorch's native pool) the count is global, and ``lane_count`` answers one lane.

Big images (more than one tile, or above LANE_MAX_PIXELS) are not for lanes: the caller runs them itself, on
all the threads, once the lanes are idle, so memory stays that of one image's band and one forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from ..tiling import plan_tiles

LANES = 2  # two images at once: what was measured (2 cores); each lane holds one forward's activations
LANE_MAX_PIXELS = 1 << 20  # a bigger one-tile image (a --tile above 1024) keeps its threads busy on its own


@functools.cache
def _per_thread_counts() -> bool:
    """Does torch.set_num_threads act on the calling thread only? (PyTorch's OpenMP backend, the usual build.)"""
    return "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()


def fits_a_lane(h: int, w: int, tile: int, overlap: float) -> bool:
    """Is an h x w image one tile, and small enough to share the threads with another (LANE_MAX_PIXELS)?"""
    return h * w <= LANE_MAX_PIXELS and len(plan_tiles(h, w, tile, overlap).coords) == 1


def lane_count(device: torch.device, backend: str, threads: int | None = None) -> int:
    """How many images predict forwards at once: LANES for the PyTorch backend on a CPU with at least two
    threads (and per-thread counts), else 1 (a GPU queues its kernels anyway; ONNX Runtime has its own pool)."""
    threads = torch.get_num_threads() if threads is None else threads
    if device.type != "cpu" or backend != "torch" or threads < 2 or not _per_thread_counts():
        return 1
    return LANES


class Lanes:
    """``n`` threads that each run their work on ``threads // n`` intra-op threads; a context manager.

    ``submit(fn, *args) -> Future``. Leaving the block waits for the work in flight and restores the thread
    count that threads started later begin with (the lanes' ``set_num_threads`` changed it).
    """

    def __init__(self, n: int):
        self.threads = torch.get_num_threads()  # the caller's, shared out among the lanes
        self.n = n
        self.pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> Lanes:
        per_lane = max(1, self.threads // self.n)
        self.pool = ThreadPoolExecutor(self.n, "damage-smp-lane", initializer=torch.set_num_threads,
                                       initargs=(per_lane,))  # fmt: skip
        return self

    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        assert self.pool is not None, "Lanes.submit outside its with-block"
        return self.pool.submit(fn, *args, **kwargs)

    def __exit__(self, *exc) -> None:
        try:
            self.pool.shutdown(wait=True)
        finally:
            self.pool = None
            torch.set_num_threads(self.threads)  # this thread's count (unchanged) and new threads' default


def run_here(fn: Callable, *args, **kwargs) -> Future:
    """``fn(*args, **kwargs)`` in the calling thread, as a finished Future (its result or its exception)."""
    fut: Future = Future()
    try:
        fut.set_result(fn(*args, **kwargs))
    except Exception as e:  # handed on through the future, as a lane's would be
        fut.set_exception(e)
    return fut
