"""Display colours apart from mask colours; overlays visible on light and dark scans; legend swatches bordered."""

from __future__ import annotations

import json

import numpy as np
import pytest

from damage_smp import plots
from damage_smp.labels import LabelScheme, load_scheme
from damage_smp.plots import legend_image, overlay, tint_in_place

BINARY = load_scheme("binary")


def test_binary_damage_is_white_in_mask_files_but_shown_in_a_saturated_colour():
    index = np.array([[0, 1]], np.uint8)
    assert BINARY.colorize(index)[0, 1].tolist() == [255, 255, 255]  # mask files are unchanged
    shown = BINARY.display_colors[1]
    assert shown.max() == 255 and shown.min() == 0  # saturated
    again = LabelScheme.from_dict(json.loads(json.dumps(BINARY.to_dict())))
    assert again.display_colors.tolist() == BINARY.display_colors.tolist() and again.colors.tolist() == [
        [0, 0, 0], [255, 255, 255]]  # fmt: skip
    custom = LabelScheme.from_dict({"name": "x", "classes": [
        {"name": "paper", "color": "#000000", "values": [0], "damage": False},
        {"name": "tear", "color": "#FFFFFF", "values": [1], "display": "#00FF00"}]})  # fmt: skip
    assert custom.display_colors[1].tolist() == [0, 255, 0]
    with pytest.raises(ValueError, match="display"):
        LabelScheme.from_dict({"name": "x", "classes": [{"name": "t", "color": "#FFFFFF", "display": "green"}]})


@pytest.mark.parametrize("grey, outline", [(235, 0), (25, 255)])
def test_damage_stays_visible_on_light_and_dark_scans(grey, outline):
    image = np.full((60, 60, 3), grey, np.uint8)
    index = np.zeros((60, 60), np.uint8)
    index[20:40, 10:50] = 1
    out = overlay(image, index, BINARY)
    assert (out[20, 30] == outline).all() and (out[39, 30] == outline).all()  # contrasting inner edge
    inside = out[25:35, 15:45].reshape(-1, 3).astype(int)
    assert np.abs(inside - grey).max(axis=1).min() > 60  # the fill is far from the scan's grey
    assert np.array_equal(out[index == 0], image[index == 0])  # clean pixels untouched


def test_strips_give_the_same_overlay_as_one_block(monkeypatch):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)
    index = (rng.random((50, 40)) < 0.3).astype(np.uint8)
    whole = tint_in_place(image.copy(), index, BINARY)
    monkeypatch.setattr(plots, "STRIP_ROWS", 7)
    assert np.array_equal(tint_in_place(image.copy(), index, BINARY), whole)


def test_legend_swatches_have_a_border_even_when_white():
    scheme = load_scheme("artefact")
    legend = legend_image(scheme, [0])  # Clean: black; and a white background around it
    white = LabelScheme.from_dict({"name": "w", "classes": [{"name": "w", "color": "#FFFFFF", "values": [1]}]})
    swatch = legend_image(white, [0])[7:17, 6:27]  # the swatch's rectangle, border included
    assert swatch[0].max() < 100 and swatch[5, 10].min() == 255 and legend.shape[1] == 260
