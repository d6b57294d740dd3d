"""Export a trained run so it leaves the tool: ONNX, TorchScript, or an smp ``save_pretrained`` folder.

Every export ends with a parity check: the exported model and the run's PyTorch model on real images (a few of
the run's val split, or ``--check-images``) cropped to two tile sizes. Criterion: the largest absolute difference
of softmax probabilities must stay below ``PARITY_TOL`` (1e-4). Argmax agreement needs no separate threshold: if
no probability moves by more than d, a pixel's class can only change where the top two probabilities of the
PyTorch model were within 2·d of each other (a numerical tie); the share of identical argmax pixels is reported.

Files damage-smp writes are marked by their sidecar JSON (``PATH.json`` beside an .onnx/.pt file, ``damage_smp.json``
inside an smp folder, key ``damage_smp_export``): ``--overwrite`` replaces only marked exports, never other files.
An export that fails parity is not put in place (an earlier good export stays).
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .images import read_image
from .modelcard import model_card
from .models import DamageModel, ModelBundle, load_bundle
from .runs import RunPaths, sha256_file, write_json, write_text
from .thresholds import BINS, read_thresholds
from .tiling import as_chw_uint8, pad_to

FORMATS = ("onnx", "torchscript", "smp")
ONNX_OPSET = 17  # every ONNX Runtime since 1.11 runs it; the TorchScript-based exporter supports it fully
PARITY_TOL = 1e-4
MAX_CHECK_IMAGES = 3
MARK = "damage_smp_export"
SMP_SIDECAR = "damage_smp.json"
ONNX_EXTRA = "pip install 'damage-smp[onnx]'"

Forward = Callable[[torch.Tensor], np.ndarray]  # (N, 3, H, W) float32 0–255 -> (N, C, H, W) logits


class MissingExtra(ValueError):
    """An optional dependency is not installed; the message names the extra that brings it."""


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    parity: dict


def require_onnx():
    """(onnx, onnxruntime) modules, or one line naming the extra to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise MissingExtra(f"ONNX needs onnx and onnxruntime ({e.name} is missing): {ONNX_EXTRA}") from None
    return onnx, onnxruntime


def sidecar_path(out: Path, fmt: str) -> Path:
    return out / SMP_SIDECAR if fmt == "smp" else out.with_name(out.name + ".json")


# ============================================================================================ export
def export(
    run_dir: str | Path,
    fmt: str,
    out: str | Path,
    *,
    checkpoint: str = "best",
    check_images: list[str | Path] | None = None,
    overwrite: bool = False,
    console=None,
) -> ExportResult:
    """Write the run's model as ``fmt`` to ``out`` with its sidecar; raises ParityError when the copy differs."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: unknown; use one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    out = Path(out)
    check_out(out, fmt, overwrite)
    bundle = load_bundle(run_dir, checkpoint, "cpu")
    images = check_image_set(bundle, Path(run_dir), check_images)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial")
    _remove_staging(staging)
    staging_sidecar = sidecar_path(staging, fmt)
    try:
        WRITERS[fmt](bundle, staging)
        parity = check_parity(bundle.model, LOADERS[fmt](staging, bundle), images, check_sizes(bundle))
        meta = sidecar(bundle, Path(run_dir), fmt, out, parity)
        if fmt != "smp":  # predict MODEL.onnx checks that the file is still the one described
            meta["file_sha256"] = sha256_file(staging)
        write_json(staging_sidecar, meta)
        if console is not None:
            print_parity(parity, console)
        if not parity["passed"]:
            raise ParityError(
                f"parity check failed: max |Δp| {parity['max_abs_diff_prob']:.2e} >= {PARITY_TOL:g}; "
                f"{out} was not written"
            )
        if fmt == "smp":  # replaces the generic card smp's save_pretrained wrote
            write_text(staging / "README.md", model_card(bundle, Path(run_dir), parity))
        _put_in_place(staging, out, fmt)
    finally:
        _remove_staging(staging)
        if fmt != "smp":
            staging_sidecar.unlink(missing_ok=True)
    return ExportResult(out, sidecar_path(out, fmt), parity)


class ParityError(ValueError):
    """The exported model's probabilities differ from PyTorch's beyond PARITY_TOL."""


def check_out(out: Path, fmt: str, overwrite: bool) -> None:
    """``out`` must be free, or an export of ours replaced with --overwrite; anything else is never touched."""
    side = sidecar_path(out, fmt)
    if fmt == "smp":
        taken = out.exists() and not (out.is_dir() and not any(out.iterdir()))
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"--out {out}: exists and is a file; --format smp writes a folder")
    else:
        if out.is_dir():
            raise IsADirectoryError(f"--out {out}: is a folder; --format {fmt} writes one file (e.g. model.{fmt})")
        taken = out.exists() or side.exists()
    if not taken:
        return
    if not _is_ours(side, fmt):
        raise FileExistsError(
            f"--out {out}: exists and was not written by damage-smp export (no {side.name} marking it); "
            "it is never replaced, not even with --overwrite: choose another --out"
        )
    if not overwrite:
        raise FileExistsError(f"--out {out}: already exists; replace it with --overwrite or choose another --out")


def _is_ours(side: Path, fmt: str) -> bool:
    try:
        mark = json.loads(side.read_text(encoding="utf-8")).get(MARK)
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False
    return isinstance(mark, dict) and mark.get("format") == fmt


def _put_in_place(staging: Path, out: Path, fmt: str) -> None:
    """Move the finished export over ``out``; the old one (checked ours) goes only once the new one is complete."""
    if fmt == "smp":
        old = out.with_name(f".{out.name}.old")
        _remove_staging(old)
        if out.exists():
            out.rename(old)
        staging.rename(out)
        _remove_staging(old)
        return
    staging.replace(out)
    sidecar_path(staging, fmt).replace(sidecar_path(out, fmt))


def _remove_staging(path: Path) -> None:
    """Remove export's own hidden staging / old copy (``.NAME.partial``, ``.NAME.old``), never anything else."""
    if not (path.name.startswith(".") and path.name.endswith((".partial", ".old"))):
        raise ValueError(f"{path}: not a staging folder of damage-smp export; it was not deleted")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# ============================================================================================ writers
