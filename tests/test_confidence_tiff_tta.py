"""Confidence maps of large scans as 16-bit TIFFs (resumed like any output) and the TTA flips' disagreement."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from damage_smp.images import read_image, read_mask, write_image
from damage_smp.labels import load_scheme
from damage_smp.models import load_bundle
from damage_smp.predict import confidence, predict
from damage_smp.predict.confidence import block_filler
from damage_smp.predict.owned import carries_mark
from damage_smp.tiling import TTA_FLIPS, normalised_entropy, predict_index, predict_probs

SCHEME = load_scheme("artefact")
OPTIONS = dict(tile=64, overlap=0.25, batch_size=8, device="cpu", workers=1)


def test_a_scan_above_the_size_gets_16_bit_tiffs_that_a_resumed_batch_recognises(shared_run, tmp_path, monkeypatch):
    image_path = shared_run.parent / "images" / "img01.png"
    small, big = tmp_path / "small", tmp_path / "big"
    predict(shared_run, [image_path], small, save="index,prob,uncertainty", **OPTIONS)
    monkeypatch.setattr(confidence, "TIFF_PIXELS", 64 * 64 - 1)  # this 64 x 64 scan is now "large"
    predict(shared_run, [image_path], big, save="index,prob,uncertainty", **OPTIONS)

    assert not (big / "img01_prob.png").exists() and not (big / "img01_uncertainty.png").exists()
    prob16 = tifffile.imread(big / "img01_prob.tif")
    unc16 = tifffile.imread(big / "img01_uncertainty.tif")
    assert prob16.dtype == unc16.dtype == np.uint16 and prob16.shape == unc16.shape == (64, 64)
    probs = predict_probs(load_bundle(shared_run).model, read_image(image_path), SCHEME.num_classes, tile=64,
                          overlap=0.25, batch_size=8)  # fmt: skip
    damage = probs[SCHEME.damage_indices].sum(0).numpy().astype(np.float64)
    assert np.abs(prob16.astype(int) - np.round(damage * 65535)).max() <= 1
    assert np.abs(read_mask(small / "img01_prob.png").astype(float) - prob16 / 257).max() <= 1
    assert np.abs(read_mask(small / "img01_uncertainty.png").astype(float) - unc16 / 257).max() <= 1
    with tifffile.TiffFile(big / "img01_prob.tif") as tif:  # tiled and deflate-compressed, for lazy readers
        page = tif.pages[0]
        assert page.is_tiled and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    assert carries_mark(big / "img01_prob.tif") and carries_mark(big / "img01_uncertainty.tif")

    record = json.loads((big / "img01_areas.json").read_text())
    assert record["outputs"]["prob"]["file"] == "img01_prob.tif"
    assert abs(record["uncertainty_mean"] - unc16.mean() / 65535) < 1e-6
    row = pd.read_csv(big / "areas.csv", keep_default_na=False).iloc[0]
    assert (row["prob"], row["uncertainty"]) == ("img01_prob.tif", "img01_uncertainty.tif")
    assert pd.read_csv(small / "areas.csv").iloc[0]["prob"] == "img01_prob.png"

    again = predict(shared_run, [image_path], big, save="index,prob,uncertainty", **OPTIONS)
    assert (again.n_done, again.n_skipped) == (0, 1)  # finished: the TIFFs are recognised as predict's
    redo = predict(shared_run, [image_path], big, save="prob", overwrite=True, **OPTIONS)
    assert redo.n_done == 1 and not redo.failures
    assert pd.read_csv(big / "areas.csv", keep_default_na=False).iloc[0]["uncertainty"] == "img01_uncertainty.tif"


def test_a_tiff_predict_did_not_write_is_never_replaced(shared_run, tmp_path, monkeypatch):
    image_path = shared_run.parent / "images" / "img01.png"
    monkeypatch.setattr(confidence, "TIFF_PIXELS", 100)
    out = tmp_path / "o"
    tifffile.imwrite(out / "img01_prob.tif" if out.mkdir() is None else None, np.ones((4, 4), np.uint16))
    with pytest.raises(FileExistsError, match="img01_prob.tif: exists and was not written by damage-smp predict"):
        predict(shared_run, [image_path], out, save="prob", overwrite=True, **OPTIONS)


def flip_disagreement(model, image: np.ndarray) -> np.ndarray:
    """The reference, from the four flips of one whole-image tile: H(mean p) - mean H(p), / log(C)."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        flips = [torch.softmax(model(x.flip(d) if d else x), 1).flip(d) if d else torch.softmax(model(x), 1)
                 for d in TTA_FLIPS]  # fmt: skip
    mean = torch.stack(flips).mean(0)[0]
    return (normalised_entropy(mean, 0) - torch.stack([normalised_entropy(p[0], 0) for p in flips]).mean(0)).numpy()


