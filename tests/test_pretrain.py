"""damage-smp pretrain: restoration pre-training writes its run dir, resumes, and train starts from its weights."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.config import TrainConfig
from damage_smp.images import write_image
from damage_smp.models import build_model
from damage_smp.pretrain import PretrainConfig, pretrain
from damage_smp.pretrain.corrupt import corrupt, local_shuffle, out_paint
from damage_smp.pretrain.data import RestorationDataset
from damage_smp.pretrained import resolve_init
from damage_smp.rundir import kind_of
from damage_smp.runs import describe_init, is_run_dir, read_state

TINY = dict(arch="unet", encoder="resnet18", init="none", epochs=1, samples_per_epoch=4, crop_size=64, batch_size=4,
            num_workers=0, probe_crops=4, warmup_iters=1, device="cpu")  # fmt: skip
CLI_TINY = ["--encoder", "resnet18", "--init", "none", "--samples-per-epoch", "4", "--crop-size", "64",
            "--batch-size", "4", "--num-workers", "0", "--device", "cpu"]  # fmt: skip


def make_scans(folder: Path, n: int = 5) -> Path:
    """Unlabelled scans of different sizes, one smaller than the crop (padded)."""
    rng = np.random.default_rng(1)
    for i in range(n):
        h, w = (48, 80) if i == 0 else (64 + 8 * i, 72)
        image = np.full((h, w, 3), 180, np.uint8)
        image[h // 4 : h // 2, :] = rng.integers(20, 120, (h // 2 - h // 4, w, 3))  # a band of "ink"
        write_image(folder / f"scan{i}.png", image)
    return folder


@pytest.fixture(scope="module")
def pretrained(module_dir) -> Path:
    root = module_dir("pre")
    scans = make_scans(root / "scans")
    return pretrain(PretrainConfig(inputs=(str(scans),), out=str(root / "pt"), **TINY))


def encoder_decoder(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("net.") and "segmentation_head" not in k}


def train_cfg(tmp_path: Path, **kw) -> TrainConfig:
    return TrainConfig(manifest=str(tmp_path / "m.csv"), encoder="resnet18", **{"encoder_weights": "imagenet", **kw})


def test_pretrain_writes_a_run_dir_that_is_not_a_training_run(pretrained):
    for name in ("config.json", "env.json", "history.csv", "curves.png", "state.json", "inputs.csv", "encoder.pt",
                 "model.pt", "checkpoints/last.pt", "checkpoints/best.pt"):  # fmt: skip
        assert (pretrained / name).is_file(), name
    assert kind_of(pretrained) == "pretrain" and not is_run_dir(pretrained)  # compare never lists it
    assert read_state(pretrained)["status"] == "finished"
    marker = json.loads((pretrained / "pretrain.json").read_text())
    assert (marker["arch"], marker["encoder"], marker["init"], marker["epochs"]) == ("unet", "resnet18", "none", 1)
    lines = (pretrained / "history.csv").read_text().splitlines()
    assert len(lines) == 2 and all(np.isfinite(float(v)) for v in lines[1].split(",")[1:3])  # train, probe loss
    model, _ = build_model(replace(train_cfg(pretrained), encoder_weights="none"), 3, load_weights=False)
    model.load_state_dict(torch.load(pretrained / "model.pt", weights_only=True)["model"], strict=True)


def test_crops_pad_small_scans_and_corruption_is_seeded(tmp_path):
    scans = make_scans(tmp_path / "scans", n=1)  # 48 x 80 only: every crop is padded
    ds = RestorationDataset([str(scans / "scan0.png")], crop_size=64, samples_per_epoch=2, seed=3,
                            max_pixels=10**8, cache_mb=16, decode_cache=None)  # fmt: skip
    ds.set_epoch(1)
    item = ds[0]
    assert item["image"].shape == item["target"].shape == (3, 64, 64) and item["mask"].shape == (64, 64)
    assert (item["mask"] == 255).sum() == 64 * 64 - 48 * 64  # padding rows drop out of the loss
    assert torch.equal(ds[0]["image"], item["image"]) and not torch.equal(item["image"], item["target"])
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    shuffled = local_shuffle(crop, np.random.default_rng(1))
    assert np.array_equal(np.sort(shuffled.reshape(-1, 3), 0), np.sort(crop.reshape(-1, 3), 0))  # moved, not changed
    assert not np.array_equal(shuffled, crop)
    assert (out_paint(crop, np.random.default_rng(2)) == crop).all(-1).mean() > 0.15  # the kept boxes
    assert np.array_equal(corrupt(crop, np.random.default_rng(5)), corrupt(crop, np.random.default_rng(5)))


def test_init_from_loads_encoder_and_decoder_strictly_with_a_new_head(pretrained, tmp_path):
    saved = torch.load(pretrained / "model.pt", weights_only=True)["model"]
    cfg = resolve_init(train_cfg(tmp_path, init_from=str(pretrained)))
    assert cfg.encoder_weights == "none"  # the pre-train run's own init is recorded
    model, info = build_model(cfg, 16)
    state = model.state_dict()
    assert encoder_decoder(saved).keys() == encoder_decoder(state).keys()
    assert all(torch.equal(saved[k], state[k]) for k in encoder_decoder(saved))
    assert state["net.segmentation_head.0.weight"].shape[0] == 16  # a new head for the label scheme
    scratch, _ = build_model(replace(cfg, init_from=None), 16)
    assert not torch.equal(scratch.state_dict()["net.decoder.blocks.0.conv1.0.weight"],
                           state["net.decoder.blocks.0.conv1.0.weight"])  # fmt: skip
    assert info["pretrain"]["run"] == str(pretrained.resolve()) and len(info["weights_sha256"]) == 64
    assert describe_init(cfg, info) == f"pretrain:{pretrained.name}"


def test_encoder_weights_file_loads_the_encoder_alone(pretrained, tmp_path):
    saved = torch.load(pretrained / "model.pt", weights_only=True)["model"]
    model, info = build_model(train_cfg(tmp_path, encoder_weights=str(pretrained / "encoder.pt")), 16)
    state = model.state_dict()
    enc = [k for k in saved if k.startswith("net.encoder.")]
    assert enc and all(torch.equal(saved[k], state[k]) for k in enc)
    assert (info["weights_loaded"], info["weights_missing"], info["weights_unexpected"]) == (len(enc), 0, 0)
    assert not torch.equal(saved["net.decoder.blocks.0.conv1.0.weight"], state["net.decoder.blocks.0.conv1.0.weight"])
    assert info["pretrain"]["part"] == "encoder"
    assert describe_init(model_info=info, train={"encoder_weights": "x/encoder.pt"}) == "pretrain-encoder:pt"


@pytest.mark.parametrize(("flag", "value", "names"), [("--encoder", "resnet34", ("resnet18", "resnet34")),
                                                      ("--arch", "fpn", ("unet", "fpn"))])  # fmt: skip
def test_init_from_another_arch_or_encoder_is_refused_naming_both(pretrained, tiny_manifest, flag, value, names):
    args = ["train", "--manifest", str(tiny_manifest), "--init-from", str(pretrained), "--encoder", "resnet18", flag,
            value, "--out-dir", str(tiny_manifest.parent / "exp")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert all(name in result.output for name in names), result.output
    assert not (tiny_manifest.parent / "exp").exists()
    with pytest.raises(ValueError, match="resnet18.*resnet34"):
        build_model(TrainConfig(encoder="resnet34", encoder_weights=str(pretrained / "encoder.pt")), 16)


def test_init_from_a_folder_that_is_not_a_pretrain_run(tiny_manifest):
    result = CliRunner().invoke(app, ["train", "--manifest", str(tiny_manifest), "--init-from",
                                      str(tiny_manifest.parent)])  # fmt: skip
    assert result.exit_code == 1 and "not a pre-train run" in result.output and "--init-from" in result.output
    assert len(result.output.strip().splitlines()) <= 2  # one line (wrapped at most once by the terminal width)


def test_a_train_run_starts_from_the_pretrain_and_records_it(pretrained, tiny_manifest):
    out = tiny_manifest.parent / "exp"
    args = ["train", "--manifest", str(tiny_manifest), "--init-from", str(pretrained), "--encoder", "resnet18",
            "--epochs", "1", "--samples-per-epoch", "4", "--batch-size", "4", "--samples", "0", "--crop-size", "64",
            "--tile", "64", "--device", "cpu", "--num-workers", "0", "--out-dir", str(out), "--name", "r"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    env = json.loads((out / "r" / "env.json").read_text())
    assert env["pretrain"]["run"] == str(pretrained.resolve())
    assert env["weights_sha256"] == env["pretrain"]["sha256"] == json.loads(
        (pretrained / "pretrain.json").read_text())["model_sha256"]  # fmt: skip
    config = json.loads((out / "r" / "config.json").read_text())
    assert describe_init(config["train"], config["model"]) == f"pretrain:{pretrained.name}"


def test_a_killed_pretrain_resumes(pretrained, tmp_path):
    run = tmp_path / "pt"
    shutil.copytree(pretrained, run)
    for name in ("model.pt", "encoder.pt"):  # as if killed during epoch 2 of 2
        (run / name).unlink()
    (run / "state.json").write_text(json.dumps({"status": "running", "epoch": 1, "pid": 2**22 + 7, "host": "x"}))
    result = CliRunner().invoke(app, ["pretrain", "--out", str(run), "--resume", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    rows = (run / "history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert rows[1] == (pretrained / "history.csv").read_text().splitlines()[1]  # epoch 1 kept as it was
    assert json.loads((run / "pretrain.json").read_text())["epochs"] == 2 and (run / "model.pt").is_file()
    again = CliRunner().invoke(app, ["pretrain", "--out", str(run), "--resume", "--epochs", "3", "--crop-size", "96"])
    assert again.exit_code == 1 and "--crop-size" in again.output


def test_bad_inputs_one_line(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("no scans here")
    result = CliRunner().invoke(app, ["pretrain", str(notes / "readme.txt"), "--out", str(tmp_path / "pt"), *CLI_TINY])
    assert result.exit_code == 1 and "no image among INPUTS" in result.output, result.output
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.docx").write_bytes(b"years of work")
    scans = make_scans(tmp_path / "scans", n=1)
    result = CliRunner().invoke(app, ["pretrain", str(scans), "--out", str(mine), "--overwrite", *CLI_TINY])
    assert result.exit_code == 1 and "not a damage-smp pretrain run" in result.output, result.output
    assert (mine / "thesis.docx").read_bytes() == b"years of work"
    result = CliRunner().invoke(app, ["pretrain", "--out", str(tmp_path / "nothing"), "--resume"])
    assert result.exit_code == 1 and "Traceback" not in result.output
