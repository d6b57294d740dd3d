"""damage-smp export: ONNX, TorchScript and smp folders match the run's PyTorch model; bad input is one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_pair
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.config import TrainConfig
from damage_smp.evaluate import evaluate
from damage_smp.export import PARITY_TOL, check_parity, onnx_forward
from damage_smp.images import write_image
from damage_smp.labels import load_scheme
from damage_smp.models import load_bundle
from damage_smp.train import train

SCHEME = load_scheme("artefact")


@pytest.fixture(scope="module")
def run_dir(module_dir) -> Path:
    """A one-epoch run on 64x64 / 64x80 images (8 train, 2 val, 2 test), evaluated on test."""
    base = module_dir("export")
    rng = np.random.default_rng(0)
    lines = ["image,mask,split"]
    for i, split in enumerate(["train"] * 8 + ["val"] * 2 + ["test"] * 2):
        image, index = make_pair(rng, size=(64, 80) if i % 2 else (64, 64))
        write_image(base / "data" / "images" / f"img{i:02d}.png", image)
        write_image(base / "data" / "masks" / f"img{i:02d}.png", SCHEME.colorize(index))
        lines.append(f"images/img{i:02d}.png,masks/img{i:02d}.png,{split}")
    (base / "data" / "manifest.csv").write_text("\n".join(lines) + "\n")
    cfg = TrainConfig(manifest=str(base / "data" / "manifest.csv"), encoder="resnet18", encoder_weights="none",
                      epochs=1, samples_per_epoch=4, batch_size=4, crop_size=64, tile=64, num_workers=0,
                      warmup_iters=1, samples=0, out_dir=str(base / "runs"), name="tiny", seed=0)  # fmt: skip
    run = Path(train(cfg))
    evaluate(run, split="test")
    return run


def _export(run_dir: Path, fmt: str, out: Path, *extra: str):
    return CliRunner().invoke(app, ["export", str(run_dir), "--format", fmt, "--out", str(out), *extra])


def _images(seed: int, sizes) -> list[tuple[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    return [(f"{h}x{w}", torch.from_numpy(make_pair(rng, size=(h, w))[0]).permute(2, 0, 1)) for h, w in sizes]


@pytest.mark.parametrize("fmt, name", [("onnx", "model.onnx"), ("torchscript", "model.pt")])
def test_file_exports_match_pytorch_on_two_sizes(run_dir, tmp_path, fmt, name):
    out = tmp_path / name
    result = _export(run_dir, fmt, out)
    assert result.exit_code == 0, result.output
    assert "parity 64x64" in result.output and "parity 96x128" in result.output and "passed" in result.output
    side = json.loads((tmp_path / f"{name}.json").read_text())
    assert side["damage_smp_export"]["format"] == fmt and side["run"]["name"] == "tiny"
    assert (
        side["label_scheme"] == SCHEME.to_dict() and side["tile"] == 64 and len(side["run"]["checkpoint_sha256"]) == 64
    )
    parity = side["parity"]
    assert parity["passed"] and parity["max_abs_diff_prob"] < PARITY_TOL and parity["argmax_identical"] == 1.0
    assert [r["size"] for r in parity["sizes"]] == [[64, 64], [96, 128]]
    assert parity["images"] == ["img08.png", "img09.png"]  # the val split

    # independently of the export's own check: other images, sizes and batch sizes
    bundle = load_bundle(run_dir)
    if fmt == "onnx":
        forward = onnx_forward(out)
    else:
        module = torch.jit.load(str(out)).eval()
        forward = lambda x: module(x).detach().numpy()  # noqa: E731
    for sizes in ([(128, 64)], [(160, 96), (160, 96), (160, 96)]):
        check = check_parity(bundle.model, forward, _images(1, [(100, 70)] * len(sizes)), sizes)
        assert check["max_abs_diff_prob"] < PARITY_TOL and check["argmax_identical"] == 1.0, check


def test_smp_folder_loads_offline_with_the_same_logits_and_a_model_card(run_dir, tmp_path, monkeypatch):
    import segmentation_models_pytorch as smp

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "smp_model"
    result = _export(run_dir, "smp", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "damage_smp.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["encoder_weights"] is None
    net = smp.from_pretrained(str(out)).eval()
    bundle = load_bundle(run_dir)
    x = torch.from_numpy(make_pair(np.random.default_rng(2), size=(96, 64))[0]).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        expected = bundle.model.net((x - bundle.model.mean) / bundle.model.std)
        assert torch.allclose(net((x - bundle.model.mean) / bundle.model.std), expected, atol=1e-5)
        assert torch.allclose(bundle.model(x), expected)  # DamageModel normalises exactly so
    side = json.loads((out / "damage_smp.json").read_text())
    assert side["normalisation"]["mean"] == bundle.model.mean.flatten().tolist()
    card = (out / "README.md").read_text()
    assert all(f"| {name} |" in card for name in SCHEME.names)
    assert "### test (2 images" in card and "train 8, val 2, test 2" in card and "damage-smp 0.1.0" in card
    metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert f"damage_miou {metrics['summary']['damage_miou']:.3f}" in card


def test_existing_out_is_refused_without_overwrite_and_foreign_files_never(run_dir, tmp_path):
    out = tmp_path / "model.pt"
    assert _export(run_dir, "torchscript", out).exit_code == 0
    before = out.stat().st_mtime_ns
    again = _export(run_dir, "torchscript", out)
    assert again.exit_code == 1 and "already exists" in again.output and "--overwrite" in again.output
    assert out.stat().st_mtime_ns == before
    assert _export(run_dir, "torchscript", out, "--overwrite").exit_code == 0

    foreign = tmp_path / "mine.onnx"
    foreign.write_bytes(b"not ours")
    refused = _export(run_dir, "onnx", foreign, "--overwrite")
    assert refused.exit_code == 1 and "not written by damage-smp" in refused.output
    assert foreign.read_bytes() == b"not ours"
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.txt").write_text("keep")
    refused = _export(run_dir, "smp", folder, "--overwrite")
    assert refused.exit_code == 1 and (folder / "a.txt").read_text() == "keep"


def test_bad_input_is_one_line(run_dir, tmp_path):
    unknown = _export(run_dir, "tflite", tmp_path / "m.tflite")
    assert unknown.exit_code == 1 and "--format 'tflite': unknown" in unknown.output
    assert "onnx, torchscript, smp" in unknown.output
    missing = _export(run_dir, "onnx", tmp_path / "m.onnx", "--checkpoint", "epoch_009")
    assert missing.exit_code == 1 and "checkpoint not found" in missing.output
    assert not (tmp_path / "m.onnx").exists()
    no_image = _export(run_dir, "onnx", tmp_path / "m.onnx", "--check-images", str(tmp_path / "nope.png"))
    assert no_image.exit_code == 1 and "nope.png: file not found" in no_image.output
    assert sorted(tmp_path.iterdir()) == []  # nothing half-written is left


def test_check_images_and_parity_failure(run_dir, tmp_path, monkeypatch):
    image = tmp_path / "in" / "scan.png"
    write_image(image, make_pair(np.random.default_rng(3), size=(50, 70))[0])
    out = tmp_path / "m.pt"
    ok = _export(run_dir, "torchscript", out, "--check-images", str(image))
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "m.pt.json").read_text())["parity"]["images"] == ["scan.png"]

    import damage_smp.export as export_module

    real = export_module.LOADERS["torchscript"]

    def drifting(path, bundle):  # an exported model whose class-0 logit is off by 0.01
        forward = real(path, bundle)
        return lambda x: forward(x) + np.eye(bundle.scheme.num_classes, dtype=np.float32)[0][None, :, None, None] * 0.01

    monkeypatch.setitem(export_module.LOADERS, "torchscript", drifting)
    failed = _export(run_dir, "torchscript", out, "--overwrite")
    assert failed.exit_code == 1 and "parity check failed" in failed.output and "FAILED" in failed.output
    assert json.loads((tmp_path / "m.pt.json").read_text())["parity"]["passed"]  # the good export stays


def test_missing_onnx_extra_names_it(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # import fails as if not installed
    result = _export(run_dir, "onnx", tmp_path / "m.onnx")
    assert result.exit_code == 1 and "pip install 'damage-smp[onnx]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
