"""damage-smp predict --backend onnxruntime: the same index masks as the torch backend, a cached export, bad input."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import make_pair, train_tiny_run
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.images import read_image, write_image
from damage_smp.labels import load_scheme
from damage_smp.models import load_bundle
from damage_smp.predict.backend import CACHE_DIR
from damage_smp.tiling import predict_probs

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

SCHEME = load_scheme("artefact")
FAST = ["--tile", "64", "--overlap", "0.25", "--batch-size", "8", "--workers", "2", "--save", "index"]


@pytest.fixture(scope="module")
def run_dir(module_dir) -> Path:
    """One tiny trained run (resnet18, no pretrained weights, 1 epoch of 8 crops), as in test_predict.py."""
    return train_tiny_run(module_dir("onnx-predict-run"))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """The ONNX cache goes to this test's temp folder, not the machine's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path / "tmp" / CACHE_DIR


def _predict(run_dir: Path, scans: Path, out: Path, *extra: str):
    return CliRunner().invoke(app, ["predict", str(run_dir), str(scans), "--out", str(out), *FAST, *extra])


def _index(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_onnxruntime_writes_the_same_index_masks_as_torch(run_dir, tmp_path, cache):
    scans = tmp_path / "scans"
    for name, (h, w), seed in [("wide.png", (150, 233), 1), ("tall.png", (201, 97), 2)]:
        write_image(scans / name, make_pair(np.random.default_rng(seed), size=(h, w))[0])
    argmax = ("--decision", "argmax")  # the tie check below is the argmax's (a tuned threshold has its own edge)
    res = _predict(run_dir, scans, tmp_path / "torch", "--device", "cpu", *argmax)
    assert res.exit_code == 0, res.output
    res = _predict(run_dir, scans, tmp_path / "ort", "--backend", "onnxruntime", *argmax)
    assert res.exit_code == 0, res.output
    bundle = load_bundle(run_dir, "best", "cpu")
    for stem, shape in [("wide", (150, 233)), ("tall", (201, 97))]:
        ref, got = _index(tmp_path / "torch" / f"{stem}_index.png"), _index(tmp_path / "ort" / f"{stem}_index.png")
        assert ref.shape == got.shape == shape
        differ = ref != got
        if differ.any():  # only at numerical ties of the torch model (an untrained one is near-uniform)
            assert differ.mean() < 1e-3
            top2 = predict_probs(bundle.model, read_image(scans / f"{stem}.png"), bundle.scheme.num_classes,
                                 tile=64, overlap=0.25).topk(2, dim=0).values  # fmt: skip
            assert (top2[0] - top2[1])[torch.from_numpy(differ)].max().item() < 1e-4
    assert json.loads((tmp_path / "ort" / "predict.json").read_text())["backend"] == "onnxruntime"
    assert json.loads((tmp_path / "torch" / "predict.json").read_text())["backend"] == "torch"
    assert not list((tmp_path / "ort").rglob("*.onnx"))  # the export is cached outside --out
    (cached,) = cache.glob("*.onnx")
    before = cached.stat().st_mtime_ns
    res = _predict(run_dir, scans, tmp_path / "ort", "--backend", "onnxruntime", "--overwrite")
    assert res.exit_code == 0, res.output
    assert cached.stat().st_mtime_ns == before  # reused, not exported again


def test_a_torch_batch_resumes_on_onnxruntime(run_dir, tmp_path, cache):
    scans = tmp_path / "scans"
    write_image(scans / "a.png", make_pair(np.random.default_rng(3), size=(70, 90))[0])
    assert _predict(run_dir, scans, tmp_path / "out", "--device", "cpu").exit_code == 0
    write_image(scans / "b.png", make_pair(np.random.default_rng(4), size=(80, 66))[0])
    res = _predict(run_dir, scans, tmp_path / "out", "--backend", "onnxruntime")
    assert res.exit_code == 0, res.output
    assert "1 already finished" in " ".join(res.output.split())
    assert (tmp_path / "out" / "b_index.png").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backend", "tensorrt"], "--backend 'tensorrt': unknown; use one of torch, onnxruntime"),
        (["--backend", "onnxruntime", "--device", "cuda"], "--backend onnxruntime runs on the CPU"),
    ],
)
def test_bad_backend_is_one_line_and_exit_1(run_dir, tmp_path, extra, message):
    scans = tmp_path / "scans"
    write_image(scans / "a.png", make_pair(np.random.default_rng(5), size=(64, 64))[0])
    res = _predict(run_dir, scans, tmp_path / "out", *extra)
    assert res.exit_code == 1
    assert message in " ".join(res.output.split())
    assert "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_onnxruntime_missing_names_the_extra(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    scans = tmp_path / "scans"
    write_image(scans / "a.png", make_pair(np.random.default_rng(6), size=(64, 64))[0])
    res = _predict(run_dir, scans, tmp_path / "out", "--backend", "onnxruntime")
    assert res.exit_code == 1
    assert "pip install 'damage-smp[onnx]'" in " ".join(res.output.split())


