"""Self-training end to end on tiny real files: pseudo-label masks, train --pseudo, rounds, bad inputs, the loss.

One tiny teacher (resnet18, random init, 1 epoch on 64 px images) is shared by the module; its pseudo masks are
checked pixel for pixel against ``tiling.predict_probs`` of the same model.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_pair, train_tiny_run
from rich.console import Console
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.config import TrainConfig
from damage_smp.images import read_image, write_image
from damage_smp.labels import IGNORE_INDEX
from damage_smp.losses import DiceCELoss
from damage_smp.models import load_bundle
from damage_smp.pseudo import pseudo_label
from damage_smp.runs import sha256_file
from damage_smp.tiling import predict_probs
from damage_smp.train import setup, train_one_epoch

QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def world(module_dir):
    """A teacher run, its manifest (8 train, 2 val), and 4 unlabelled 64 px scans in unlabelled/."""
    root = module_dir("selftrain")
    teacher = train_tiny_run(root)
    rng = np.random.default_rng(7)
    for i in range(4):
        write_image(root / "unlabelled" / f"scan{i}.png", make_pair(rng)[0])
    return root, teacher


def threshold_for(bundle, image) -> float:
    """A threshold that splits the teacher's pixels into confident and not (its median top probability)."""
    probs = predict_probs(bundle.model, image, bundle.scheme.num_classes, tile=bundle.cfg.tile, overlap=0.5)
    return float(np.median(probs.amax(0).numpy()))


@pytest.fixture(scope="module")
def labelled(world):
    """pseudo-label of the unlabelled scans (plus one val and one train image of the manifest)."""
    root, teacher = world
    bundle = load_bundle(teacher, "best", "cpu")
    threshold = threshold_for(bundle, read_image(root / "unlabelled" / "scan0.png"))
    inputs = [str(root / "unlabelled"), str(root / "images" / "img08.png"), str(root / "images" / "img00.png")]
    result = pseudo_label(teacher, inputs, root / "pseudo", threshold=threshold, device="cpu", console=QUIET)
    return root / "pseudo", threshold, bundle, result, inputs


