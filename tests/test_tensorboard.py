"""train --tensorboard: an events file with the per-epoch scalars; a clear line when the package is missing."""

from __future__ import annotations

import importlib.util

import pytest
from test_train import CLI_TINY, TINY
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.config import TrainConfig
from damage_smp.train import train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def test_tensorboard_writes_the_scalars_of_every_epoch(tiny_manifest, tmp_path):
    run = train(TrainConfig(manifest=str(tiny_manifest), out_dir=str(tmp_path), name="tb", tensorboard=True, **TINY))
    logdir = run / "tensorboard"
    assert list(logdir.glob("events.out.tfevents.*"))
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "val/miou", "val/loss", "val/damage_miou", "train/lr"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2], tag
    assert any(t.startswith("class_iou/") for t in tags["scalars"])
    assert {"val/overlay_0", "val/overlay_1"} <= set(tags["images"])


def test_missing_tensorboard_is_one_line_before_any_run_dir(tiny_manifest, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    out = tmp_path / "exp"
    args = ["train", "--manifest", str(tiny_manifest), "--epochs", "1", "--out-dir", str(out), "--tensorboard"]
    result = CliRunner().invoke(app, args + CLI_TINY)
    assert result.exit_code == 1
    assert "pip install 'damage-smp[tensorboard]'" in result.output and "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())
