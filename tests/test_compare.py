"""compare on real run-directory files: seed groups, auto baseline, Δ, paired bootstrap, folds, broken runs, speed.

The run directories are written with the same writers train and evaluate use (runs.write_run_config,
write_csv, write_json) and hold realistic content: a config with a label scheme, a per-epoch history, a
state, metrics.json whose numbers come from metrics.ConfusionMatrix on the same per-image counts that
per_image.csv holds.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.compare import ImageCounts, compare, metric_from_counts, paired_bootstrap
from damage_smp.config import TrainConfig
from damage_smp.labels import load_scheme
from damage_smp.metrics import ConfusionMatrix, image_detection
from damage_smp.runs import HISTORY_FIELDS, split_filename, write_csv, write_json, write_run_config

SCHEME = load_scheme("artefact")
C = SCHEME.num_classes
N_IMAGES = 12


# ============================================================================================ fixtures
def image_mats(quality: float, seed: int, n: int = N_IMAGES) -> list[np.ndarray]:
    """Per-image (C, C) confusion matrices: each class keeps ~quality of its pixels, the rest go to Clean.

    The ground truth (row sums) depends only on the image, not on the run: every run sees the same test set.
    """
    truth_rng = np.random.default_rng(1234)
    rng = np.random.default_rng(seed)
    mats = []
    for _ in range(n):
        support = np.zeros(C, np.int64)
        support[0] = truth_rng.integers(2000, 4000)
        present = truth_rng.choice(np.arange(1, C - 1), size=4, replace=False)  # some classes absent
        support[present] = truth_rng.integers(50, 400, size=4)
        mat = np.zeros((C, C), np.int64)
        for c in np.flatnonzero(support):
            keep = int(support[c] * np.clip(quality + rng.normal(0, 0.05), 0, 1))
            mat[c, c] = keep
            mat[c, 0 if c else 3] += support[c] - keep
        mats.append(mat)
    return mats


def per_image_row(i: int, mat: np.ndarray) -> dict:
    """The per_image.csv row evaluate writes, built independently here from the matrix."""
    tp = np.diag(mat)
    binary = ConfusionMatrix.from_numpy(mat).damage_vs_clean(SCHEME)
    row = {"image": f"images/img{i:02d}.png", "image_path": f"/data/images/img{i:02d}.png",
           "material": "paper" if i % 2 else "film", "n_pixels": int(mat.sum()), "damage_iou": binary["iou"],
           "damage_tp": binary["tp"], "damage_fp": binary["fp"], "damage_fn": binary["fn"]}  # fmt: skip
    row.update({f"tp_{c}": int(tp[c]) for c in range(C)})
    row.update({f"fp_{c}": int(mat[:, c].sum() - tp[c]) for c in range(C)})
    row.update({f"fn_{c}": int(mat[c].sum() - tp[c]) for c in range(C)})
    return row


def make_run(root: Path, name: str, *, weights: str = "imagenet", seed: int = 0, quality: float = 0.7,
             frac: float = 1.0, frozen: bool = False, encoder: str = "resnet18", manifest: str = "data/manifest.csv",
             status: str = "finished", evaluate: bool = True, epochs: int = 3, history: bool = True,
             mats: list[np.ndarray] | None = None) -> Path:  # fmt: skip
    """A run directory with the files train and evaluate write; returns its path."""
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    cfg = TrainConfig(encoder=encoder, encoder_weights=weights, freeze_encoder=frozen, seed=seed, epochs=epochs,
                      train_fraction=frac, manifest=manifest, name=run.name, out_dir=str(run.parent))  # fmt: skip
    params_total = 14_328_209 if encoder == "resnet18" else 24_436_369
    info = {"arch": "unet", "encoder": encoder, "weights_source": weights, "params_total": params_total,
            "params_trainable_at_start": 3_000_000 if frozen else params_total}  # fmt: skip
    write_run_config(run, cfg, SCHEME, info)
    write_json(run / "env.json", {"manifest": f"/abs/{manifest}", "manifest_sha256": "ab" * 32})
    write_json(run / "state.json", {"status": status, "epoch": epochs, "reason": ""})
    if history:
        rows = [{"epoch": e, "train_loss": 1.5 / e, "val_loss": 1.4 / e, "val_miou": quality * e / epochs,
                 "val_damage_miou": quality * e / epochs - 0.1, "lr": 1e-3, "seconds": 10.0 + seed,
                 "img_per_s": 30.0 + e, "data_seconds": 1.0, "peak_mem_mb": 900.0 + 10 * e, "gpu_util": "",
                 "energy_wh": 0.05, "energy_source": "cpu-estimate", "frozen": frozen}
                for e in range(1, epochs + 1)]  # fmt: skip
        write_csv(run / "history.csv", rows, HISTORY_FIELDS)
    if evaluate:
        mats = mats if mats is not None else image_mats(quality, seed + {"none": 0, "imagenet": 500}.get(weights, 900))
        total = ConfusionMatrix.from_numpy(np.sum(mats, axis=0))
        entry = {"summary": total.summary(SCHEME), "per_class": total.per_class(SCHEME),
                 "image_detection": image_detection(mats, SCHEME), "groups": {}, "manifest": f"/abs/{manifest}",
                 "manifest_sha256": "ab" * 32, "checkpoint": "best", "epoch": epochs, "tta": False,
                 "n_images": len(mats), "note": "absent classes are NaN and skipped"}  # fmt: skip
        write_json(run / "metrics.json", {"test": entry})
        fields = ["image", "image_path", "material", "n_pixels", "damage_iou", "damage_tp", "damage_fp", "damage_fn",
                  *[f"{k}_{c}" for k in ("tp", "fp", "fn") for c in range(C)]]  # fmt: skip
        write_csv(run / "per_image.csv", [per_image_row(i, m) for i, m in enumerate(mats)], fields)
    return run


def metric_of(run: Path, key: str = "damage_miou") -> float:
    return json.loads((run / "metrics.json").read_text())["test"]["summary"][key]


@pytest.fixture
def study(tmp_path):
    """scratch x3 seeds, imagenet fine-tuned x3 seeds, imagenet frozen x1, a resnet34 run without a scratch
    twin, and three runs that went wrong: failed (no metrics), not evaluated, broken JSON."""
    root = tmp_path / "experiments"
    for s in range(3):
        make_run(root, f"unet-resnet18-none-finetune-s{s}", weights="none", seed=s, quality=0.5)
        make_run(root, f"unet-resnet18-imagenet-finetune-s{s}", seed=s, quality=0.8)
    make_run(root, "unet-resnet18-imagenet-frozen-s0", frozen=True, quality=0.65)
    make_run(root, "unet-resnet34-imagenet-finetune-s0", encoder="resnet34", quality=0.75)
    make_run(root, "crashed", status="failed", evaluate=False, history=False, epochs=50)
    make_run(root, "not-yet-evaluated", evaluate=False, epochs=40)
    broken = root / "nested" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text('{"config_version": 1, "train": {"arch": ')  # truncated by a crash
    return root


# ============================================================================================ tests
def test_groups_seeds_picks_auto_baseline_and_computes_delta(study, tmp_path):
    result = compare([study], out=tmp_path / "out")
    runs = result.runs.set_index("name")
    assert len(runs) == 11
    assert runs.loc["nested/broken", "status"] == "broken" and "config.json" in runs.loc["nested/broken", "note"]
    assert runs.loc["crashed", "status"] == "failed" and runs.loc["not-yet-evaluated", "status"] == "not evaluated"
    assert math.isnan(runs.loc["crashed", "delta"])

    scratch = [metric_of(study / f"unet-resnet18-none-finetune-s{s}") for s in range(3)]
    tuned = [metric_of(study / f"unet-resnet18-imagenet-finetune-s{s}") for s in range(3)]
    groups = result.groups.set_index("row_type")
    seeds = result.groups[result.groups["row_type"] == "seeds"].set_index("name")
    assert len(seeds) == 2 and "folds" not in groups.index
    scratch_label = next(n for n in seeds.index if "none" in n)
    tuned_label = next(n for n in seeds.index if "imagenet" in n)
    assert seeds.loc[scratch_label, "n"] == 3 and seeds.loc[scratch_label, "seed"] == "0,1,2"
    assert seeds.loc[scratch_label, "damage_miou"] == pytest.approx(np.mean(scratch))
    assert seeds.loc[scratch_label, "damage_miou_std"] == pytest.approx(np.std(scratch, ddof=1))
    assert seeds.loc[tuned_label, "delta"] == pytest.approx(np.mean(tuned) - np.mean(scratch))

    # the auto baseline: the resnet18 scratch group, for fine-tuned and frozen resnet18 runs alike
    for name in ("unet-resnet18-imagenet-finetune-s1", "unet-resnet18-imagenet-frozen-s0"):
        assert runs.loc[name, "baseline"] == scratch_label
        assert runs.loc[name, "delta"] == pytest.approx(metric_of(study / name) - np.mean(scratch))
        assert runs.loc[name, "ci_low"] <= runs.loc[name, "delta"] + 0.02 <= runs.loc[name, "ci_high"] + 0.04
    # resnet34 has no scratch twin: Δ blank and a note says so
    assert runs.loc["unet-resnet34-imagenet-finetune-s0", "baseline"] == ""
    assert math.isnan(runs.loc["unet-resnet34-imagenet-finetune-s0", "delta"])
    assert any("no baseline" in n and "resnet34" in n for n in result.notes)
    # quality 0.8 vs 0.5 on every image: the interval is well above 0
    assert seeds.loc[tuned_label, "ci_low"] > 0.1

    files = {p.name for p in result.files}
    assert files == {"compare.md", "compare.csv", "per_class_iou.png", "val_curves.png", "score_vs_time.png"}
    table = pd.read_csv(tmp_path / "out" / "compare.csv")
    assert list(table["row_type"]).count("run") == 11 and list(table["row_type"]).count("seeds") == 2
    assert {"iou_Dust", "iou_Clean", "params_trainable", "train_time_s", "energy_wh", "ci_low"} <= set(table.columns)
    run = table[table["name"] == "unet-resnet18-imagenet-frozen-s0"].iloc[0]
    assert run["schedule"] == "frozen" and run["params_trainable"] == 3_000_000 and run["epochs_run"] == 3
    assert run["train_time_s"] == pytest.approx(30.0) and run["img_per_s"] == pytest.approx(32.0)
    assert run["peak_mem_mb"] == pytest.approx(930.0) and run["energy_source"] == "cpu-estimate"
    assert run["best_val"] == pytest.approx(0.65 - 0.1)
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "± " in md and "paired bootstrap" in md and "nested/broken" in md


def test_explicit_baseline_and_errors(study, tmp_path):
    result = compare([study], baseline="unet-resnet18-imagenet-frozen-s0", out=tmp_path / "o", plots=False)
    runs = result.runs.set_index("name")
    frozen = metric_of(study / "unet-resnet18-imagenet-frozen-s0")
    name = "unet-resnet34-imagenet-finetune-s0"
    assert runs.loc[name, "delta"] == pytest.approx(metric_of(study / name) - frozen)
    with pytest.raises(ValueError, match="--baseline 'nope': no such run"):
        compare([study], baseline="nope", out=tmp_path / "o", overwrite=True)
    with pytest.raises(ValueError, match="--metric 'dice'"):
        compare([study], metric="dice", out=tmp_path / "o", overwrite=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no run directories found"):
        compare([tmp_path / "empty"])


def test_bootstrap_matches_hand_computation():
    # identical images: every resample sums to the same proportions, so the interval collapses to the exact Δ
    a = np.zeros((1, C, C), np.int64)
    a[0, 0, 0], a[0, 3, 3], a[0, 3, 0], a[0, 0, 3] = 900, 30, 10, 5  # Dust: tp 30, fn 10, fp 5
    b = a.copy()
    b[0, 3, 3], b[0, 3, 0] = 20, 20  # Dust: tp 20, fn 20, fp 5
    ca = counts_of([a[0]] * 6)
    cb = counts_of([b[0]] * 6)
    full, lo, hi = paired_bootstrap(ca, cb, "damage_miou", C, SCHEME.damage_indices)
    by_hand = 30 / (30 + 5 + 10) - 20 / (20 + 5 + 20)  # only Dust is a damage class present
    assert full == pytest.approx(by_hand) and lo == pytest.approx(by_hand) and hi == pytest.approx(by_hand)

    # varied images: our vectorised multinomial bootstrap vs a plain loop with np.random.choice
    ma, mb = image_mats(0.8, 1), image_mats(0.6, 2)
    ca, cb = counts_of(ma), counts_of(mb)
    full, lo, hi = paired_bootstrap(ca, cb, "damage_miou", C, SCHEME.damage_indices)
    exact = (ConfusionMatrix.from_numpy(np.sum(ma, 0)).summary(SCHEME)["damage_miou"]
             - ConfusionMatrix.from_numpy(np.sum(mb, 0)).summary(SCHEME)["damage_miou"])  # fmt: skip
    assert full == pytest.approx(exact)
    rng = np.random.default_rng(99)
    diffs = []
    for _ in range(2000):
        idx = rng.choice(len(ma), len(ma), replace=True)
        sa = ConfusionMatrix.from_numpy(np.sum([ma[i] for i in idx], 0)).summary(SCHEME)["damage_miou"]
        sb = ConfusionMatrix.from_numpy(np.sum([mb[i] for i in idx], 0)).summary(SCHEME)["damage_miou"]
        diffs.append(sa - sb)
    ref_lo, ref_hi = np.percentile(diffs, [2.5, 97.5])
    spread = ref_hi - ref_lo
    assert spread > 0 and abs(lo - ref_lo) < 0.15 * spread and abs(hi - ref_hi) < 0.15 * spread
    assert lo < exact < hi
    # the same seed gives the same interval
    assert paired_bootstrap(ca, cb, "damage_miou", C, SCHEME.damage_indices) == (full, lo, hi)


@pytest.mark.parametrize("metric", ["miou", "damage_miou", "mdice", "damage_iou", "damage_f1", "pixel_accuracy",
                                    "fw_iou", "damage_precision", "damage_recall"])  # fmt: skip
def test_metric_from_counts_equals_confusion_matrix_summary(metric):
    mats = image_mats(0.7, 5)
    sums = counts_of(mats).matrix().sum(0, keepdims=True)
    expected = ConfusionMatrix.from_numpy(np.sum(mats, 0)).summary(SCHEME)[metric]
    assert metric_from_counts(sums, C, SCHEME.damage_indices, metric)[0] == pytest.approx(expected)


def test_fold_groups_and_data_efficiency(tmp_path):
    root = tmp_path / "exp"
    for fold in ("film", "paper", "glass"):
        q = {"film": 0.6, "paper": 0.7, "glass": 0.8}[fold]
        for weights, dq in (("imagenet", 0.1), ("none", 0.0)):
            make_run(root, f"{weights}-{fold}", weights=weights, quality=q + dq, manifest=f"folds/fold-{fold}.csv")
    for frac in (0.25, 0.5, 1.0):
        for weights in ("imagenet", "none"):
            for s in range(2):
                make_run(root, f"eff/{weights}-f{frac}-s{s}", weights=weights, seed=s, frac=frac,
                         quality=0.4 + 0.3 * frac + (0.1 if weights == "imagenet" else 0))  # fmt: skip
    result = compare([root], out=tmp_path / "out")
    folds = result.groups[result.groups["row_type"] == "folds"].set_index("weights")
    assert set(folds.index) == {"imagenet", "none"} and (folds["n"] == 3).all()
    values = [metric_of(root / f"imagenet-{f}") for f in ("film", "glass", "paper")]
    assert folds.loc["imagenet", "damage_miou"] == pytest.approx(np.mean(values))
    assert folds.loc["imagenet", "damage_miou_std"] == pytest.approx(np.std(values, ddof=1))
    deltas = [metric_of(root / f"imagenet-{f}") - metric_of(root / f"none-{f}") for f in ("film", "glass", "paper")]
    assert folds.loc["imagenet", "delta"] == pytest.approx(np.mean(deltas))
    assert folds.loc["none", "delta"] == pytest.approx(0.0)
    # each fold's runs are compared with the scratch run of the same fold
    runs = result.runs.set_index("name")
    assert runs.loc["imagenet-paper", "baseline"] == "none-paper"
    assert (tmp_path / "out" / "data_efficiency.png").stat().st_size > 5000
    seeds = result.groups[result.groups["row_type"] == "seeds"]
    assert len(seeds) == 6 and (seeds["n"] == 2).all()
    assert any("fold groups" in n for n in result.notes)


def test_survives_broken_run_dirs(tmp_path):
    root = tmp_path / "exp"
    good = make_run(root, "good", weights="none")
    bad_metrics = make_run(root, "bad-metrics")
    (bad_metrics / "metrics.json").write_text("{not json")
    no_hist = make_run(root, "no-history", history=False)
    bad_hist = make_run(root, "bad-history")
    (bad_hist / "history.csv").write_bytes(b"\xff\xfe\x00garbage")
    no_per_image = make_run(root, "no-per-image")
    (no_per_image / "per_image.csv").unlink()
    other_version = make_run(root, "v0")
    cfg = json.loads((other_version / "config.json").read_text())
    (other_version / "config.json").write_text(json.dumps({**cfg, "config_version": 0}))
    (root / "not-a-run").mkdir()
    result = compare([root], out=tmp_path / "out")
    runs = result.runs.set_index("name")
    assert runs.loc["bad-metrics", "status"] == "broken" and "metrics.json" in runs.loc["bad-metrics", "note"]
    assert runs.loc["no-history", "epochs_run"] == 0 and "no history.csv" in runs.loc["no-history", "note"]
    assert runs.loc["bad-history", "status"] in ("finished", "broken")
    assert not math.isnan(runs.loc["no-per-image", "delta"]) and math.isnan(runs.loc["no-per-image", "ci_low"])
    assert runs.loc["v0", "status"] == "other version" and "config_version 0" in runs.loc["v0", "note"]
    assert runs.loc["good", "metric"] == pytest.approx(metric_of(good))
    assert len(runs) == 6 and no_hist.exists()


def test_compare_never_imports_torch(study, tmp_path):
    code = (
        "import sys; from damage_smp.compare import compare; "
        f"r = compare([{str(study)!r}], out={str(tmp_path / 'o')!r}); "
        "assert len(r.runs) == 11, r.runs; "
        "print('torch' in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("False"), out.stdout


def test_cli_compare(study, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["compare", str(study), "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "runs — test split" in res.output and "per-class IoU" in res.output and "Material loss" in res.output
    assert "[+" in res.output and "baseline" in res.output  # a bootstrap interval and the baseline group
    assert (tmp_path / "c" / "compare.csv").is_file()
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["compare", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "no run directories found" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["compare", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "no such folder" in res.output
    res = runner.invoke(app, ["compare", str(study), "--metric", "nonsense", "--out", str(tmp_path / "c")])
    assert res.exit_code == 1 and "--metric" in res.output


def test_hundred_runs_compare_fast(tmp_path):
    root = tmp_path / "exp"
    mats = {w: image_mats(q, 0) for w, q in (("none", 0.5), ("imagenet", 0.75))}
    for i in range(100):  # 2 weights x 4 settings (3 train fractions, 2 epoch budgets), 12-13 seeds each
        weights, variant, seed = ("none", "imagenet")[i % 2], (i // 2) % 4, i // 8
        make_run(root / f"study{variant}", f"{weights}-v{variant}-s{seed:02d}", weights=weights, seed=seed,
                 frac=(0.25, 0.5, 1.0, 1.0)[variant], epochs=(10, 10, 10, 20)[variant], mats=mats[weights])  # fmt: skip
    t0, c0 = time.perf_counter(), time.process_time()
    result = compare([root], out=tmp_path / "out")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"\ncompare of 100 run dirs (with plots): {seconds:.2f} s wall, {cpu:.2f} s CPU")
    assert len(result.runs) == 100 and (result.runs["status"] == "finished").all()
    assert len(result.groups) == 8 and set(result.groups["n"]) == {12, 13}
    assert (tmp_path / "out" / "data_efficiency.png").is_file()
    assert seconds < 10


def counts_of(mats: list[np.ndarray]) -> ImageCounts:
    rows = pd.DataFrame([per_image_row(i, m) for i, m in enumerate(mats)])
    return ImageCounts(
        rows["image"].tolist(),
        rows[[f"tp_{c}" for c in range(C)]].to_numpy(),
        rows[[f"fp_{c}" for c in range(C)]].to_numpy(),
        rows[[f"fn_{c}" for c in range(C)]].to_numpy(),
        rows[["damage_tp", "damage_fp", "damage_fn"]].to_numpy(),
    )


def test_split_filename():
    assert split_filename("per_image", "test", ".csv") == "per_image.csv"
    assert split_filename("confusion_matrix", "val", ".png") == "confusion_matrix_val.png"
    assert split_filename("per_image", "test@fold a/b", ".csv") == "per_image_test@fold_a_b.csv"