def test_pseudo_masks_are_255_exactly_where_the_teacher_is_unsure(world, labelled):
    root, teacher = world
    out, threshold, bundle, result, _ = labelled
    assert (result.done, result.skipped, result.failures) == (6, 0, [])
    info = json.loads((out / "pseudo.json").read_text())
    assert info["checkpoint_sha256"] == sha256_file(teacher / "checkpoints" / "best.pt")
    assert (info["threshold"], info["round"], info["status"]) == (threshold, 1, "finished")
    rows = (out / "manifest.csv").read_text().splitlines()
    assert rows[0] == "image,mask,split,source,confident" and len(rows) == 7
    some_unsure = 0
    for line in rows[1:]:
        image, mask, split, source, share = line.split(",")
        assert (split, source) == ("train", "pseudo")
        rgb = read_image(out / image)
        probs = predict_probs(bundle.model, rgb, bundle.scheme.num_classes, tile=bundle.cfg.tile, overlap=0.5)
        expected = np.where(probs.amax(0).numpy() < threshold, IGNORE_INDEX, probs.argmax(0).numpy())
        written = cv2.imread(str(out / mask), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(written, expected.astype(np.uint8))
        assert float(share) == pytest.approx((written != IGNORE_INDEX).mean(), abs=1e-4)
        some_unsure += (written == IGNORE_INDEX).any() and (written != IGNORE_INDEX).any()
    assert some_unsure  # the threshold really splits pixels


def test_a_killed_run_resumes_and_never_counts_a_half_written_mask(world, labelled):
    root, teacher = world
    out, threshold, _, _, inputs = labelled
    copy = root / "pseudo-resume"
    shutil.copytree(out, copy)
    masks, records = copy / "masks" / "unlabelled", copy / "records" / "unlabelled"
    (records / "scan1.json").unlink()  # killed after the mask, before its record
    (records / "scan2.json").unlink()
    (masks / "scan2.png").write_bytes(b"\x89PNG half")  # not ours: no mark, no record
    (masks / ".scan3.png.abcd1234.tmp").write_bytes(b"partial")  # killed while writing, an hour ago
    os.utime(masks / ".scan3.png.abcd1234.tmp", (time.time() - 3600,) * 2)
    args = dict(threshold=threshold, device="cpu", console=QUIET)
    with pytest.raises(FileExistsError, match="scan2.png: exists and was not written by damage-smp pseudo-label"):
        pseudo_label(teacher, inputs, copy, **args)
    (masks / "scan2.png").unlink()
    result = pseudo_label(teacher, inputs, copy, **args)
    assert (result.done, result.skipped, result.listed) == (2, 4, 6)
    assert (masks / "scan1.png").read_bytes() == (out / "masks" / "unlabelled" / "scan1.png").read_bytes()
    assert not (masks / ".scan3.png.abcd1234.tmp").exists()  # an old temp of ours is cleaned up
    result = pseudo_label(teacher, [str(root / "unlabelled")], copy, **args)  # other INPUTS: names are kept
    assert (result.done, result.skipped, result.listed) == (0, 4, 6)
    assert sorted(p.name for p in records.iterdir()) == [f"scan{i}.json" for i in range(4)]
    with pytest.raises(ValueError, match=re.escape(f"threshold {threshold!r} -> 0.6")):
        pseudo_label(teacher, [str(root / "unlabelled")], copy, **{**args, "threshold": 0.6})


def test_pseudo_rows_reach_training_only_and_rounds_work(world, labelled):
    root, teacher = world
    out, *_ = labelled
    cfg = TrainConfig(manifest=str(root / "manifest.csv"), encoder="resnet18", encoder_weights="none", epochs=1,
                      samples_per_epoch=4, batch_size=4, crop_size=64, tile=64, num_workers=0, samples=0,
                      device="cpu", out_dir=str(root), name="student", pseudo=str(out), pseudo_weight=0.5)  # fmt: skip
    run = setup(cfg, None, QUIET)
    images = [p.rsplit("/", 1)[-1] for p in run.dataset.images]
    assert images == [f"img{i:02d}.png" for i in range(8)] + [f"scan{i}.png" for i in range(4)]
    assert sorted(p.rsplit("/", 1)[-1] for p in run.val_rows["image_path"]) == ["img08.png", "img09.png"]
    assert run.dataset.weights == [1.0] * 8 + [0.5] * 4
    assert run.dataset.scheme_of(8).name == "artefact-index" and run.dataset.scheme_of(0).name == "artefact"
    assert "weight" in run.dataset[0] and float(run.dataset[11]["weight"]) == 0.5
    seconds, seen, *_ = train_one_epoch(run, 1)  # the weighted loss on real pseudo crops
    assert seen == 4 and math.isfinite(run.last_train_loss)
    record = json.loads((run.paths.config).read_text())["self_training"]
    assert (record["round"], record["teacher"], record["dropped_eval"], record["dropped_train"]) == (
        1, str(teacher.resolve()), 1, 1)  # fmt: skip
    student = run.paths.root  # a student is a valid teacher: the next round
    again = pseudo_label(student, [str(root / "unlabelled")], root / "round2", checkpoint="last", device="cpu",
                         console=QUIET)  # fmt: skip
    assert again.listed == 4 and json.loads((root / "round2" / "pseudo.json").read_text())["round"] == 2


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output.strip()


def test_bad_inputs_are_one_line_and_exit_1(world, labelled, tmp_path):
    root, teacher = world
    out, *_ = labelled
    code, text = cli("pseudo-label", teacher, root / "unlabelled", "--out", tmp_path / "p", "--threshold", "1.5")
    assert code == 1 and text.startswith("error: --threshold 1.5: must be between 0 and 1") and "\n" not in text
    (tmp_path / "empty").mkdir()
    code, text = cli("pseudo-label", teacher, tmp_path / "empty", "--out", tmp_path / "p")
    assert code == 1 and "holds no image files" in text and not (tmp_path / "p").exists()
    code, text = cli("pseudo-label", teacher, out, "--out", tmp_path / "p")  # its own masks are no scans
    assert code == 1 and "is the output folder of a damage-smp pseudo-label (pseudo.json is there)" in text
    base = ["train", "--manifest", root / "manifest.csv", "--encoder", "resnet18", "--encoder-weights", "none",
            "--crop-size", "64", "--tile", "64", "--num-workers", "0", "--device", "cpu",
            "--out-dir", tmp_path]  # fmt: skip
    code, text = cli(*base, "--pseudo", out, "--labels", "artefact-binary")
    assert code == 1 and "label scheme 'artefact'" in text and "trains 'artefact-binary'" in text
    code, text = cli(*base, "--pseudo", root / "unlabelled")
    assert code == 1 and "not a folder made by damage-smp pseudo-label" in text
    code, text = cli(*base, "--pseudo-weight", "2")
    assert code == 1 and "--pseudo-weight" in text and "needs --pseudo DIR" in text
    wrong = root / "wrong-size"  # beside the original: its manifest's relative paths still hold
    shutil.copytree(out, wrong)
    write_image(wrong / "masks" / "unlabelled" / "scan1.png", np.zeros((32, 64), np.uint8))
    code, text = cli(*base, "--pseudo", wrong)
    assert code == 1 and "scan1.png is 64x32 but its image" in text and "\n" not in text
    assert not any(p.name.startswith("unet") for p in tmp_path.iterdir())  # refused before any run dir


def test_per_sample_weight_counts_a_sample_w_times():
    torch.manual_seed(0)
    loss = DiceCELoss(5)
    logits, target = torch.randn(3, 5, 16, 16), torch.randint(0, 5, (3, 16, 16))
    target[0, :6] = IGNORE_INDEX
    assert loss(logits, target, torch.ones(3)).item() == pytest.approx(loss(logits, target).item(), rel=1e-5)
    doubled = loss(torch.cat([logits[:1], logits]), torch.cat([target[:1], target]))
    assert loss(logits, target, torch.tensor([2.0, 1.0, 1.0])).item() == pytest.approx(doubled.item(), rel=1e-5)
    all_ignored = torch.full((3, 16, 16), IGNORE_INDEX)
    assert loss(logits, all_ignored, torch.full((3,), 0.5)).item() == 0.0


def test_compare_lists_the_arms_with_init_and_self_training(tmp_path):
    from test_compare import make_run

    from damage_smp.compare import compare

    root = tmp_path / "study"
    arms = {  # name: (encoder_weights, quality, config edits, model-info edits, self-training)
        "scratch": ("none", 0.5, {}, {}, None),
        "imagenet": ("imagenet", 0.7, {}, {}, None),
        "pt-scratch": ("none", 0.6, {"init_from": "/pre/pt"}, {"pretrain": {"run": "/pre/pt", "init": "none"}}, None),
        "pt-imagenet": ("imagenet", 0.72, {"init_from": "/pre/pt-in"},
                        {"pretrain": {"run": "/pre/pt-in", "init": "imagenet"}}, None),
        "student": ("imagenet", 0.75, {}, {}, 1),
    }  # fmt: skip
    for name, (weights, quality, edits, info, st) in arms.items():
        for seed in (0, 1):
            run = make_run(root, f"{name}-s{seed}", weights=weights, seed=seed, quality=quality)
            config = json.loads((run / "config.json").read_text())
            config["train"].update(edits)
            config["model"].update(info)
            if st:  # each seed's student learnt from the same seed's teacher, through its own pseudo folder
                config["train"]["pseudo"] = f"/pseudo/s{seed}"
                teacher = {**config["train"], "seed": seed, "name": f"imagenet-s{seed}", "pseudo": None}
                config["self_training"] = {"round": 1, "teacher_name": f"imagenet-s{seed}", "threshold": 0.9,
                                           "weight": 1.0, "tta": False, "checkpoint": "best",
                                           "teacher_config": teacher}  # fmt: skip
            (run / "config.json").write_text(json.dumps(config))
    result = compare([root], out=tmp_path / "cmp", plots=False)
    runs = result.runs.set_index("name")
    assert runs.loc["scratch-s0", "init"] == "none" and runs.loc["imagenet-s1", "init"] == "imagenet"
    assert runs.loc["pt-scratch-s0", "init"] == "pretrain:pt"
    assert runs.loc["pt-imagenet-s0", "init"] == "imagenet+pretrain:pt-in"
    assert runs.loc["student-s1", "self_training"] == "round 1 ← imagenet-s1 (t 0.9, w 1.0)"
    assert runs.loc["student-s1", "round"] == 1 and runs.loc["imagenet-s1", "round"] == 0
    groups = result.groups.set_index("init")
    assert len(result.groups) == 5  # every arm is one seed group, students of two teachers included
    assert set(result.groups["baseline"]) == {"scratch (seeds 0,1)"}  # a pre-trained random init is no baseline
    student = result.groups[result.groups["self_training"] != ""].iloc[0]
    assert student["n"] == 2 and student["delta"] > 0 and student["ci_low"] > 0
    assert groups.loc["pretrain:pt", "delta"] == pytest.approx(0.1, abs=0.05)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| run | status | init | self-training |" in md and "round 1 ← imagenet-s0" in md
    from damage_smp.report.study import groups_table, runs_table

    table = pd.read_csv(tmp_path / "cmp" / "compare.csv", dtype=str, keep_default_na=False)  # as the study page
    page = runs_table(table[table["row_type"] == "run"].to_dict("records"), "damage_miou", None)
    page += groups_table(table[table["row_type"] != "run"].to_dict("records"), "damage_miou")
    assert "<td>round 1 ← imagenet-s0 (t 0.9, w 1.0)</td>" in page  # the group row
    assert 'data-col="init" data-value="imagenet+pretrain:pt-in"' in page
    assert 'data-col="self_training" data-value="round 1 ← imagenet-s1 (t 0.9, w 1.0)"' in page
