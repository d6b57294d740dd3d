"""evaluate on a real (tiny) trained run: files, exact counts, sliding window vs whole image, groups, errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_pair
from typer.testing import CliRunner

from damage_smp.checkpoints import CheckpointError
from damage_smp.cli import app
from damage_smp.compare import compare
from damage_smp.config import TrainConfig
from damage_smp.evaluate import evaluate
from damage_smp.images import read_image, read_mask, write_image
from damage_smp.labels import IGNORE_INDEX, load_scheme
from damage_smp.models import load_bundle
from damage_smp.tiling import predict_index
from damage_smp.train import train

SCHEME = load_scheme("artefact")
C = SCHEME.num_classes


# ============================================================================================ fixtures
def write_manifest(root: Path, rows: list[tuple[str, str, np.ndarray, np.ndarray, str]], name="manifest.csv"):
    """rows: (stem, split, image, colour-or-index mask, material) -> root/name with real PNG files."""
    lines = ["image,mask,split,material"]
    for stem, split, image, mask, material in rows:
        write_image(root / "images" / f"{stem}.png", image)
        write_image(root / "masks" / f"{stem}.png", mask)
        lines.append(f"images/{stem}.png,masks/{stem}.png,{split},{material}")
    (root / name).write_text("\n".join(lines) + "\n")
    return root / name


@pytest.fixture(scope="module")
def run_dir(module_dir) -> Path:
    """A run trained for one epoch on 64x64 images, with a manifest given *relative* to the training folder."""
    base = module_dir("evaluate")
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(["train"] * 8 + ["val"] * 2 + ["test"] * 4):
        image, index = make_pair(rng)
        if split == "test" and i % 2:
            index[:8, :8] = IGNORE_INDEX  # ignored pixels count nowhere (written as an ignore colour below)
        rows.append((f"img{i:02d}", split, image, SCHEME.colorize(index, ignore_color=(1, 2, 3)),
                     "paper" if i % 2 else "film"))  # fmt: skip
    write_manifest(base / "data", rows)
    scheme_file = base / "data" / "scheme.json"
    scheme_file.write_text(json.dumps({**SCHEME.to_dict(), "ignore_colors": ["#010203"]}))
    cwd = os.getcwd()
    os.chdir(base)  # train as a user would, from the project folder with a relative --manifest
    try:
        cfg = TrainConfig(manifest="data/manifest.csv", labels="data/scheme.json", encoder="resnet18",
                          encoder_weights="none", epochs=1, samples_per_epoch=8, batch_size=4, crop_size=64,
                          tile=64, overlap=0.25, num_workers=0, warmup_iters=1, samples=1, out_dir="runs",
                          name="tiny", deterministic=True)  # fmt: skip
        run = train(cfg)
    finally:
        os.chdir(cwd)
    return base / run


def brute_force_counts(bundle, image_path: str, mask_path: str, tile: int, overlap: float) -> np.ndarray:
    """(C, 3) tp/fp/fn per class for one image, counted with plain NumPy comparisons."""
    image = read_image(image_path)
    target = bundle.scheme.decode(read_mask(mask_path))
    pred = predict_index(bundle.model, image, C, tile=tile, overlap=overlap, batch_size=4)
    valid = target != IGNORE_INDEX
    out = np.zeros((C, 3), np.int64)
    for c in range(C):
        out[c] = [np.sum(valid & (pred == c) & (target == c)), np.sum(valid & (pred == c) & (target != c)),
                  np.sum(valid & (pred != c) & (target == c))]  # fmt: skip
    return out


# ============================================================================================ tests
def test_evaluate_writes_files_and_exact_counts(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the training folder: the manifest is found through env.json
    result = evaluate(run_dir, split="test", device="cpu")
    assert result["split_key"] == "test" and result["n_images"] == 4 and result["epoch"] == 1
    for name in ("metrics.json", "confusion_matrix.csv", "confusion_matrix.png", "per_image.csv", "groups.csv"):
        assert (run_dir / name).stat().st_size > 100, name

    entry = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert entry["checkpoint"] == "best" and entry["tta"] is False and len(entry["manifest_sha256"]) == 64
    assert entry["note"] == "absent classes are NaN and skipped"
    per_image = pd.read_csv(run_dir / "per_image.csv")
    assert list(per_image["image"]) == [f"images/img{i:02d}.png" for i in range(10, 14)]
    assert list(per_image["material"]) == ["film", "paper", "film", "paper"]
    # metrics.json's counts == the sums of per_image.csv's counts == brute force on the files
    mat = np.array(entry["confusion_matrix"])
    per_class = {r["name"]: r for r in entry["per_class"]}
    for c, name in enumerate(SCHEME.names):
        tp, fp, fn = (int(per_image[f"{k}_{c}"].sum()) for k in ("tp", "fp", "fn"))
        assert (tp, fp, fn) == (per_class[name]["tp"], per_class[name]["fp"], per_class[name]["fn"])
        assert (tp, fp, fn) == (mat[c, c], mat[:, c].sum() - mat[c, c], mat[c].sum() - mat[c, c])
    cfg = json.loads((run_dir / "config.json").read_text())["train"]
    base = run_dir.parent.parent / "data"
    bundle = load_bundle(run_dir, "best", "cpu")
    for i, row in per_image.iterrows():
        stem = row["image"].split("/")[-1]
        brute = brute_force_counts(bundle, str(base / row["image"]), str(base / "masks" / stem), cfg["tile"],
                                   cfg["overlap"])  # fmt: skip
        got = np.array([[row[f"{k}_{c}"] for k in ("tp", "fp", "fn")] for c in range(C)])
        np.testing.assert_array_equal(got, brute, err_msg=row["image"])
        assert row["n_pixels"] == 64 * 64 - (64 if i % 2 else 0)  # 8x8 ignored pixels on odd test images
    # the CSV matrix is the JSON matrix, with class names on both axes
    cm = pd.read_csv(run_dir / "confusion_matrix.csv", index_col=0)
    assert list(cm.index) == SCHEME.names and list(cm.columns) == SCHEME.names
    np.testing.assert_array_equal(cm.to_numpy(), mat)
    # absent classes: NaN (null) IoU, listed, skipped in the mean
    summary = entry["summary"]
    ious = [r["iou"] for r in entry["per_class"]]
    assert summary["miou"] == pytest.approx(np.mean([v for v in ious if v is not None]))
    assert set(summary["absent_classes"]) == {r["name"] for r in entry["per_class"] if r["iou"] is None}
    assert 0 <= entry["image_detection"]["recall"] <= 1
    # one row per group
    groups = entry["groups"]["material"]
    assert [g["group"] for g in groups] == ["film", "paper"] and [g["n_images"] for g in groups] == [2, 2]
    table = pd.read_csv(run_dir / "groups.csv")
    assert list(table["group"]) == ["film", "paper"] and set(table["column"]) == {"material"}


def test_sliding_window_matches_whole_image_pass(run_dir, tmp_path):
    """A 128x192 image evaluated at full resolution vs forward passes done by hand (tolerance: 0 pixels).

    - one tile covering the image (--tile 256): exactly the confusion matrix of one whole-image pass;
    - non-overlapping 64-pixel tiles (--overlap 0): exactly the matrix of the six 64x64 passes stitched;
    - overlapping tiles blend at the seams, where a tile sees less context than the whole image: that share of
      changed pixels depends on the model (a one-epoch model has nearly flat probabilities, the worst case),
      so it is printed, not asserted.
    """
    rng = np.random.default_rng(5)
    image, index = make_pair(rng, size=(128, 192), classes=(0, 3, 4, 6, 10))
    manifest = write_manifest(tmp_path / "big", [("big", "test", image, SCHEME.colorize(index), "glass")],
                              name="big.csv")  # fmt: skip
    bundle = load_bundle(run_dir, "best", "cpu")

    def passes(crop: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = bundle.model(torch.from_numpy(crop).permute(2, 0, 1)[None].float())  # (1, C, h, w)
        return logits[0].argmax(0).numpy()

    def matrix(pred: np.ndarray) -> np.ndarray:
        mat = np.zeros((C, C), np.int64)
        np.add.at(mat, (index.ravel(), pred.ravel()), 1)
        return mat

    whole = passes(image)
    stitched = np.zeros_like(whole)
    for y in (0, 64):
        for x in (0, 64, 128):
            stitched[y : y + 64, x : x + 64] = passes(image[y : y + 64, x : x + 64])

    one_tile = evaluate(run_dir, manifest=manifest, tile=256, device="cpu")
    assert one_tile["split_key"] == "test@big"
    np.testing.assert_array_equal(np.array(one_tile["confusion_matrix"]), matrix(whole))
    tiles = evaluate(run_dir, manifest=manifest, tile=64, overlap=0.0, device="cpu")
    np.testing.assert_array_equal(np.array(tiles["confusion_matrix"]), matrix(stitched))

    blended = evaluate(run_dir, manifest=manifest, tile=64, overlap=0.25, device="cpu")
    changed = np.abs(np.array(blended["confusion_matrix"]) - matrix(whole)).sum() / 2 / index.size
    print(f"\nblended 64-px tiles (overlap 0.25) vs one whole-image pass: {100 * changed:.1f} % of pixels differ")
    assert np.array(blended["confusion_matrix"]).sum() == index.size
    # a foreign manifest's files carry the split key; the run's own test entry is kept
    assert (run_dir / "per_image_test@big.csv").is_file() and (run_dir / "confusion_matrix_test@big.png").is_file()
    data = json.loads((run_dir / "metrics.json").read_text())
    assert "test@big" in data and data["test@big"]["groups"]["material"][0]["group"] == "glass"


def test_other_split_and_compare_reads_it(run_dir):
    metrics = run_dir / "metrics.json"
    if not metrics.is_file() or "test" not in json.loads(metrics.read_text()):  # not scored on this worker yet
        evaluate(run_dir, split="test", device="cpu")
    result = evaluate(run_dir, split="val", device="cpu", tta=True)
    assert result["split_key"] == "val" and result["tta"] is True
    assert (run_dir / "confusion_matrix_val.csv").is_file() and (run_dir / "per_image_val.csv").is_file()
    data = json.loads((run_dir / "metrics.json").read_text())
    assert {"val", "test"} <= set(data)
    table = compare([run_dir], split="val", out=run_dir.parent / "compare", plots=False)
    row = table.runs.iloc[0]
    assert row["status"] == "finished" and row["metric"] == pytest.approx(data["val"]["summary"]["damage_miou"],
                                                                          nan_ok=True)  # fmt: skip


def test_errors_are_one_clear_line(run_dir, tmp_path):
    data = run_dir.parent.parent / "data"
    # a split the manifest does not have
    only_test = tmp_path / "only_test.csv"
    only_test.write_text(f"image,mask,split\n{data}/images/img10.png,{data}/masks/img10.png,test\n")
    with pytest.raises(ValueError, match=r"no 'val' split \(splits present: test\)"):
        evaluate(run_dir, split="val", manifest=only_test)
    # masks in another label scheme: values 0..3 and 7 are fine, 200 is not an artefact value
    index = np.zeros((64, 64), np.uint8)
    index[10:20, 10:20] = 200
    foreign = write_manifest(tmp_path / "foreign", [("x", "test", np.full((64, 64, 3), 90, np.uint8), index, "a")])
    with pytest.raises(ValueError, match=r"x\.png: .*differs from the run's scheme"):
        evaluate(run_dir, manifest=foreign)
    # a run dir without checkpoints, with a corrupt one, from another version
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run_dir / "config.json", bare / "config.json")
    with pytest.raises(CheckpointError, match=r"bare/checkpoints/best\.pt: checkpoint not found"):
        evaluate(bare)
    (bare / "checkpoints").mkdir()
    (bare / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="use --checkpoint last"):
        evaluate(bare)
    with pytest.raises(CheckpointError, match="corrupt"):
        evaluate(bare, checkpoint="last", manifest=data / "manifest.csv")
    old = tmp_path / "old"
    old.mkdir()
    cfg = json.loads((run_dir / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**cfg, "config_version": 99}))
    with pytest.raises(ValueError, match="config_version 99"):
        evaluate(old)

    runner = CliRunner()
    for args, message in [
        (["evaluate", str(bare)], "--checkpoint last"),
        (["evaluate", str(old)], "config_version 99"),
        (["evaluate", str(run_dir), "--split", "val", "--manifest", str(only_test)], "splits present: test"),
        (["evaluate", str(run_dir), "--manifest", str(foreign)], "differs from the run's scheme"),
    ]:
        res = runner.invoke(app, args)
        assert res.exit_code == 1, res.output
        assert message in res.output.replace("\n", "") and "Traceback" not in res.output


def test_cli_evaluate(run_dir):
    res = CliRunner().invoke(app, ["evaluate", str(run_dir), "--device", "cpu", "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    for text in ("mIoU", "damage-vs-clean F1", "image-level detection recall", "per class", "by material",
                 "metrics.json"):  # fmt: skip
        assert text in res.output, text
