"""train's flags are generated from TrainConfig's fields: one source for name, type, default and help."""

from __future__ import annotations

import dataclasses

import pytest
import typer

from damage_smp.cli import app
from damage_smp.config import TrainConfig, field_docs, resumable_fields
from damage_smp.runs import resumed_config

EXTRA = {"config", "resume"}  # options of train that are not settings of the run


def train_params():
    command = typer.main.get_command(app).commands["train"]
    return {p.name: p for p in command.params}


def test_every_field_has_one_flag_and_every_flag_a_field():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    params = train_params()
    assert names - set(params) == set(), "fields without a flag"
    assert set(params) - names - EXTRA == set(), "flags without a field"


def test_help_is_the_field_docstring():
    docs = field_docs()
    for name, param in train_params().items():
        if name not in EXTRA:
            assert param.help == docs[name], name


def test_every_field_is_documented():
    assert set(field_docs()) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_flag_names_come_from_fields():
    params = train_params()
    assert params["encoder_lr_mult"].opts == ["--encoder-lr-mult"]
    assert params["freeze_encoder"].opts == ["--freeze-encoder"]
    assert params["freeze_encoder"].secondary_opts == ["--finetune-encoder"]


def test_resume_help_lists_the_resumable_fields():
    text = train_params()["resume"].help
    listed = {f.strip(" .)").removeprefix("--").replace("-", "_") for f in text.split(":")[-1].split(",")}
    assert listed == resumable_fields()


def test_resume_refuses_a_fixed_setting(tmp_path):
    with pytest.raises(ValueError, match="drop --lr, --crop-size"):
        resumed_config(tmp_path, {"lr": 0.1, "crop_size": 64, "epochs": 3})


@pytest.mark.parametrize(
    ("data", "field_name"),
    [({"crop_size": "sixty-four"}, "crop_size"), ({"epochs": "two"}, "epochs"), ({"lr": None}, "lr"),
     ({"freeze_encoder": "yes"}, "freeze_encoder"), ({"epochs": 2.5}, "epochs")],
)  # fmt: skip
def test_wrong_types_name_file_field_and_type(data, field_name):
    with pytest.raises(ValueError, match=rf"^cfg\.json: {field_name} is .* but must be "):
        TrainConfig.from_dict(data, source="cfg.json")


def test_ints_are_fine_floats():
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0
