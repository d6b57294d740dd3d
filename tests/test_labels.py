"""Label schemes: round trips colour <-> index <-> class, JSON schemes, unknown values."""

import json

import numpy as np
import pytest

from damage_smp.labels import BUILTIN_SCHEMES, IGNORE_INDEX, LabelScheme, UnknownMaskValues, load_scheme, resolve_scheme


@pytest.mark.parametrize("name", list(BUILTIN_SCHEMES))
def test_round_trips_for_every_builtin(name):
    scheme = load_scheme(name)
    rng = np.random.default_rng(1)
    index = rng.integers(0, scheme.num_classes, size=(37, 53)).astype(np.uint8)
    # class -> colour -> class
    assert np.array_equal(scheme.decode(scheme.colorize(index)), index)
    # class -> mask value -> class
    assert np.array_equal(scheme.decode(scheme.to_values(index)), index)
    # the same through JSON
    again = LabelScheme.from_dict(json.loads(json.dumps(scheme.to_dict())))
    assert np.array_equal(again.decode(scheme.colorize(index)), index)
    assert again.names == scheme.names


def test_artefact_scheme_matches_the_benchmark():
    s = load_scheme("artefact")
    assert s.num_classes == 17
    assert s.names[0] == "Clean" and s.names[5] == "Hair" and s.names[15] == "Lightleak"
    assert tuple(s.colors[1]) == (0x1C, 0xE6, 0xFF)
    values = np.array([[0, 5, 255]], np.uint8)
    idx = s.decode(values)
    assert idx.tolist() == [[0, 5, 16]]
    assert s.names[16] == "Background" and tuple(s.colors[16]) == (0x5A, 0x00, 0x07)
    assert s.to_values(idx).tolist() == [[0, 5, 255]]
    assert s.damage_indices == list(range(1, 16))
    assert s.clean_index == 0 and s.background_index == 16


def test_artefact_binary_reads_artefact_colour_and_index_masks():
    full, binary = load_scheme("artefact"), load_scheme("artefact-binary")
    index = np.array([[0, 3, 9, 16]], np.uint8)
    assert binary.decode(full.colorize(index)).tolist() == [[0, 1, 1, 2]]
    assert binary.decode(full.to_values(index)).tolist() == [[0, 1, 1, 2]]


def test_binary_accepts_255_and_1():
    s = load_scheme("binary")
    assert s.decode(np.array([[0, 1, 255]], np.uint8)).tolist() == [[0, 1, 1]]


def test_unknown_values_and_colours_are_reported():
    s = load_scheme("artefact")
    with pytest.raises(UnknownMaskValues, match="40"):
        s.decode(np.array([[0, 40, 40]], np.uint8))
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (1, 2, 3)
    with pytest.raises(UnknownMaskValues, match="#010203") as e:
        s.decode(rgb)
    assert e.value.pixels == 1


def test_ignore_background_turns_255_into_ignore():
    s = resolve_scheme("artefact", ignore_background=True)
    assert s.num_classes == 16 and "Background" not in s.names
    assert s.decode(np.array([[255, 2]], np.uint8)).tolist() == [[IGNORE_INDEX, 2]]
    colours = load_scheme("artefact").colorize(np.array([[16, 2]], np.uint8))
    assert s.decode(colours).tolist() == [[IGNORE_INDEX, 2]]


def test_json_scheme_file(tmp_path):
    path = tmp_path / "aerial.json"
    path.write_text(json.dumps({
        "classes": [{"name": "ok", "color": "#000000", "values": [0]}, {"name": "crack", "color": [255, 0, 0]}],
        "ignore_value": 9, "clean": "ok",
    }))  # fmt: skip
    s = load_scheme(path)
    assert s.name == "aerial" and s.names == ["ok", "crack"] and s.damage_indices == [1]
    assert s.decode(np.array([[0, 1, 9]], np.uint8)).tolist() == [[0, 1, IGNORE_INDEX]]


def test_json_scheme_with_duplicate_colours_is_refused(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text(json.dumps({"classes": [{"name": "a", "color": "#FF0000"}, {"name": "b", "color": "#ff0000"}]}))
    with pytest.raises(ValueError, match="#FF0000.*more than one class"):
        load_scheme(path)


def test_unknown_scheme_name_lists_builtins():
    with pytest.raises(ValueError, match="artefact-binary"):
        load_scheme("nonsense")
