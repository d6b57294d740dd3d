"""compare keeps what it did not write, treats non-finite metrics as missing, finds linked runs; no clean class,
no damage-vs-clean scores."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_compare import make_run
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.compare import compare
from damage_smp.labels import LabelScheme
from damage_smp.metrics import ConfusionMatrix


@pytest.fixture
def two_runs(tmp_path):
    root = tmp_path / "experiments"
    make_run(root, "unet-resnet18-none-finetune-s0", weights="none", quality=0.5)
    make_run(root, "unet-resnet18-imagenet-finetune-s0", quality=0.8)
    return root


def test_a_users_compare_md_is_never_replaced(two_runs, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "compare.md").write_text("my own notes on the comparison\n")
    for extra in ([], ["--overwrite"]):
        result = CliRunner().invoke(app, ["compare", str(two_runs), "--out", str(out), *extra])
        assert result.exit_code == 1 and "not written by damage-smp compare" in result.output
    assert (out / "compare.md").read_text() == "my own notes on the comparison\n"


def test_an_earlier_comparison_is_replaced_only_with_overwrite(two_runs, tmp_path):
    out = tmp_path / "cmp"
    compare([two_runs], out=out, plots=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        compare([two_runs], out=out, plots=False)
    compare([two_runs], out=out, plots=False, overwrite=True)
    assert json.loads((out / "compare.json").read_text())["written_by"] == "damage-smp compare"


def test_non_finite_metrics_are_missing_with_a_note(two_runs, tmp_path):
    run = two_runs / "unet-resnet18-imagenet-finetune-s0"
    text = (run / "metrics.json").read_text()
    data = json.loads(text)
    data["test"]["summary"]["damage_miou"] = math.inf
    (run / "metrics.json").write_text(json.dumps(data))  # json writes Infinity
    result = compare([two_runs], out=tmp_path / "c", plots=False)
    row = result.runs.set_index("name").loc[run.name]
    assert math.isnan(row["damage_miou"]) and math.isnan(row["metric"])
    assert "non-finite damage_miou" in row["note"]
    assert not np.isinf(result.runs["delta"].astype(float)).any()


def test_a_linked_run_dir_is_found(two_runs, tmp_path):
    elsewhere = tmp_path / "disk2"
    real = make_run(elsewhere, "unet-resnet18-imagenet-finetune-s1", seed=1, quality=0.7)
    (two_runs / "linked").symlink_to(real, target_is_directory=True)
    result = compare([two_runs], out=tmp_path / "c", plots=False)
    assert "linked" in set(result.runs["name"])


def test_no_clean_class_means_no_damage_vs_clean_scores():
    classes = [{"name": f"d{i}", "color": f"#0000{i:02X}", "values": [i], "damage": True} for i in range(3)]
    scheme = LabelScheme.from_dict({"classes": classes, "clean": None})
    cm = ConfusionMatrix(3, device="cpu")
    target = torch.tensor([[0, 1, 2, 2]])
    cm.update(target.clone(), target)
    summary = cm.summary(scheme)
    assert math.isnan(summary["damage_iou"]) and math.isnan(summary["damage_f1"])
    assert summary["damage_miou"] == 1.0  # per-class scores still exist
