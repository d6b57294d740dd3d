"""--min-area: components below the size go (exactly as labelling the whole map), the rest stay."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from damage_smp.cleanup import fill_class, parse_min_area, remove_small
from damage_smp.cli import app
from damage_smp.evaluate import evaluate
from damage_smp.images import read_image, read_mask
from damage_smp.labels import load_scheme
from damage_smp.models import load_bundle
from damage_smp.predict import predict, predict_image

SCHEME = load_scheme("artefact")


@pytest.mark.parametrize("strip", [1, 3, 7, 1024])
def test_strips_remove_only_components_below_the_size_exactly_as_the_whole_map(strip):
    rng = np.random.default_rng(strip)
    index = (rng.random((61, 47)) < 0.45).astype(np.uint8) * rng.integers(1, 3, (61, 47)).astype(np.uint8)
    sizes = {1: 6, 2: 3}
    got = index.copy()
    removed = remove_small(got, sizes, fill=0, strip=strip)
    for cls, size in sizes.items():
        n, labels, stats, _ = cv2.connectedComponentsWithStats((index == cls).view(np.uint8), connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA]
        small = [k for k in range(1, n) if area[k] < size]
        assert small and len(small) < n - 1  # both kinds are there
        for k in range(1, n):
            assert (got[labels == k] == (0 if area[k] < size else cls)).all()
    assert removed == int(np.sum(got != index)) and np.array_equal(got[index == 0], index[index == 0])


def test_min_area_specs():
    binary = load_scheme("binary")
    assert parse_min_area("20", binary) == {1: 20} and parse_min_area(None, binary) == {}
    assert parse_min_area('{"Cracks": 50, "Dust": 1}', SCHEME) == {9: 50}  # 1 px removes nothing
    assert fill_class(SCHEME) == 0 and fill_class(binary) == 0
    for bad, text in [('{"Nope": 5}', "'Nope' is not a damage class"), ('{"Clean": 5}', "'Clean' is not a damage"),
                      ("-3", "must be a pixel count >= 0"), ("abc", "give a pixel count (50) or JSON")]:  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(text)):
            parse_min_area(bad, SCHEME)


def test_predict_and_evaluate_apply_min_area(shared_run, tmp_path):
    image_path = shared_run.parent / "images" / "img00.png"
    out = tmp_path / "p"
    # lanes=1: on this thread, as the reference below (a lane's one-thread forward rounds a little differently)
    predict(shared_run, [image_path], out, save="index", decision="argmax", min_area=8, tile=64, overlap=0.25,
            batch_size=8, device="cpu", workers=1, lanes=1)  # fmt: skip
    raw = predict_image(load_bundle(shared_run), read_image(image_path), tile=64, overlap=0.25, batch_size=8)
    expected = raw.copy()
    remove_small(expected, {c: 8 for c in SCHEME.damage_indices}, fill=0)
    assert np.array_equal(SCHEME.decode(read_mask(out / "img00_index.png")), expected)
    assert json.loads((out / "predict.json").read_text())["min_area"] == {
        SCHEME.names[c]: 8 for c in SCHEME.damage_indices
    }
    none = evaluate(shared_run, split="val", device="cpu", min_area=10**9)  # every component is below that
    assert none["summary"]["damage_recall"] == 0 and none["min_area"]["Cracks"] == 10**9
    assert none["tolerant"]["tolerance_px"] == 2 and all(r["predicted"] == 0 for r in none["tolerant"]["per_class"])


def test_unknown_class_in_min_area_is_one_line(shared_run, tmp_path):
    image = str(shared_run.parent / "images" / "img00.png")
    args = ["predict", str(shared_run), image, "--out", str(tmp_path / "o"), "--device", "cpu",
            "--min-area", '{"Crack": 20}']  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "'Crack' is not a damage class" in res.output
    assert not (tmp_path / "o").exists()
