"""train --time-budget: the steps are planned from measured throughput; the run stops cleanly within budget."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pandas as pd
import pytest
from typer.testing import CliRunner

from damage_smp.budget import TimeBudget
from damage_smp.cli import app
from damage_smp.compare import compare
from damage_smp.config import TrainConfig, parse_duration
from damage_smp.train import train

TINY = dict(
    encoder="resnet18", encoder_weights="none", samples_per_epoch=8, batch_size=4, crop_size=64, tile=64,
    num_workers=0, warmup_iters=2, samples=0, seed=0,
)  # fmt: skip


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("20m", 1200), ("1.5h", 5400), ("45", 45), (" 2M ", 120)])
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "0m", "-5m", "ten minutes", "5d", ""])
def test_bad_budget_is_one_line_naming_the_flag(tiny_manifest, tmp_path, text):
    args = ["train", "--manifest", str(tiny_manifest), "--out-dir", str(tmp_path / "exp"), "--time-budget", text]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --time-budget:") and "20m" in lines[0]
    assert not (tmp_path / "exp").exists()  # refused before any run directory


def test_plan_fills_the_budget_with_steps_and_validations():
    """30 s budget, 0.1 s per step, 1 s per validation every 10-step epoch: (30 - t - 1) / (0.1 + 0.1) steps."""
    b = TimeBudget.from_text("30s", start_step=0, steps_per_epoch=10, val_every=1)
    b.t0 = time.perf_counter() - 4.0  # 4 s gone: 3 s of 30 steps, 1 s of one validation
    b.steps, b.val_s, b.first_step_s = 30, [1.0], 0.1
    b.epoch_end()  # window (3 s) over and a validation timed: the plan is fixed
    assert b.fixed_total is not None and abs(b.fixed_total - (30 + (30 - 4 - 1) / 0.2)) <= 1
    assert b.total() == b.fixed_total


def test_budgeted_run_stops_within_budget_and_resumes_with_a_new_one(tiny_manifest, tmp_path):
    cfg = TrainConfig(manifest=str(tiny_manifest), out_dir=str(tmp_path), name="b", time_budget="4s", **TINY)
    t0 = time.perf_counter()
    run = train(cfg)
    took = time.perf_counter() - t0
    config = json.loads((run / "config.json").read_text())
    (entry,) = config["budget"]
    assert config["train"]["time_budget"] == "4s" and entry["seconds"] == 4
    hist = pd.read_csv(run / "history.csv")
    assert entry["steps"] == hist["steps"].iloc[-1] == entry["planned_steps"] >= 1
    assert entry["epochs"] == hist["epoch"].iloc[-1] and not pd.isna(hist["val_miou"].iloc[-1])  # final validation
    # the steps stop within the budget (at least one step is always taken), then one validation and the records
    # (checkpoints, curves; slow on a loaded machine, hence the generous bound on the whole call)
    assert hist["seconds"].sum() <= max(4, entry["first_step_s"]) + 5
    assert entry["elapsed_s"] <= hist["seconds"].sum() + 2 * entry["val_s"] + 60 and took < 240
    assert (run / "checkpoints/last.pt").is_file() and (run / "checkpoints/best.pt").is_file()
    assert json.loads((run / "state.json").read_text())["status"] == "finished"

    train(replace(cfg, time_budget="2s"), resume=run)  # --resume RUN --time-budget 2s: a new budget
    config = json.loads((run / "config.json").read_text())
    first, second = config["budget"]
    assert second["time_budget"] == "2s" and second["start_step"] == first["steps"] < second["steps"]
    hist = pd.read_csv(run / "history.csv")
    assert hist["epoch"].iloc[-1] == second["epochs"] > first["epochs"]

    result = compare([tmp_path], out=tmp_path / "cmp", plots=False)
    row = result.runs.set_index("name").loc["b"]
    assert row["time_budget"] == "2s" and row["steps"] == second["steps"] and row["epochs"] == second["epochs"]
    assert f"in 2s ({second['steps']} steps)" in (tmp_path / "cmp" / "compare.md").read_text()
