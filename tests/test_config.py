"""TrainConfig: validation names the flag and the fix; config files; run names."""

import json

import pytest

from damage_smp.config import TrainConfig, check_run_name, read_config_file


@pytest.mark.parametrize(
    "kwargs,flag",
    [
        ({"arch": "transformer9000"}, "--arch"),
        ({"crop_size": 100}, "--crop-size"),
        ({"train_fraction": 0}, "--train-fraction"),
        ({"overlap": 1.0}, "--overlap"),
        ({"unfreeze_at": 3}, "--unfreeze-at"),
        ({"freeze_encoder": True, "encoder_weights": "none"}, "--freeze-encoder"),
        ({"amp": "fp8"}, "--amp"),
        ({"device": "tpu"}, "--device"),
        ({"name": "../escape"}, "--name"),
    ],
)
def test_bad_values_name_their_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        TrainConfig(**kwargs)


def test_unknown_arch_lists_valid_ones():
    with pytest.raises(ValueError, match="unet, unetplusplus, fpn"):
        TrainConfig(arch="nope")


def test_json_round_trip_and_unknown_keys(tmp_path):
    cfg = TrainConfig(epochs=3, freeze_encoder=True, unfreeze_at=2, name="study-a")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown key.*'epoks'"):
        TrainConfig.from_dict({"epoks": 3})


def test_config_files_json_and_toml(tmp_path):
    (tmp_path / "c.toml").write_text('epochs = 5\ncrop-size = 128\nencoder = "resnet18"\n')
    (tmp_path / "c.json").write_text('{"epochs": 7, "lr": 0.01}')
    assert read_config_file(tmp_path / "c.toml") == {"epochs": 5, "crop_size": 128, "encoder": "resnet18"}
    assert read_config_file(tmp_path / "c.json") == {"epochs": 7, "lr": 0.01}
    (tmp_path / "bad.json").write_text("{epochs: 7")
    with pytest.raises(ValueError, match="bad.json"):
        read_config_file(tmp_path / "bad.json")


def test_auto_name_says_what_the_run_is():
    cfg = TrainConfig(encoder_weights="none", seed=3, train_fraction=0.25)
    assert cfg.auto_name("20260101-000000") == "unet-tu-efficientnet_lite0-none-finetune-frac0.25-s3-20260101-000000"
    frozen = TrainConfig(freeze_encoder=True, unfreeze_at=4)
    assert "-imagenet-frozen4-" in frozen.auto_name("d")


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "", "-x", "a b"])
def test_run_names_cannot_escape(name):
    with pytest.raises(ValueError, match="--name"):
        check_run_name(name)