def test_tta_uncertainty_is_the_flips_mutual_information(shared_run, tmp_path):
    image_path = shared_run.parent / "images" / "img02.png"
    out, plain = tmp_path / "tta", tmp_path / "plain"
    predict(shared_run, [image_path], out, save="uncertainty", tta=True, **OPTIONS)
    predict(shared_run, [image_path], plain, save="uncertainty", tta=False, **OPTIONS)
    tta, entropy = read_mask(out / "img02_uncertainty.png"), read_mask(plain / "img02_uncertainty.png")
    model = load_bundle(shared_run).model.eval()
    reference = flip_disagreement(model, read_image(image_path))  # 64 x 64 = one tile: no blending
    assert reference.min() > -1e-5  # Jensen: the mean's entropy is never below the entropies' mean
    assert np.abs(tta.astype(float) - np.round(reference.clip(0, 1) * 255)).max() <= 1
    assert np.abs(tta.astype(int) - entropy.astype(int)).max() > 3  # not the entropy of the blended mean
    assert entropy.mean() > tta.mean()  # the mutual information is a part of the entropy of the mean


def test_tta_uncertainty_in_16_bits_matches_the_reference(shared_run, tmp_path, monkeypatch):
    """This 1-epoch model's flips disagree by < 1/255: the 16-bit map shows how much, exactly."""
    monkeypatch.setattr(confidence, "TIFF_PIXELS", 100)
    image_path = shared_run.parent / "images" / "img02.png"
    predict(shared_run, [image_path], tmp_path / "t", save="uncertainty", tta=True, **OPTIONS)
    tta = tifffile.imread(tmp_path / "t" / "img02_uncertainty.tif").astype(float)
    reference = flip_disagreement(load_bundle(shared_run).model.eval(), read_image(image_path))
    assert reference.max() * 65535 > 50  # the flips do disagree somewhere
    assert np.abs(tta - np.round(reference.clip(0, 1) * 65535)).max() <= 1


class Symmetrised(torch.nn.Module):
    """A model made flip-equivariant: the flip-back average of its logits over the four flips."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.stack([self.model(x.flip(d)).flip(d) if d else self.model(x) for d in TTA_FLIPS]).mean(0)


def uncertainty_map(model, image: np.ndarray, tta: bool) -> np.ndarray:
    """The uncertainty map at 16 bits (as for a large scan), so that small disagreements show."""
    maps = {"uncertainty": np.empty(image.shape[:2], np.uint16)}
    fill = block_filler(maps, SCHEME.damage_indices, SCHEME.num_classes)
    predict_index(model, image, SCHEME.num_classes, tile=64, overlap=0.25, tta=tta, on_block=fill, flip_entropy=tta)
    return maps["uncertainty"]


def test_flips_of_a_flip_equivariant_model_do_not_disagree(shared_run, tmp_path):
    rng = np.random.default_rng(3)
    image = rng.integers(40, 220, (96, 160, 3), dtype=np.uint8)  # several overlapping tiles: blended
    write_image(tmp_path / "x.png", image)
    model = load_bundle(shared_run).model.eval()
    raw, equivariant = uncertainty_map(model, image, True), uncertainty_map(Symmetrised(model), image, True)
    assert raw.max() > 50  # the model itself: its flips disagree (in 1/65535)
    assert equivariant.max() <= 2  # equivariant: the four flips see the same thing (float rounding only)
    assert uncertainty_map(Symmetrised(model), image, False).min() > 1000  # while it is still unsure (entropy)
