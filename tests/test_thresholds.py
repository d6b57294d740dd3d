"""Tuned damage thresholds: the histogram's optimum is a brute-force sweep's, evaluate and predict use it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.evaluate import evaluate
from damage_smp.images import read_image, read_mask
from damage_smp.labels import IGNORE_INDEX, load_scheme
from damage_smp.models import load_bundle
from damage_smp.predict import predict
from damage_smp.thresholds import BINS, DamageHistogram, Decision, damage_probability, quantise, resolve_decision
from damage_smp.tiling import predict_probs

SCHEME = load_scheme("artefact")
FAST = dict(tile=64, overlap=0.25, batch_size=8, device="cpu", workers=1)


def sweep(probs_targets, scheme, levels=range(BINS + 1)) -> tuple[int, float]:
    """Brute force: classify with every threshold, count damage-vs-clean pixels with NumPy, keep the best F1."""
    damage = np.array(scheme.damage_indices)
    best_k, best_f = -1, -1.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2000 small calls: threads only contend here
    for k in levels:
        tp = fp = fn = 0
        for probs, target in probs_targets:
            pred = np.isin(Decision.tuned(scheme, k)(probs).numpy(), damage)
            true = np.isin(target, damage)
            clean = (target != IGNORE_INDEX) & ~true & (target != (scheme.background_index or -1))
            tp, fp, fn = tp + np.sum(pred & true), fp + np.sum(pred & clean), fn + np.sum(~pred & true)
        f = 2 * tp / (2 * tp + fp + fn)
        if f > best_f:
            best_k, best_f = k, f
    torch.set_num_threads(threads)
    return best_k, best_f


def test_histogram_optimum_is_the_brute_force_sweeps():
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(2):
        logits = torch.from_numpy(rng.normal(size=(SCHEME.num_classes, 24, 24)).astype(np.float32))
        logits[1] += 1.5  # some damage
        target = rng.choice([0, 0, 0, 1, 4, 16, IGNORE_INDEX], size=(24, 24)).astype(np.uint8)
        pairs.append((torch.softmax(logits * 2, 0), target))
    hist = DamageHistogram(SCHEME)
    for probs, target in pairs:
        hist.update(probs[:, :10], target[:10])  # in blocks, as the tiler hands them on
        hist.update(probs[:, 10:], target[10:])
    best = hist.best()
    k, f = sweep(pairs, SCHEME)
    assert best["level"] == k and best["f1"] == pytest.approx(f, abs=1e-12) and best["threshold"] == k / BINS
    # counts: background and ignored targets are in neither histogram
    valid = np.concatenate([t.ravel() for _, t in pairs])
    assert best["damage_px"] == np.isin(valid, SCHEME.damage_indices).sum()
    assert best["clean_px"] == (valid == 0).sum()


def test_the_rule_is_its_definition_and_argmax_is_torchs():
    probs = torch.softmax(torch.randn(SCHEME.num_classes, 20, 30) * 3, 0)
    assert torch.equal(Decision()(probs), probs.argmax(0).to(torch.uint8))
    damage, other = SCHEME.damage_indices, [0, SCHEME.background_index]
    p_damage = probs[damage].sum(0)
    assert torch.allclose(damage_probability(probs, damage), p_damage, atol=1e-6)
    rule = Decision.tuned(SCHEME, 300)(probs).long()
    is_damage = quantise(damage_probability(probs, damage)) >= 300
    naive = torch.where(
        is_damage, torch.tensor(damage)[probs[damage].argmax(0)], torch.tensor(other)[probs[other].argmax(0)]
    )
    assert torch.equal(rule, naive) and is_damage.any() and (~is_damage).any()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_the_rule_moves_exactly_the_pixels_of_each_level(layout):
    """At every level, ``is_damage`` (a float comparison) is the histogram's ``quantise(p) >= level``, and the
    classes are the first most likely damage / other one, on exact ties too, in either memory layout."""
    torch.manual_seed(3)
    logits = torch.randn(SCHEME.num_classes, 24, 32) * 3
    logits[:, :4] = logits[:, :4].round()  # many exact ties
    logits[:, 5, :6] = 0.0  # every class equal
    probs = torch.softmax(logits, 0)
    if layout == "channels_last":  # (C, h, w) seen over (h, w, C) memory, as predict's blocks are
        probs = probs.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    damage, other = SCHEME.damage_indices, [0, SCHEME.background_index]
    levels = quantise(damage_probability(probs, damage))
    best_damage = torch.tensor(damage)[probs[damage].argmax(0)]
    best_other = torch.tensor(other)[probs[other].argmax(0)]
    for level in [0, 1, *levels.unique().tolist(), BINS]:
        rule = Decision.tuned(SCHEME, int(level))
        assert torch.equal(rule.is_damage(probs), levels >= level)
        assert torch.equal(rule(probs).long(), torch.where(levels >= level, best_damage, best_other))


def test_binary_rule_at_half_is_the_argmax():
    scheme = load_scheme("binary")
    probs = torch.softmax(torch.randn(2, 16, 16), 0)
    assert torch.equal(Decision.tuned(scheme, BINS // 2)(probs), probs.argmax(0).to(torch.uint8))


def test_train_writes_thresholds_and_tune_on_val_finds_the_sweeps_optimum(shared_run):
    data = json.loads((shared_run / "thresholds.json").read_text())
    assert data["split"] == "val" and data["checkpoint"] == "best" and (shared_run / "pr_curve_val.png").is_file()
    result = evaluate(shared_run, split="val", device="cpu", tune=True)
    assert "skipped" in result["tuned"] and "tuned on this split" in result["tuned"]["skipped"]
    bundle = load_bundle(shared_run)
    rows = pd.read_csv(shared_run.parent / "manifest.csv").query("split == 'val'")
    pairs = []
    for r in rows.itertuples():
        image = read_image(shared_run.parent / r.image)
        probs = predict_probs(bundle.model, image, SCHEME.num_classes, tile=64, overlap=bundle.cfg.overlap,
                              batch_size=bundle.cfg.batch_size)  # fmt: skip
        pairs.append((probs, SCHEME.decode(read_mask(shared_run.parent / r.mask))))
    # F1 is constant for k in (l, l'] between two levels present, so 0 and each present level + 1 are every case
    present = torch.cat([quantise(damage_probability(p, SCHEME.damage_indices)).ravel() for p, _ in pairs]).unique()
    k, f = sweep(pairs, SCHEME, sorted({0, *(present + 1).clamp(max=BINS).tolist()}))
    again = json.loads((shared_run / "thresholds.json").read_text())
    assert again["level"] == k == data["level"] and again["f1"] == pytest.approx(f, abs=1e-12)


def test_evaluate_scores_tuned_only_on_another_split(shared_run, tmp_path):
    shutil.copy(shared_run.parent / "manifest.csv", tmp_path / "m.csv")  # the val rows, named test
    df = pd.read_csv(tmp_path / "m.csv")
    df["image"] = [str(shared_run.parent / p) for p in df["image"]]
    df["mask"] = [str(shared_run.parent / p) for p in df["mask"]]
    df.loc[df["split"] == "val", "split"] = "test"
    df.to_csv(tmp_path / "m.csv", index=False)
    result = evaluate(shared_run, split="test", manifest=tmp_path / "m.csv", device="cpu")
    tuned = result["tuned"]
    assert tuned["threshold"] == json.loads((shared_run / "thresholds.json").read_text())["threshold"]
    assert "tuned on val" in tuned["note"] and tuned["summary"]["n_pixels"] == result["summary"]["n_pixels"]
    with pytest.raises(ValueError, match="--tune chooses the threshold on the run's val split"):
        evaluate(shared_run, split="test", manifest=tmp_path / "m.csv", device="cpu", tune=True)


def test_predict_tuned_differs_from_argmax_exactly_where_the_threshold_moves_pixels(shared_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(shared_run, run, ignore=shutil.ignore_patterns("last.pt", "epoch_*"))
    image_path = shared_run.parent / "images" / "img00.png"
    bundle = load_bundle(run)
    probs = predict_probs(bundle.model, read_image(image_path), SCHEME.num_classes, tile=64, overlap=0.25,
                          batch_size=8)  # fmt: skip
    damage = probs[SCHEME.damage_indices].sum(0)
    level = int(torch.quantile(damage, 0.5) * BINS)  # a threshold inside this image's range: it moves pixels
    data = json.loads((run / "thresholds.json").read_text())
    (run / "thresholds.json").write_text(json.dumps({**data, "level": level, "threshold": level / BINS}))
    rule = resolve_decision(run, "auto", SCHEME, bundle.checkpoint_path)
    assert rule.kind == "tuned" and rule.level == level
    maps = {}
    for decision in ("argmax", "tuned"):
        out = tmp_path / decision
        # lanes=1: on this thread, as predict_probs above (a lane's one-thread forward rounds a little differently)
        predict(run, [image_path], out, save="index", decision=decision, lanes=1, **FAST)
        maps[decision] = SCHEME.decode(read_mask(out / "img00_index.png"))
        assert json.loads((out / "predict.json").read_text())["decision"] == decision
    moved = (rule(probs) != probs.argmax(0).to(torch.uint8)).numpy()
    assert moved.any() and np.array_equal(maps["tuned"] != maps["argmax"], moved)
    assert np.array_equal(maps["tuned"], rule(probs).numpy())


def test_decision_tuned_without_thresholds_is_one_line(shared_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(shared_run, run, ignore=shutil.ignore_patterns("last.pt", "epoch_*", "thresholds.json"))
    image = str(shared_run.parent / "images" / "img00.png")
    args = ["predict", str(run), image, "--out", str(tmp_path / "o"), "--device", "cpu", "--decision", "tuned"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert "thresholds.json not found" in res.output and f"damage-smp evaluate {run} --split val --tune" in res.output
    assert resolve_decision(run, "auto", SCHEME, run / "checkpoints" / "best.pt").kind == "argmax"
