"""Training end to end on real (tiny) files: the run directory, resume, freezing schedules, DDP, NaN, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from damage_smp.checkpoints import load_checkpoint
from damage_smp.cli import app
from damage_smp.config import TrainConfig
from damage_smp.runs import read_run_config
from damage_smp.train import train

TINY = dict(
    encoder="resnet18", encoder_weights="none", epochs=2, samples_per_epoch=8, batch_size=4, crop_size=64,
    tile=64, num_workers=0, warmup_iters=2, samples=2, seed=0, deterministic=True,
)  # fmt: skip
CLI_TINY = [
    "--encoder", "resnet18", "--encoder-weights", "none", "--samples-per-epoch", "8", "--batch-size", "4",
    "--crop-size", "64", "--tile", "64", "--num-workers", "0", "--warmup-iters", "2", "--deterministic",
]  # fmt: skip
DETERMINISTIC_COLUMNS = ["epoch", "train_loss", "val_loss", "val_miou", "val_damage_miou", "lr"]


def _history(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "history.csv")


def test_cli_run_writes_exactly_the_run_directory(tiny_manifest, tmp_path):
    out = tmp_path / "exp"
    args = ["train", "--manifest", str(tiny_manifest), "--epochs", "2", "--out-dir", str(out), "--name", "r1"]
    result = CliRunner().invoke(app, args + CLI_TINY)
    assert result.exit_code == 0, result.output
    run = out / "r1"
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert files == [
        "checkpoints/best.pt", "checkpoints/last.pt", "config.json", "curves.png", "env.json", "history.csv",
        "pr_curve_val.png", "samples/img08.jpg", "samples/img09.jpg", "state.json", "thresholds.json",
    ]  # fmt: skip
    cfg, scheme, model_info = read_run_config(run)
    assert cfg.epochs == 2 and cfg.encoder == "resnet18" and scheme.name == "artefact"
    assert model_info["weights_source"] == "none" and model_info["params_total"] > 1e6
    env = json.loads((run / "env.json").read_text())
    assert env["versions"]["torch"] and len(env["manifest_sha256"]) == 64
    hist = _history(run)
    assert list(hist["epoch"]) == [1, 2]
    assert (hist["train_loss"] > 0).all() and hist["val_miou"].between(0, 1).all()
    assert (hist["img_per_s"] > 0).all() and (hist["peak_mem_mb"] > 0).all()
    assert json.loads((run / "state.json").read_text())["status"] == "finished"
    last = load_checkpoint(run / "checkpoints/last.pt")
    assert last["epoch"] == 2 and set(last) >= {"model", "optimizer", "scheduler", "scaler", "rng", "config"}
    best = load_checkpoint(run / "checkpoints/best.pt")  # the weights, without what only a resume needs
    assert best["epoch"] in (1, 2) and {"model", "config", "history"} <= set(best)
    assert not {"optimizer", "scaler", "rng"} & set(best)
    assert (run / "checkpoints/best.pt").stat().st_size < 0.5 * (run / "checkpoints/last.pt").stat().st_size

    # the same name again is refused, nothing is touched; --overwrite replaces it
    before = (run / "history.csv").stat().st_mtime_ns
    again = CliRunner().invoke(app, args + CLI_TINY)
    assert again.exit_code == 1 and "already exists" in again.output and "--overwrite" in again.output
    assert (run / "history.csv").stat().st_mtime_ns == before


def test_resume_continues_exactly(tiny_manifest, tmp_path):
    """2 epochs + --resume to 4 == 4 straight epochs: model, optimizer, RNG, data stream and step all continue.

    A constant schedule, because poly/cosine decay is planned over --epochs: extending a finished run stretches
    it (an interrupted run resumes its own schedule exactly: see the kill -9 test).
    """
    base = TrainConfig(manifest=str(tiny_manifest), out_dir=str(tmp_path), schedule="constant", **{**TINY, "epochs": 4})
    straight = train(replace(base, name="straight"))
    part = train(replace(base, name="part", epochs=2))
    train(replace(base, name="part"), resume=part)  # what `train --resume part --epochs 4` runs
    a, b = _history(straight), _history(part)
    assert list(b["epoch"]) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(a[DETERMINISTIC_COLUMNS], b[DETERMINISTIC_COLUMNS], check_exact=False, rtol=1e-5)


def test_unfreeze_at_changes_the_encoder_only_from_that_epoch(tmp_path, tiny_manifest):
    weights = tmp_path / "enc.pth"
    import segmentation_models_pytorch as smp

    torch.save(smp.Unet("resnet18", encoder_weights=None).encoder.state_dict(), weights)
    cfg = TrainConfig(
        manifest=str(tiny_manifest), out_dir=str(tmp_path), name="f", **{**TINY, "encoder_weights": str(weights)},
        freeze_encoder=True, unfreeze_at=2, save_every=1,
    )  # fmt: skip
    run = train(cfg)
    e0 = load_checkpoint(run / "checkpoints/epoch_001.pt")["model"]
    e2 = load_checkpoint(run / "checkpoints/epoch_002.pt")["model"]
    loaded = torch.load(weights, weights_only=True)
    conv, bn = "net.encoder.layer1.0.conv1.weight", "net.encoder.layer1.0.bn1.running_mean"
    assert torch.equal(e0[conv], loaded["layer1.0.conv1.weight"])  # frozen in epoch 1: weights
    assert torch.equal(e0[bn], loaded["layer1.0.bn1.running_mean"])  # ... and BatchNorm statistics
    assert not torch.equal(e2[conv], e0[conv]) and not torch.equal(e2[bn], e0[bn])  # fine-tuned from epoch 2
    assert list(_history(run)["frozen"]) == [True, False]


def test_nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tiny_manifest, tmp_path):
    args = ["train", "--manifest", str(tiny_manifest), "--epochs", "3", "--out-dir", str(tmp_path), "--name", "nan"]
    result = CliRunner().invoke(app, args + CLI_TINY + ["--lr", "1e30", "--grad-clip", "0", "--warmup-iters", "0"])
    assert result.exit_code == 1
    assert "loss became" in result.output and "last.pt" in result.output
    assert "Traceback" not in result.output
    state = json.loads((tmp_path / "nan/state.json").read_text())
    assert state["status"] == "failed"
    load_checkpoint(tmp_path / "nan/checkpoints/last.pt")  # still a readable, resumable checkpoint


def test_offline_imagenet_download_fails_fast_with_the_fixes(tiny_manifest, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["train", "--manifest", str(tiny_manifest), "--out-dir", str(tmp_path), "--encoder", "resnet34",
            "--encoder-weights", "imagenet", "--epochs", "1"]  # fmt: skip
    t0 = time.monotonic()
    result = CliRunner().invoke(app, args)
    assert time.monotonic() - t0 < 10
    assert result.exit_code == 1
    assert "tu-efficientnet_lite0" in result.output and "--encoder-weights none" in result.output


def _cli_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("DAMAGE_SMP_DEBUG", None)
    return env


def test_two_process_gloo_ddp_makes_one_run(tiny_manifest, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29581",
           "-m", "damage_smp", "train", "--manifest", str(tiny_manifest), "--epochs", "1", "--out-dir",
           str(tmp_path / "exp"), "--device", "cpu", *CLI_TINY]  # fmt: skip
    proc = subprocess.run(cmd, env=_cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = list((tmp_path / "exp").iterdir())
    assert len(runs) == 1
    assert json.loads((runs[0] / "env.json").read_text())["world_size"] == 2
    assert list(_history(runs[0])["epoch"]) == [1]


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_final_metrics(tiny_manifest, tmp_path):
    base = ["-m", "damage_smp", "train", "--manifest", str(tiny_manifest), "--epochs", "4", "--out-dir", str(tmp_path)]
    straight = subprocess.run([sys.executable, *base, "--name", "straight", *CLI_TINY], env=_cli_env(),
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = subprocess.Popen([sys.executable, *base, "--name", "killed", *CLI_TINY], env=_cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    history = tmp_path / "killed" / "history.csv"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (history.exists() and len(history.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert len(history.read_text().splitlines()) < 5, "the run finished before it could be killed"
    resume = [sys.executable, "-m", "damage_smp", "train", "--resume", str(tmp_path / "killed"), "--epochs", "4"]
    resumed = subprocess.run(resume, env=_cli_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _history(tmp_path / "straight"), _history(tmp_path / "killed")
    pd.testing.assert_frame_equal(a[DETERMINISTIC_COLUMNS], b[DETERMINISTIC_COLUMNS], check_exact=False, rtol=1e-5)
