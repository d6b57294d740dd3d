"""Metrics: the confusion matrix against a brute-force NumPy count and against smp.metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from damage_smp.labels import IGNORE_INDEX, LabelScheme, load_scheme
from damage_smp.metrics import ABSENT_NOTE, ConfusionMatrix, image_detection

C = 6
ABSENT = 4  # in neither targets nor predictions
ONLY_PREDICTED = 5  # never in the targets, sometimes predicted


def random_pair(rng: np.random.Generator, shape=(3, 40, 50)):
    """Random (pred, target) uint8 masks: ~10 % ignored targets, class 4 absent, class 5 only predicted."""
    target = rng.choice([0, 1, 2, 3], size=shape, p=[0.55, 0.25, 0.15, 0.05]).astype(np.uint8)
    pred = target.copy()
    flip = rng.random(shape) < 0.3
    pred[flip] = rng.choice([0, 1, 2, 3, ONLY_PREDICTED], size=int(flip.sum())).astype(np.uint8)
    target[rng.random(shape) < 0.1] = IGNORE_INDEX
    return pred, target


def brute_force(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts by looping over pixels: the slow obvious definition."""
    mat = np.zeros((num_classes, num_classes), np.int64)
    for t, p in zip(target.ravel().tolist(), pred.ravel().tolist(), strict=True):
        if t != IGNORE_INDEX:
            mat[t, p] += 1
    return mat