def _example(bundle: ModelBundle) -> torch.Tensor:
    t = max(64, bundle.model.min_input)
    return torch.full((1, 3, t, t), 128.0)


def write_onnx(bundle: ModelBundle, path: Path) -> None:
    """DamageModel (normalisation inside) -> ONNX with dynamic batch, height and width; float32 0–255 in, logits out."""
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        # the shape asserts in DamageModel.forward are checks for eager callers; tracing them warns, harmlessly
        warnings.simplefilter("ignore")
        torch.onnx.export(
            bundle.model, (_example(bundle),), str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["image"], output_names=["logits"], dynamic_axes={"image": dynamic, "logits": dynamic},
        )  # fmt: skip


def write_torchscript(bundle: ModelBundle, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(bundle.model, _example(bundle), check_trace=False)
    traced.save(str(path))


def write_smp(bundle: ModelBundle, path: Path) -> None:
    """smp's own save_pretrained folder (config.json + model.safetensors); encoder_weights null so that loading it
    never downloads ImageNet weights (smp #957). The model card is written after the parity check."""
    net = bundle.model.net
    config = net.config
    saved = config.get("encoder_weights")
    config["encoder_weights"] = None
    try:
        net.save_pretrained(str(path))
    finally:
        config["encoder_weights"] = saved


WRITERS = {"onnx": write_onnx, "torchscript": write_torchscript, "smp": write_smp}


# ============================================================================================ loaders
def onnx_forward(path: Path, threads: int | None = None) -> Forward:
    """An ONNX Runtime CPU session as a forward function."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False  # the arena keeps each tile batch's peak: +0.7 GB on a 100 MP scan
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a corrupt or foreign file
        raise ValueError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:160]})") from None
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.float().numpy()})[0]


def _load_onnx(path: Path, bundle: ModelBundle) -> Forward:
    return onnx_forward(path)


def _load_torchscript(path: Path, bundle: ModelBundle) -> Forward:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # jit.load is deprecated in favour of torch.export; still works
        module = torch.jit.load(str(path), map_location="cpu").eval()
    return lambda x: _no_grad(module, x.float())


def _load_smp(path: Path, bundle: ModelBundle) -> Forward:
    """The folder as smp users load it; they normalise outside the network, with our sidecar's mean/std."""
    import segmentation_models_pytorch as smp

    net = smp.from_pretrained(str(path)).eval()
    mean, std = bundle.model.mean, bundle.model.std
    return lambda x: _no_grad(net, (x.float() - mean) / std)


def _no_grad(module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return module(x).numpy()


LOADERS = {"onnx": _load_onnx, "torchscript": _load_torchscript, "smp": _load_smp}


# ============================================================================================ parity
def check_sizes(bundle: ModelBundle) -> list[tuple[int, int]]:
    """Two tile sizes, both multiples of 32: the run's tile, and a non-square one (dynamic height and width)."""
    t = max(bundle.cfg.tile, bundle.model.min_input)
    return [(t, t), (t + 32, t + 64)]


def check_image_set(bundle: ModelBundle, run_dir: Path, given: list | None) -> list[tuple[str, torch.Tensor]]:
    """[(name, (3, H, W) uint8)]: the --check-images, or the first images of the run's val (else test) split."""
    if given:
        paths = [Path(p) for p in given]
    else:
        paths = _split_images(bundle, run_dir)
    images = []
    for path in paths[: MAX_CHECK_IMAGES if not given else None]:
        if not path.is_file():
            raise FileNotFoundError(f"--check-images {path}: file not found")
        images.append((path.name, as_chw_uint8(read_image(path, bundle.cfg.max_pixels))))
    return images


def _split_images(bundle: ModelBundle, run_dir: Path) -> list[Path]:
    from rich.console import Console

    from .evaluate import resolve_manifest
    from .manifest import load_manifest

    try:
        manifest, _ = resolve_manifest(RunPaths(run_dir), bundle.cfg.manifest, None, Console(quiet=True))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; or give images for the parity check with --check-images FILE ...") from None
    df = load_manifest(manifest)
    for split in ("val", "test", "train"):
        rows = df[df["split"] == split]
        if len(rows):
            return [Path(p) for p in rows["image_path"]]
    raise ValueError(f"{manifest}: no images; give images for the parity check with --check-images FILE ...")


def _crop(image: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(3, H, W) -> (3, h, w): the top-left h x w, reflect-padded where the image is smaller (as the tiler pads)."""
    ih, iw = image.shape[-2:]
    return pad_to(image, max(ih, h), max(iw, w))[:, :h, :w]


def check_parity(
    model: DamageModel, exported: Forward, images: list[tuple[str, torch.Tensor]], sizes: list[tuple[int, int]]
) -> dict:
    """PyTorch vs exported on every image cropped to every size, one batch per size -> the sidecar's parity dict."""
    rows = []
    for h, w in sizes:
        batch = torch.stack([_crop(img, h, w) for _, img in images]).float()  # (N, 3, h, w) 0–255
        with torch.no_grad():
            ref = torch.softmax(model(batch), dim=1)
        got = torch.softmax(torch.from_numpy(np.asarray(exported(batch))), dim=1)
        same = (ref.argmax(1) == got.argmax(1)).float().mean().item()
        rows.append({"size": [h, w], "batch": len(images), "max_abs_diff_prob": (ref - got).abs().max().item(),
                     "argmax_identical": same})  # fmt: skip
    worst = max(r["max_abs_diff_prob"] for r in rows)
    return {
        "images": [name for name, _ in images],
        "sizes": rows,
        "max_abs_diff_prob": worst,
        "argmax_identical": min(r["argmax_identical"] for r in rows),
        "tolerance": PARITY_TOL,
        "criterion": "max |Δp| < tolerance (argmax can then differ only at ties: top-2 gap < 2·max |Δp|)",
        "passed": worst < PARITY_TOL,
    }


def print_parity(parity: dict, console) -> None:
    for r in parity["sizes"]:
        h, w = r["size"]
        console.print(
            f"parity {h}x{w} x{r['batch']}: max |Δp| {r['max_abs_diff_prob']:.2e}  "
            f"identical argmax {r['argmax_identical']:.4%}"
        )
    verdict = "[green]passed[/]" if parity["passed"] else "[bold red]FAILED[/]"
    console.print(f"parity {verdict} (max |Δp| {parity['max_abs_diff_prob']:.2e} < {PARITY_TOL:g} required)")


# ============================================================================================ sidecar
def sidecar(bundle: ModelBundle, run_dir: Path, fmt: str, out: Path, parity: dict) -> dict:
    """What a user of the exported file needs: input convention, label scheme, tiling, provenance, parity."""
    m, cfg = bundle.model, bundle.cfg
    inside = fmt != "smp"
    data = {
        MARK: {"format": fmt, "file": out.name, "version": 1},
        "damage_smp_version": __version__,
        "run": {
            "name": run_dir.resolve().name,
            "path": str(run_dir.resolve()),
            "checkpoint": bundle.checkpoint_path.name,
            "checkpoint_sha256": sha256_file(bundle.checkpoint_path),
            "epoch": bundle.epoch,
        },  # fmt: skip
        "model": {
            "arch": cfg.arch,
            "encoder": cfg.encoder,
            "num_classes": bundle.scheme.num_classes,
            "min_input": m.min_input,
        },  # fmt: skip
        "input": {
            "layout": "NCHW RGB",
            "dtype": "float32",
            "range": "0-255",
            "multiple_of": 32,
            "normalisation": "inside the model" if inside else "(x - mean) / std before the network",
        },  # fmt: skip
        "output": "logits (N, C, H, W); softmax over C, argmax gives the class index of the label scheme",
        "normalisation": {"scale": "0-255", "mean": m.mean.flatten().tolist(), "std": m.std.flatten().tolist()},
        "label_scheme": bundle.scheme.to_dict(),
        "tile": cfg.tile,
        "overlap": cfg.overlap,
        "decision": "argmax of the Gaussian-blended tile probabilities (damage-smp predict)",
        "parity": parity,
    }
    tuned = read_thresholds(run_dir)
    if tuned and tuned.get("checkpoint_sha256") == data["run"]["checkpoint_sha256"]:
        data["thresholds"] = tuned  # predict MODEL.onnx applies it (--decision auto|tuned), as for the run
        data["decision"] = (f"damage iff the summed damage probability >= {tuned['threshold']:.3f} (tuned on "
                            f"{tuned['split']}; thresholds.level of {BINS} bins), then the most likely damage class; "
                            "else the most likely other class. --decision argmax: the argmax")  # fmt: skip
    if fmt == "onnx":
        data["onnx"] = {"opset": ONNX_OPSET, "input": "image", "output": "logits"}
    return data
