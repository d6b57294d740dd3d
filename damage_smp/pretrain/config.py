"""PretrainConfig: every setting of a pre-training run, validated once, saved in DIR/config.json under "pretrain"."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..config import CONFIG_VERSION, DEFAULT_ENCODER, check_arch, check_multiple_of_32

RESUMABLE = ("epochs", "device", "num_workers")  # what may change on --resume


@dataclass(frozen=True)
class PretrainConfig:
    inputs: tuple[str, ...] = ()
    """Folders, glob patterns or manifest CSVs of images (absolute paths; masks are not needed)."""
    out: str = "pretrain"
    """The pre-train run directory."""
    arch: str = "unet"
    """smp architecture (the same one `train --init-from` will use)."""
    encoder: str = DEFAULT_ENCODER
    """smp encoder name or 'tu-<timm name>'."""
    init: str = "imagenet"
    """Weights the encoder starts from: imagenet or none."""
    epochs: int = 20
    """Epochs in total (with --resume: train up to this many)."""
    samples_per_epoch: int = 256
    """Random crops per epoch, independent of the number of images."""
    crop_size: int = 256
    """Square crops in pixels, taken at native resolution."""
    batch_size: int = 8
    """Crops per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate (AdamW), linear warmup then poly decay."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup_iters: int = 20
    """Linear warmup length in optimizer steps."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0: off)."""
    seed: int = 0
    """Seed for weights, crops and corruptions."""
    probe_crops: int = 16
    """Fixed corrupted crops scored after every epoch (val_loss in history.csv), the same in every epoch."""
    max_pixels: int = 200_000_000
    """Refuse images above this many pixels (decompression-bomb guard)."""
    cache_mb: int = 2048
    """Memory budget for decoded images kept between epochs (per process)."""
    num_workers: int = -1
    """Data loader worker processes (-1: sized to the machine)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    amp: str = "auto"
    """Mixed precision: auto (bf16/fp16 on CUDA, off on CPU), off, bf16, fp16."""
    channels_last: bool = True
    """channels_last memory format."""
    overwrite: bool = False
    """Replace an existing pre-train run in --out (never anything else)."""

    def __post_init__(self) -> None:
        check_arch(self.arch)
        for name in ("epochs", "batch_size", "samples_per_epoch", "probe_crops"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(self, name)}")
        check_multiple_of_32("crop-size", self.crop_size)
        if self.init not in ("imagenet", "none"):
            raise ValueError(f"--init: must be imagenet or none, got {self.init!r}")
        if self.lr <= 0:
            raise ValueError(f"--lr: must be positive, got {self.lr}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"--amp: must be auto, off, bf16 or fp16, got {self.amp!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise ValueError(f"--device: must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    # the few TrainConfig attributes the shared pieces read (memory check, weights, run state)
    @property
    def encoder_weights(self) -> str:
        return self.init

    @property
    def weights_kind(self) -> str:
        return self.init

    @property
    def init_from(self) -> None:
        return None

    def to_dict(self) -> dict:
        return {**asdict(self), "inputs": list(self.inputs)}

    @classmethod
    def from_dict(cls, data: dict, source: str) -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown pre-train setting(s) {unknown}; the run was made by another version")
        data = {**data, "inputs": tuple(data.get("inputs", ()))}
        return cls(**data)


def config_record(cfg: PretrainConfig, model_info: dict) -> dict:
    """DIR/config.json: no "train" entry, so nothing takes it for a training run."""
    return {"config_version": CONFIG_VERSION, "pretrain": cfg.to_dict(), "model": model_info}


def read_saved(out: Path) -> PretrainConfig:
    """The PretrainConfig in DIR/config.json (for --resume)."""
    from ..runs import read_json

    path = Path(out) / "config.json"
    data = read_json(path)
    if "pretrain" not in data:
        raise ValueError(
            f"--out {out} --resume: {path} is not a pre-train run's; give the --out of `damage-smp pretrain`"
        )
    return PretrainConfig.from_dict(data["pretrain"], source=str(path))


def resumed(out: Path, given: dict) -> PretrainConfig:
    """The saved settings with the given ones, which must be resumable or equal to the saved ones."""
    cfg = read_saved(out)
    saved = cfg.to_dict()
    changed = [k for k, v in given.items() if k not in RESUMABLE and _norm(v) != _norm(saved.get(k))]
    if changed:
        flags = ", ".join(("INPUTS" if k == "inputs" else "--" + k.replace("_", "-")) for k in changed)
        raise ValueError(
            f"--resume continues {out} with its saved settings; drop {flags} (only --epochs, --device and "
            "--num-workers may change), or start a new run with another --out"
        )
    from dataclasses import replace

    return replace(cfg, out=str(out), **{k: v for k, v in given.items() if k in RESUMABLE})  # the folder may have moved


def _norm(value):
    return list(value) if isinstance(value, list | tuple) else value