def test_matrix_equals_brute_force_count_and_per_class_formulas():
    rng = np.random.default_rng(0)
    pred, target = random_pair(rng)
    cm = ConfusionMatrix(C)
    cm.update(pred, target)
    np.testing.assert_array_equal(cm.to_numpy(), brute_force(pred, target, C))
    assert cm.n_pixels == int((target != IGNORE_INDEX).sum())

    rows = cm.per_class([f"c{i}" for i in range(C)])
    valid = target != IGNORE_INDEX
    for i, r in enumerate(rows):
        t, p = (target == i) & valid, (pred == i) & valid
        tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
        assert (r["name"], r["tp"], r["fp"], r["fn"]) == (f"c{i}", tp, fp, fn)
        assert (r["support"], r["predicted"]) == (int(t.sum()), int(p.sum()))
        if i == ABSENT:
            assert math.isnan(r["iou"]) and math.isnan(r["dice"]) and math.isnan(r["precision"])
        else:
            assert r["iou"] == pytest.approx(tp / (tp + fp + fn))
            assert r["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # predicted but never in the targets: all false positives, IoU 0 (not NaN), recall undefined
    only = rows[ONLY_PREDICTED]
    assert only["predicted"] > 0 and only["iou"] == 0.0 and only["dice"] == 0.0 and math.isnan(only["recall"])


def test_per_class_matches_smp_metrics():
    rng = np.random.default_rng(1)
    pred, target = random_pair(rng, (4, 32, 48))
    cm = ConfusionMatrix(C)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    tp, fp, fn, tn = smp.metrics.get_stats(
        torch.from_numpy(pred).long(),
        torch.from_numpy(target).long(),
        mode="multiclass",
        ignore_index=IGNORE_INDEX,
        num_classes=C,
    )
    tp, fp, fn, tn = (s.sum(0, keepdim=True) for s in (tp, fp, fn, tn))  # dataset-wide counts, (1, C)
    iou = smp.metrics.iou_score(tp, fp, fn, tn, reduction="none")[0]
    f1 = smp.metrics.f1_score(tp, fp, fn, tn, reduction="none")[0]
    precision = smp.metrics.precision(tp, fp, fn, tn, reduction="none")[0]
    recall = smp.metrics.recall(tp, fp, fn, tn, reduction="none")[0]
    rows = cm.per_class(None)
    assert [r["tp"] for r in rows] == tp[0].tolist()
    assert [r["fp"] for r in rows] == fp[0].tolist()
    assert [r["fn"] for r in rows] == fn[0].tolist()
    for i, r in enumerate(rows):
        if i == ABSENT:
            # smp scores 0/0 with zero_division (1.0); we say NaN and skip the class in means
            assert iou[i] == 1.0 and math.isnan(r["iou"])
            continue
        assert r["iou"] == pytest.approx(float(iou[i]), abs=1e-6)
        assert r["dice"] == pytest.approx(float(f1[i]), abs=1e-6)
        assert r["precision"] == pytest.approx(float(precision[i]), abs=1e-6)
        if i == ONLY_PREDICTED:  # no target pixels: recall is 0/0, NaN here, zero_division (1.0) in smp
            assert math.isnan(r["recall"]) and recall[i] == 1.0
        else:
            assert r["recall"] == pytest.approx(float(recall[i]), abs=1e-6)
    # our mIoU = smp's per-class IoU averaged over the classes that occur
    summary = cm.summary(LabelScheme.from_dict({"classes": _classes(C)}))
    present = [i for i in range(C) if i != ABSENT]
    assert summary["miou"] == pytest.approx(float(iou[present].mean()), abs=1e-6)


def _classes(n: int) -> list[dict]:
    return [{"name": f"c{i}", "color": f"#0000{i:02X}", "values": [i], "damage": i > 0} for i in range(n)]


def test_summary_skips_absent_classes_and_says_so():
    scheme = LabelScheme.from_dict({"classes": _classes(C), "clean": "c0"})
    rng = np.random.default_rng(2)
    pred, target = random_pair(rng)
    cm = ConfusionMatrix(C)
    cm.update(pred, target)
    s = cm.summary(scheme)
    iou = np.array([r["iou"] for r in cm.per_class(scheme)])
    assert s["miou"] == pytest.approx(np.nanmean(iou))
    assert s["miou"] != pytest.approx(np.nan_to_num(iou).mean())  # NaN is not scored as 0
    assert s["damage_miou"] == pytest.approx(np.nanmean(iou[1:]))
    assert s["absent_classes"] == ["c4"] and s["note"] == ABSENT_NOTE and "absent" in s["note"]
    assert s["n_classes_scored"] == C - 1
    valid = target != IGNORE_INDEX
    assert s["pixel_accuracy"] == pytest.approx(float((pred == target)[valid].mean()))
    assert s["n_pixels"] == int(valid.sum())
    support = np.array([r["support"] for r in cm.per_class(scheme)])
    assert s["fw_iou"] == pytest.approx(float(np.nansum(support / support.sum() * iou)))
    text = json.dumps(s)  # plain Python types, JSON-ready
    assert json.loads(text)["absent_classes"] == ["c4"]


def test_damage_vs_clean_equals_hand_built_binary_count():
    scheme = load_scheme("artefact")  # 0 Clean, 1-15 damage, 16 Background
    bg, k = scheme.background_index, scheme.num_classes
    rng = np.random.default_rng(3)
    target = rng.choice([0, 0, 0, 3, 5, 9, bg], size=(2, 64, 64)).astype(np.uint8)
    pred = np.where(rng.random(target.shape) < 0.35, rng.integers(0, k, target.shape), target).astype(np.uint8)
    target[rng.random(target.shape) < 0.05] = IGNORE_INDEX
    cm = ConfusionMatrix(k)
    cm.update(pred, target)

    counted = (target != IGNORE_INDEX) & (target != bg)  # background targets left out entirely
    t_dmg = np.isin(target, scheme.damage_indices) & counted
    p_dmg = np.isin(pred, scheme.damage_indices) & counted
    tp, fp = int((t_dmg & p_dmg).sum()), int((~t_dmg & p_dmg & counted).sum())
    fn, tn = int((t_dmg & ~p_dmg).sum()), int((~t_dmg & ~p_dmg & counted).sum())
    binary = cm.damage_vs_clean(scheme)
    assert (binary["tp"], binary["fp"], binary["fn"], binary["tn"]) == (tp, fp, fn, tn)
    s = cm.summary(scheme)
    assert s["damage_iou"] == pytest.approx(tp / (tp + fp + fn))
    assert s["damage_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert s["damage_precision"] == pytest.approx(tp / (tp + fp))
    assert s["damage_recall"] == pytest.approx(tp / (tp + fn))


def test_damage_vs_clean_rules_on_a_tiny_example():
    scheme = load_scheme("artefact")
    bg = scheme.background_index
    # target: Dust, Dust, Hair, Clean, Clean, Background, Background
    target = np.array([3, 3, 5, 0, 0, bg, bg], np.uint8)
    pred = np.array([3, 4, bg, bg, 7, 3, 0], np.uint8)
    cm = ConfusionMatrix(scheme.num_classes)
    cm.update(pred, target)
    b = cm.damage_vs_clean(scheme)
    # Dust->Dust and Dust->Scratch are TP (damage merged); Hair->Background is FN; Clean->Background is TN;
    # Clean->Fold is FP; both Background targets are left out, whatever was predicted there
    assert (b["tp"], b["fn"], b["tn"], b["fp"]) == (2, 1, 1, 1)
    assert b["iou"] == pytest.approx(2 / 4)


def test_accumulation_merge_and_round_trip():
    rng = np.random.default_rng(4)
    pred, target = random_pair(rng)
    whole = ConfusionMatrix(C)
    whole.update(pred, target)
    parts = [ConfusionMatrix(C) for _ in range(3)]
    for i, part in enumerate(parts):
        part.update(torch.from_numpy(pred[i]).long(), target[i])  # mixed tensor / array, long / uint8
    total = parts[0] + parts[1] + parts[2]
    np.testing.assert_array_equal(total.to_numpy(), whole.to_numpy())
    np.testing.assert_array_equal(parts[0].to_numpy() + parts[1].to_numpy(), parts[0].merge(parts[1]).to_numpy())

    again = ConfusionMatrix.from_numpy(whole.to_numpy().tolist())  # e.g. read back from JSON
    assert again.mat.dtype == torch.int64
    np.testing.assert_array_equal(again.to_numpy(), whole.to_numpy())
    whole.reset()
    assert whole.n_pixels == 0


def test_all_reduce_in_a_process_group(tmp_path):
    """A one-rank gloo group: all_reduce must run the collective and keep the counts (a no-op sum)."""
    import torch.distributed as dist

    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    before = cm.to_numpy()
    np.testing.assert_array_equal(cm.all_reduce().to_numpy(), before)  # not initialised: unchanged
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        np.testing.assert_array_equal(cm.all_reduce().to_numpy(), before)
    finally:
        dist.destroy_process_group()


def test_bad_inputs_raise_value_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside 0..2"):
        cm.update(np.array([0, 3]), np.array([0, 1]))
    with pytest.raises(ValueError, match="outside 0..2"):
        cm.update(np.array([0, 1]), np.array([7, 1]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="argmax"):
        cm.update(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="17 classes"):
        cm.per_class(load_scheme("artefact"))
    assert cm.n_pixels == 0  # nothing half-counted


def test_image_detection_counts_images():
    scheme = load_scheme("artefact")
    bg = scheme.background_index

    def mat(target, pred):
        cm = ConfusionMatrix(scheme.num_classes)
        cm.update(np.array(pred, np.uint8), np.array(target, np.uint8))
        return cm

    per_image = [
        mat([3, 3, 0], [3, 0, 0]),  # damaged, flagged: TP
        mat([5, 0, 0], [0, 0, 0]),  # damaged, missed: FN
        mat([0, 0, 0], [0, 9, 9]),  # clean, flagged: FP (2 pixels)
        mat([0, 0, bg], [0, 0, 3]),  # clean; damage predicted only on background: TN
        mat([0, 0, 0], [0, 0, 0]).to_numpy(),  # clean, clean: TN (a plain array works too)
    ]
    d = image_detection(per_image, scheme)
    assert (d["tp"], d["fn"], d["fp"], d["tn"], d["n_images"]) == (1, 1, 1, 2, 5)
    assert d["precision"] == pytest.approx(0.5) and d["recall"] == pytest.approx(0.5)
    assert d["f1"] == pytest.approx(0.5) and d["accuracy"] == pytest.approx(3 / 5)
    strict = image_detection(per_image, scheme, min_pixels=2)  # one damage pixel is not enough now
    assert (strict["tp"], strict["fn"], strict["fp"], strict["tn"]) == (0, 1, 1, 3)
    assert strict["precision"] == 0.0 and strict["recall"] == 0.0
    empty = image_detection([], scheme)
    assert math.isnan(empty["precision"]) and empty["n_images"] == 0