@pytest.fixture(scope="module")
def exported(run_dir, module_dir) -> Path:
    """The tiny run exported with `damage-smp export --format onnx` (file + sidecar)."""
    out = module_dir("onnx-export") / "model.onnx"
    res = CliRunner().invoke(app, ["export", str(run_dir), "--format", "onnx", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_runless_predict_of_an_exported_onnx_file_equals_the_run_backend(run_dir, exported, tmp_path, cache):
    """The sidecar carries the run's tuned threshold: both decisions give the masks the run dir gives."""
    scans = tmp_path / "scans"
    write_image(scans / "a.png", make_pair(np.random.default_rng(7), size=(96, 161))[0])
    tuned = json.loads((run_dir / "thresholds.json").read_text())
    assert json.loads(Path(f"{exported}.json").read_text())["thresholds"]["level"] == tuned["level"]
    for decision in ("argmax", "tuned"):
        run_out, file_out = tmp_path / f"run-{decision}", tmp_path / f"file-{decision}"
        res = _predict(run_dir, scans, run_out, "--backend", "onnxruntime", "--decision", decision)
        assert res.exit_code == 0, res.output
        res = _predict(exported, scans, file_out, *(["--decision", "argmax"] if decision == "argmax" else []))
        assert res.exit_code == 0, res.output
        assert "(onnxruntime)" in res.output
        assert np.array_equal(_index(run_out / "a_index.png"), _index(file_out / "a_index.png"))
        settings = json.loads((file_out / "predict.json").read_text())
        assert settings["backend"] == "onnxruntime" and settings["run_dir"] == str(exported.resolve())
        assert settings["decision"] == decision and settings["label_scheme"] == SCHEME.to_dict()
    assert settings["threshold"] == tuned["threshold"]


def _copy_model(exported: Path, folder: Path, sidecar: bool = True) -> Path:
    folder.mkdir()
    (folder / "m.onnx").write_bytes(exported.read_bytes())
    if sidecar:
        (folder / "m.onnx.json").write_text(Path(f"{exported}.json").read_text())
    return folder / "m.onnx"


def test_bad_exported_models_are_one_line_and_exit_1(exported, tmp_path):
    scans = tmp_path / "scans"
    write_image(scans / "a.png", make_pair(np.random.default_rng(8), size=(64, 64))[0])
    no_sidecar = _copy_model(exported, tmp_path / "a", sidecar=False)
    changed = _copy_model(exported, tmp_path / "b")
    changed.write_bytes(b"not an onnx graph")
    corrupt = _copy_model(exported, tmp_path / "c")
    corrupt.write_bytes(b"not an onnx graph")
    meta = json.loads(Path(f"{corrupt}.json").read_text())
    del meta["file_sha256"]  # an older sidecar: ONNX Runtime itself must refuse the file
    Path(f"{corrupt}.json").write_text(json.dumps(meta))
    untuned = _copy_model(exported, tmp_path / "e")
    meta = json.loads(Path(f"{untuned}.json").read_text())
    del meta["thresholds"]  # a run exported before it had a thresholds.json
    Path(f"{untuned}.json").write_text(json.dumps(meta))
    foreign = _copy_model(exported, tmp_path / "d")
    Path(f"{foreign}.json").write_text('{"something": "else"}')
    cases = [
        (no_sidecar, [], "its sidecar m.onnx.json is missing"),
        (changed, [], "differs from the file its sidecar m.onnx.json describes"),
        (corrupt, [], "ONNX Runtime cannot load it"),
        (foreign, [], "not a damage-smp ONNX sidecar"),
        (exported, ["--backend", "torch"], "an ONNX file runs on --backend onnxruntime"),
        (tmp_path / "missing.onnx", [], "no such ONNX file"),
        (untuned, ["--decision", "tuned"], "was exported without a tuned threshold"),
    ]
    for model, extra, message in cases:
        res = _predict(model, scans, tmp_path / "out", *extra)
        assert res.exit_code == 1, (model, res.output)
        assert message in " ".join(res.output.split()), res.output
        assert "Traceback" not in res.output
        assert not (tmp_path / "out").exists()
