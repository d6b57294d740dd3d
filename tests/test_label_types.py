"""A label JSON field of the wrong type is refused in one line naming the file, the class/field, the value and the
expected type: directly (load_scheme) and through the CLI (exit 1, no traceback). Nothing is coerced silently."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.images import write_image
from damage_smp.labels import load_scheme

GOOD = {
    "name": "photo-damage",
    "classes": [
        {"name": "Clean", "color": "#000000", "values": [0], "damage": False},
        {"name": "Crack", "color": [255, 0, 0], "values": [1, 2], "aliases": ["#FE0000"]},
    ],
    "ignore_values": [254],
    "ignore_colors": ["#808080"],
    "clean": "Clean",
}
LIST_OF_INTS = "must be a list of integers 0-65535"
A_COLOUR = "must be a colour '#RRGGBB' or [r, g, b] (0-255 each)"


def crack(**fields):
    """The scheme with class Crack's fields set (None for a value: JSON null; DROP: key removed)."""
    return {"classes": {1: fields}}


def top(**fields):
    return {"top": fields}


DROP = object()

# id -> (change to GOOD, words the one error line must hold)
CASES = {
    "values_null": (crack(values=None), ['class "Crack"', "values is null", LIST_OF_INTS]),
    "values_text": (crack(values="abc"), ['class "Crack": values is "abc" but', LIST_OF_INTS]),
    "values_float": (crack(values=0.7), ["values is 0.7", LIST_OF_INTS]),
    "values_float_in_list": (crack(values=[1, 0.7]), ["values is [1, 0.7]", LIST_OF_INTS, "(0.7 is not)"]),
    "values_integral_float": (crack(values=[1.0]), ["values is [1.0]", LIST_OF_INTS]),
    "values_bool": (crack(values=[True]), ["values is [true]", LIST_OF_INTS]),
    "values_out_of_range": (crack(values=[70000]), ["values is [70000]", LIST_OF_INTS]),
    "values_object": (crack(values={"a": 1}), ['values is {"a": 1}', LIST_OF_INTS]),
    "value_text": (crack(values=DROP, value="1"), ['value is "1"', "must be an integer 0-65535"]),
    "aliases_text": (crack(aliases="#FE0000"), ['aliases is "#FE0000"', "must be a list of colours"]),
    "alias_bad": (crack(aliases=["red"]), ['aliases[0] is "red"', A_COLOUR]),
    "color_name": (crack(color="red"), ['color is "red"', A_COLOUR]),
    "color_range": (crack(color=[300, 0, 0]), ["color is [300, 0, 0]", A_COLOUR]),
    "color_null": (crack(color=None), ["color is null", A_COLOUR]),
    "color_missing": (crack(color=DROP), ["color is missing", A_COLOUR]),
    "damage_text": (crack(damage="no"), ['damage is "no"', "must be true or false"]),
    "damage_int": (crack(damage=0), ["damage is 0", "must be true or false"]),
    "unknown_class_key": (crack(colour="#FF0000"), ['class "Crack"', "unknown key(s) ['colour']", "valid keys"]),
    "class_name_number": (crack(name=5), ["class #1: name is 5", "must be a non-empty text"]),
    "class_name_missing": (crack(name=DROP), ["class #1: name is missing", "must be a non-empty text"]),
    "class_not_object": (top(classes=[GOOD["classes"][0], "Crack"]), ['class #1 is "Crack"', "must be an object"]),
    "classes_object": (top(classes={"Crack": 1}), ['classes is {"Crack": 1}', "must be a list of classes"]),
    "classes_missing": (top(classes=DROP), ["classes is missing", "must be a list of classes"]),
    "ignore_values_text": (top(ignore_values="254"), ['ignore_values is "254"', LIST_OF_INTS]),
    "ignore_values_null": (top(ignore_values=None), ["ignore_values is null", LIST_OF_INTS]),
    "ignore_value_float": (top(ignore_values=DROP, ignore_value=2.5), ["ignore_value is 2.5", "an integer"]),
    "ignore_colors_text": (top(ignore_colors="#808080"), ['ignore_colors is "#808080"', "must be a list of colours"]),
    "clean_number": (top(clean=0), ["clean is 0", "must be a class name or null"]),
    "background_list": (top(background=["Clean"]), ['background is ["Clean"]', "must be a class name or null"]),
    "scheme_name_number": (top(name=7), ["name is 7", "must be a non-empty text"]),
}


def bad_scheme(change: dict) -> dict:
    scheme = copy.deepcopy(GOOD)
    targets = [(scheme["classes"][i], fields) for i, fields in change.get("classes", {}).items()]
    for target, fields in [*targets, (scheme, change.get("top", {}))]:
        for key, value in fields.items():
            if value is DROP:
                target.pop(key, None)
            else:
                target[key] = value
    return scheme


def write_scheme(path, change):
    path.write_text(json.dumps(bad_scheme(change)), encoding="utf-8")
    return path


def check_message(message: str, path, words: list[str]) -> None:
    assert "\n" not in message and message.startswith(f"{path}: "), message
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistyped_field_is_refused_naming_file_field_value_and_type(tmp_path, case):
    change, words = CASES[case]
    path = write_scheme(tmp_path / "labels.json", change)
    with pytest.raises(ValueError) as e:
        load_scheme(path)
    check_message(str(e.value), path, words)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_image(root / "img.png", np.zeros((8, 8, 3), np.uint8))
    write_image(root / "mask.png", np.zeros((8, 8), np.uint8))
    (root / "manifest.csv").write_text("image,mask,split\nimg.png,mask.png,train\n", encoding="utf-8")
    return root / "manifest.csv"


@pytest.mark.parametrize("case", list(CASES))
def test_manifest_check_with_a_mistyped_label_json_prints_one_line(tmp_path, manifest, case):
    change, words = CASES[case]
    path = write_scheme(tmp_path / "labels.json", change)
    result = CliRunner().invoke(app, ["manifest", "check", str(manifest), "--labels", str(path)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(result.output.strip().splitlines()) == 1, result.output
    check_message(errors[0].removeprefix("error: "), path, words)


def test_every_valid_spelling_still_loads(tmp_path):
    """Short forms stay valid: one value alone, the singular "value", "ignore_value", null for clean."""
    scheme = {
        "classes": [
            {"name": "ok", "color": "000000", "values": 0},
            {"name": "crack", "color": [255, 0, 0], "value": 3, "damage": True},
            {"name": "hole", "color": "#00FF00"},
        ],
        "ignore_value": None,
        "clean": None,
    }
    (tmp_path / "s.json").write_text(json.dumps(scheme))
    s = load_scheme(tmp_path / "s.json")
    assert [c.values for c in s.classes] == [(0,), (3,), (2,)] and s.ignore_values == () and s.clean is None
    scheme["ignore_value"] = 9
    (tmp_path / "s.json").write_text(json.dumps(scheme))
    assert load_scheme(tmp_path / "s.json").ignore_values == (9,)
    assert load_scheme(write_scheme(tmp_path / "labels.json", {})).names == ["Clean", "Crack"]
