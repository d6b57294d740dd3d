"""Lossy colour masks: --colour-tolerance snaps JPEG colours to the palette (check, train, evaluate, the cache)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import make_pair
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.config import TrainConfig
from damage_smp.data import SegmentationDataset
from damage_smp.decode_cache import DecodeCache
from damage_smp.images import read_mask, write_image
from damage_smp.labels import IGNORE_INDEX, LabelScheme, UnknownMaskValues, load_scheme
from damage_smp.manifest import load_manifest

ARTEFACT = load_scheme("artefact")
runner = CliRunner()


def _jpeg(path, index: np.ndarray, quality: int = 90) -> None:
    """An artefact colour mask saved as JPEG by OpenCV, as an annotation tool might."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(ARTEFACT.colorize(index), cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])


def _interior(index: np.ndarray, margin: int = 8) -> np.ndarray:
    """Pixels whose (2 margin + 1)^2 neighbourhood holds one class: far from every edge JPEG blurs."""
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return np.any([cv2.erode((index == c).astype(np.uint8), kernel) > 0 for c in np.unique(index)], axis=0)


def test_jpeg_round_trip_snaps_back_to_the_index_mask(tmp_path):
    index = np.zeros((96, 128), np.uint8)
    index[10:60, 10:70], index[40:90, 60:120], index[:, :12] = 3, 10, 16  # Dust, Staining, Background
    index[70:80, 5:50] = 5  # Hair
    _jpeg(tmp_path / "m.jpg", index)
    raw = read_mask(tmp_path / "m.jpg")
    with pytest.raises(UnknownMaskValues, match="not in the label scheme"):
        ARTEFACT.decode(raw)  # exact colours only: JPEG invented hundreds
    decoded, stats = ARTEFACT.with_colour_tolerance(16).decode_counted(raw)
    inside = _interior(index)
    assert inside.mean() > 0.4 and (decoded[inside] == index[inside]).all()
    labelled = decoded != IGNORE_INDEX
    assert (decoded == index).mean() > 0.9  # the rest: edge pixels near no class colour (no label)
    assert (decoded[labelled] != index[labelled]).sum() <= 0.005 * index.size
    assert stats.snapped > 0.3 * index.size and stats.unresolved == (~labelled).sum() and stats.ambiguous == 0


def test_ambiguous_and_unknown_colours_get_no_label_and_a_wrong_scheme_still_fails():
    scheme = LabelScheme.from_dict(
        {
            "classes": [{"name": "A", "color": "#000000", "aliases": ["#000008"]}, {"name": "B", "color": "#140000"}],
            "colour_tolerance": 10,
        }  # fmt: skip
    )
    colours = [[0, 0, 0], [3, 0, 4], [0, 0, 12], [10, 0, 0], [20, 0, 0], [200, 200, 200], [0, 0, 0], [0, 0, 0]]
    rgb = np.array(colours, np.uint8).reshape(2, 4, 3)
    decoded, stats = scheme.decode_counted(rgb)
    # exact; near A only; near A's two colours (one meaning); between A and B; exact B; near nothing
    assert decoded.ravel().tolist() == [0, 0, 0, IGNORE_INDEX, 1, IGNORE_INDEX, 0, 0]
    assert (stats.snapped, stats.ambiguous, stats.unknown) == (2, 1, 1)
    with pytest.raises(UnknownMaskValues, match="even with --colour-tolerance 10"):
        scheme.decode(np.full((4, 4, 3), 200, np.uint8))  # all far from the palette: a wrong scheme, not JPEG
    assert LabelScheme.from_dict(scheme.to_dict()).colour_tolerance == 10
    with pytest.raises(ValueError, match="colour_tolerance is 300 but must be an integer 0-255"):
        LabelScheme.from_dict({**scheme.to_dict(), "colour_tolerance": 300})
    with pytest.raises(ValueError, match="--colour-tolerance: must be 0 to 255"):
        TrainConfig(colour_tolerance=-1)


def _jpeg_manifest(root) -> str:
    rng = np.random.default_rng(0)
    lines = ["image,mask,split"]
    for i, split in enumerate(["train"] * 4 + ["val", "test"]):
        image, index = make_pair(rng)
        write_image(root / "images" / f"p{i}.png", image)
        _jpeg(root / "masks" / f"p{i}.jpg", index)
        lines.append(f"images/p{i}.png,masks/p{i}.jpg,{split}")
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    return str(root / "m.csv")


def test_check_reports_snapping_and_the_cache_keys_the_tolerance(tmp_path):
    csv = _jpeg_manifest(tmp_path)
    result = runner.invoke(app, ["manifest", "check", csv])
    assert result.exit_code == 1 and "not in label scheme 'artefact'" in result.output
    result = runner.invoke(app, ["manifest", "check", csv, "--colour-tolerance", "12"])
    assert result.exit_code == 0, result.output
    assert "colour tolerance 12:" in result.output and "snapped to a class colour in 6 mask(s)" in result.output
    assert "p0.jpg:" in result.output and "stay unresolved with --colour-tolerance 12" in result.output

    rows = load_manifest(csv)
    cache = DecodeCache(tmp_path / "cache", 1 << 30, min_pixels=0)
    tolerant = SegmentationDataset(rows, ARTEFACT.with_colour_tolerance(12), crop_size=None, decode_cache=cache)
    assert (tolerant.decode(0)[1] != IGNORE_INDEX).mean() > 0.8
    exact = SegmentationDataset(rows, ARTEFACT, crop_size=None, decode_cache=cache)
    with pytest.raises(ValueError, match="not in the label scheme"):
        exact.decode(0)  # not served the tolerant decode from the cache


def test_train_saves_the_tolerance_and_evaluate_reuses_it(tmp_path):
    csv = _jpeg_manifest(tmp_path)
    args = ["train", "--manifest", csv, "--encoder", "tu-efficientnet_lite0", "--encoder-weights", "none",
            "--epochs", "1", "--samples-per-epoch", "4", "--batch-size", "4", "--crop-size", "64", "--tile", "64",
            "--num-workers", "0", "--samples", "0", "--device", "cpu", "--out-dir", str(tmp_path),
            "--name", "run"]  # fmt: skip
    result = runner.invoke(app, [*args, "--colour-tolerance", "12"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["colour_tolerance"] == 12 and saved["label_scheme"]["colour_tolerance"] == 12
    result = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["colour_tolerance"] == 12 and metrics["test"]["n_images"] == 1
    result = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--device", "cpu", "--colour-tolerance", "0"])
    assert result.exit_code == 1 and "not in the label scheme" in result.output
    assert pd.read_csv(csv).shape == (6, 3)  # the inputs are untouched
