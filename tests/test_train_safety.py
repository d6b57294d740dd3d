"""train never loses a user's files: staged runs, guarded --overwrite, failed set-ups, memory, leakage, state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.config import TrainConfig
from damage_smp.runs import read_state, write_state
from damage_smp.train import train

TINY = dict(
    encoder="resnet18", encoder_weights="none", epochs=1, samples_per_epoch=4, batch_size=4, crop_size=64,
    tile=64, num_workers=0, warmup_iters=1, samples=1, seed=0,
)  # fmt: skip


def cfg_for(manifest: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(manifest=str(manifest), out_dir=str(out), name="r", **{**TINY, **kw})


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def test_overwrite_refuses_a_folder_that_is_not_a_run(tiny_manifest, tmp_path):
    out = tmp_path / "exp"
    mine = out / "r"
    mine.mkdir(parents=True)
    (mine / "thesis.docx").write_bytes(b"years of work")
    result = CliRunner().invoke(app, ["train", "--manifest", str(tiny_manifest), "--out-dir", str(out), "--name", "r",
                                      "--overwrite", "--encoder", "resnet18", "--encoder-weights", "none"])  # fmt: skip
    assert result.exit_code == 1
    assert "not a damage-smp run directory" in result.output and "Traceback" not in result.output
    assert (mine / "thesis.docx").read_bytes() == b"years of work"
    assert leftovers(out) == []


def test_a_failing_overwrite_keeps_the_old_run(tiny_manifest, tmp_path):
    out = tmp_path / "exp"
    old = train(cfg_for(tiny_manifest, out))
    before = (old / "checkpoints" / "last.pt").read_bytes()
    bad = cfg_for(tiny_manifest, out, overwrite=True, encoder_weights=str(tmp_path / "missing.pt"))
    with pytest.raises((FileNotFoundError, ValueError)):
        train(bad)
    assert (old / "checkpoints" / "last.pt").read_bytes() == before
    assert json.loads((old / "state.json").read_text())["status"] == "finished"
    assert leftovers(out) == []  # the staging folder of the failed run is gone


def test_overwrite_replaces_a_run_only_once_the_new_one_started(tiny_manifest, tmp_path):
    out = tmp_path / "exp"
    train(cfg_for(tiny_manifest, out, seed=0))
    with pytest.raises(FileExistsError, match="--overwrite"):
        train(cfg_for(tiny_manifest, out, seed=1))
    run = train(cfg_for(tiny_manifest, out, seed=1, overwrite=True))
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 1
    assert leftovers(out) == []


def test_a_failed_setup_leaves_nothing_and_the_rerun_just_works(tiny_manifest, tmp_path):
    out = tmp_path / "exp"
    with pytest.raises((FileNotFoundError, ValueError)):
        train(cfg_for(tiny_manifest, out, encoder_weights=str(tmp_path / "missing.pt")))
    assert not (out / "r").exists() and leftovers(out) == []
    run = train(cfg_for(tiny_manifest, out))  # same name, no --overwrite needed
    assert (run / "checkpoints" / "best.pt").is_file()


def test_a_half_made_run_from_before_is_replaced_and_resume_says_what_works(tiny_manifest, tmp_path):
    out = tmp_path / "exp"
    half = out / "r"
    (half / "checkpoints").mkdir(parents=True)
    (half / "config.json").write_text(json.dumps({"config_version": 1, "train": {}}))
    with pytest.raises(FileNotFoundError, match="start it again without --resume"):
        train(cfg_for(tiny_manifest, out), resume=half)
    run = train(cfg_for(tiny_manifest, out))
    assert (run / "checkpoints" / "last.pt").is_file()


def test_a_step_that_cannot_fit_is_refused_with_numbers(tiny_manifest, tmp_path):
    out = tmp_path / "exp"
    result = CliRunner().invoke(app, ["train", "--manifest", str(tiny_manifest), "--out-dir", str(out), "--name",
                                      "big", "--crop-size", "8192", "--batch-size", "64", "--encoder", "resnet18",
                                      "--encoder-weights", "none", "--num-workers", "0"])  # fmt: skip
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--crop-size 8192 with --batch-size 64" in result.output and "GB" in result.output
    assert "use --crop-size" in result.output
    assert not (out / "big").exists() and leftovers(out) == []


def test_running_state_of_a_dead_process_reads_as_killed(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_state(tmp_path / "state.json", "running", 3)
    data = json.loads((tmp_path / "state.json").read_text())
    assert read_state(tmp_path)["status"] == "running"  # this process is alive
    data["pid"] = int(proc.stdout)
    (tmp_path / "state.json").write_text(json.dumps(data))
    state = read_state(tmp_path)
    assert state["status"] == "killed" and state["epoch"] == 3


def duplicate_manifest(manifest: Path) -> Path:
    lines = manifest.read_text().splitlines()
    first_train = lines[1]
    leaked = first_train.rsplit(",", 2)[0] + ",test," + first_train.rsplit(",", 1)[1]
    path = manifest.with_name("leaky.csv")
    path.write_text("\n".join([*lines, leaked]) + "\n")
    return path


def test_train_refuses_an_image_in_two_splits_as_check_does(tiny_manifest, tmp_path):
    leaky = duplicate_manifest(tiny_manifest)
    check = CliRunner().invoke(app, ["manifest", "check", str(leaky)])
    assert check.exit_code == 1 and "leakage between splits" in check.output
    result = CliRunner().invoke(app, ["train", "--manifest", str(leaky), "--out-dir", str(tmp_path / "exp")])
    assert result.exit_code == 1 and "leakage between splits" in result.output and "--allow-leakage" in result.output
    assert not (tmp_path / "exp").exists() or not any((tmp_path / "exp").iterdir())


def test_allow_leakage_warns_and_trains(tiny_manifest, tmp_path):
    leaky = duplicate_manifest(tiny_manifest)
    run = train(cfg_for(leaky, tmp_path / "exp", allow_leakage=True))
    assert (run / "checkpoints" / "best.pt").is_file()


def test_usage_errors_exit_2_as_documented():
    result = CliRunner().invoke(app, ["train", "--no-such-flag"])
    assert result.exit_code == 2
    docs = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    assert "exit code 2" in docs


def test_compare_shows_a_killed_run_as_killed(tiny_manifest, tmp_path):
    from damage_smp.compare.reading import read_run

    run = train(cfg_for(tiny_manifest, tmp_path / "exp"))
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**state, "status": "running", "pid": int(proc.stdout)}))
    row = read_run(run, "r", "test", "damage_miou")
    assert row["status"] == "killed" and "--resume" in row["note"]


def test_resume_removes_temp_files_a_killed_run_left(tiny_manifest, tmp_path):
    run = train(cfg_for(tiny_manifest, tmp_path / "exp"))
    stale = [run / "checkpoints" / ".last.pt.ab12cd34.tmp", run / ".history.csv.zz99yy88.tmp"]
    for f in stale:
        f.write_bytes(b"half a write")
    mine = run / "notes.tmp"
    mine.write_text("not ours")
    train(cfg_for(tiny_manifest, tmp_path / "exp", epochs=2), resume=run)
    assert not any(f.exists() for f in stale) and mine.exists()
