"""predict's lanes: one-tile images two at a time on a CPU, each forward on its share of the threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_pair

from damage_smp.images import write_image
from damage_smp.predict import predict, stages
from damage_smp.predict.lanes import LANE_MAX_PIXELS, LANES, Lanes, fits_a_lane, lane_count

FAST = dict(tile=64, overlap=0.25, batch_size=8, device="cpu", workers=2)


@pytest.fixture
def two_threads():
    """torch at two intra-op threads for the test (xdist workers may run at one), as it was afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _inputs(folder: Path) -> list[Path]:
    """Five 64 x 64 images (one tile of 64 each), one 96 x 128 scan (6 tiles) in the middle, one unreadable file."""
    rng = np.random.default_rng(3)
    paths = []
    for i, size in enumerate([(64, 64), (64, 64), (64, 64), (96, 128), (64, 64), (64, 64)]):
        paths.append(folder / f"in{i}.png")
        write_image(paths[-1], make_pair(rng, size=size)[0])
    (folder / "broken.png").write_bytes(b"not a png")
    return [*paths, folder / "broken.png"]


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("in*_*.png"))}


def test_lanes_predict_what_one_thread_predicts_at_once_and_give_the_threads_back(
    shared_run, tmp_path, monkeypatch, two_threads
):
    """With two threads, one-tile images run two at a time in lanes of one thread each: their masks are byte for
    byte those of a one-thread predict; the bigger scan runs on the calling thread with both threads (its masks
    are those of lanes=1 at two threads); the unreadable file is reported; the thread counts are as before."""
    paths = _inputs(tmp_path)
    seen, together = [], threading.Barrier(2, timeout=30)  # the first two images must be in their lanes at once
    real = stages.Pipeline.predict_one

    def watched(self, image, progress):
        seen.append((image.shape[:2], threading.current_thread().name, torch.get_num_threads()))
        if len(seen) <= 2:
            together.wait()  # a BrokenBarrierError (the image's failure) unless both are predicted at the same time
        return real(self, image, progress)

    monkeypatch.setattr(stages.Pipeline, "predict_one", watched)
    result = predict(shared_run, paths, tmp_path / "lanes", lanes=2, **FAST)
    assert result.n_done == 6 and [Path(p).name for p, _ in result.failures] == ["broken.png"]
    in_lanes = [(name.startswith("damage-smp-lane"), n) for shape, name, n in seen if shape == (64, 64)]
    assert in_lanes == [(True, 1)] * 5
    assert [(name, n) for shape, name, n in seen if shape == (96, 128)] == [(threading.current_thread().name, 2)]

    assert torch.get_num_threads() == 2  # this thread's count, and the one a new thread starts with
    fresh = []
    worker = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    assert fresh == [2]

    monkeypatch.setattr(stages.Pipeline, "predict_one", real)
    here = predict(shared_run, paths, tmp_path / "here-2", lanes=1, **FAST)  # every image here, two threads
    torch.set_num_threads(1)
    one = predict(shared_run, paths, tmp_path / "here-1", lanes=1, **FAST)  # every image here, one thread
    assert here.n_done == one.n_done == 6
    lanes, two_threads_here, one_thread = (_files(tmp_path / d) for d in ("lanes", "here-2", "here-1"))
    assert len(lanes) == 12 and sorted(lanes) == sorted(one_thread) == sorted(two_threads_here)
    for name, data in lanes.items():
        reference = two_threads_here if name.startswith("in3_") else one_thread  # in3: the 6-tile scan
        assert data == reference[name], name


def test_an_error_in_a_lane_is_that_images_failure(shared_run, tmp_path, monkeypatch, two_threads):
    """Also: with two threads on a CPU, predict uses the lanes by default (no ``lanes=`` given)."""
    paths = _inputs(tmp_path)[:3]
    real = stages.Pipeline.predict_one
    calls = []

    def failing_second(self, image, progress):
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            raise RuntimeError("out of memory in a lane")
        return real(self, image, progress)

    monkeypatch.setattr(stages.Pipeline, "predict_one", failing_second)
    result = predict(shared_run, paths, tmp_path / "out", **FAST)
    assert result.n_done == 2 and len(result.failures) == 1
    assert "out of memory in a lane" in result.failures[0][1]
    assert all(name.startswith("damage-smp-lane") for name in calls)
    assert torch.get_num_threads() == 2


def test_lane_count_only_for_the_torch_backend_on_a_cpu_with_threads_to_share():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert lane_count(cpu, "torch", threads=2) == LANES == 2
    assert lane_count(cpu, "torch", threads=16) == 2
    assert lane_count(cpu, "torch", threads=1) == 1  # nothing to share
    assert lane_count(cuda, "torch", threads=16) == 1  # the GPU queues its kernels anyway
    assert lane_count(cpu, "onnxruntime", threads=16) == 1  # ONNX Runtime runs its own thread pool


def test_only_small_one_tile_images_fit_a_lane():
    assert fits_a_lane(384, 512, 512, 0.5) and fits_a_lane(64, 64, 64, 0.25)
    assert not fits_a_lane(96, 128, 64, 0.25)  # 6 tiles: blended, on all the threads
    assert LANE_MAX_PIXELS == 1024 * 1024 and fits_a_lane(1024, 1024, 1024, 0.5)
    assert not fits_a_lane(1024, 1056, 2048, 0.5)  # one tile, but two such forwards at once would double the memory


def test_lanes_split_the_threads_and_restore_them_on_error(two_threads):
    with pytest.raises(RuntimeError, match="boom"):  # noqa: PT012 - the lanes' work, then the block's error
        with Lanes(2) as lanes:
            assert lanes.submit(torch.get_num_threads).result() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
    torch.set_num_threads(4)
    with Lanes(2) as lanes:
        assert {lanes.submit(torch.get_num_threads).result() for _ in range(4)} == {2}
    assert torch.get_num_threads() == 4
