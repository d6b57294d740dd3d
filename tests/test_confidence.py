"""predict --save prob,uncertainty: the damage probability and the uncertainty as 8-bit maps; report order."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.images import read_image, read_mask
from damage_smp.labels import load_scheme
from damage_smp.models import load_bundle
from damage_smp.predict import predict
from damage_smp.report.batch import Scan, gallery_order
from damage_smp.tiling import predict_probs

SCHEME = load_scheme("artefact")


def test_prob_and_uncertainty_maps_are_the_blended_probabilities(shared_run, tmp_path):
    image_path = shared_run.parent / "images" / "img01.png"
    out = tmp_path / "p"
    predict(shared_run, [image_path], out, save="index,prob,uncertainty", tile=64, overlap=0.25, batch_size=8,
            device="cpu", workers=1)  # fmt: skip
    prob, unc = read_mask(out / "img01_prob.png"), read_mask(out / "img01_uncertainty.png")
    assert prob.dtype == np.uint8 and prob.shape == unc.shape == (64, 64)
    probs = predict_probs(load_bundle(shared_run).model, read_image(image_path), SCHEME.num_classes, tile=64,
                          overlap=0.25, batch_size=8)  # fmt: skip
    damage = probs[SCHEME.damage_indices].sum(0)
    assert np.abs(prob.astype(int) - (damage * 255).round().numpy()).max() <= 1  # float rounding at .5
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(0) / math.log(SCHEME.num_classes)
    assert np.abs(unc.astype(int) - (entropy * 255).round().numpy()).max() <= 1
    row = pd.read_csv(out / "areas.csv").iloc[0]
    assert abs(row["uncertainty_mean"] - unc.mean() / 255) < 1e-5


def test_unknown_save_is_one_line_listing_the_outputs(tmp_path):
    res = CliRunner().invoke(app, ["predict", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "o"),
                                   "--save", "colour,probs"])  # fmt: skip
    assert res.exit_code == 1 and res.output.count("\n") == 1
    assert "--save 'probs': not an output; choose from colour,index,overlay,prob,uncertainty,layers" in res.output


def test_gallery_puts_the_most_uncertain_first_when_the_batch_saved_uncertainty():
    scans = [Scan(n, None, None, None, None, 4, 4, 16, d, {}) for n, d in (("a", 9.0), ("b", 1.0), ("c", 5.0))]
    assert [s.name for s in gallery_order(scans)[0]] == ["a", "c", "b"]
    for s, u in zip(scans, (0.1, 0.7, 0.3), strict=True):
        s.uncertainty = u
    order, by = gallery_order(scans)
    assert [s.name for s in order] == ["b", "c", "a"] and by == "mean uncertainty"


def test_one_damage_class_maps_leave_the_probabilities_as_they_are():
    """artefact-binary has one damage class, so its damage probability is a view of the probabilities: the
    maps must not clamp it in place (that raised on predict's inference-mode tensors and changed the entropy)."""
    from damage_smp.predict.confidence import block_filler, confidence_maps

    binary = load_scheme("artefact-binary")
    with torch.inference_mode():  # as the tiler hands its blocks on
        probs = torch.softmax(torch.randn(binary.num_classes, 20, 30, generator=torch.Generator().manual_seed(0)), 0)
    before = probs.clone()
    maps = confidence_maps(("prob", "uncertainty"), (20, 30))
    block_filler(maps, binary.damage_indices, binary.num_classes)(0, 20, 0, 30, probs)
    assert torch.equal(probs, before)
    (damage,) = binary.damage_indices
    assert np.abs(maps["prob"].astype(int) - (before[damage] * 255).round().numpy()).max() <= 1
    entropy = -(before * before.log()).sum(0) / math.log(binary.num_classes)
    assert np.abs(maps["uncertainty"].astype(int) - (entropy * 255).round().numpy()).max() <= 1
