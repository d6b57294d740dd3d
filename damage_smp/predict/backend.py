"""The forward pass of predict's tiles: the run's PyTorch model, or an ONNX Runtime session of it (CPU).

For ``onnxruntime`` the run's model is exported once to an ONNX file in the system temp folder, named after the
checkpoint's sha256 (and the damage-smp version and opset that wrote the graph), and reused by later batches.
It lives outside ``--out`` so that predict's ownership checks of that folder never see it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..export import MARK, ONNX_OPSET, onnx_forward, require_onnx, sidecar_path, write_onnx
from ..labels import LabelScheme
from ..models import ModelBundle
from ..runs import sha256_file

BACKENDS = ("torch", "onnxruntime")
CACHE_DIR = "damage-smp-onnx"


@dataclass
class ExportedModel:
    """An ONNX file from ``damage-smp export`` and its sidecar: what predict needs in place of a run's bundle."""

    path: Path
    scheme: LabelScheme
    epoch: int | None
    sidecar: dict
    forward: Callable[[torch.Tensor], object] = field(repr=False)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: None = None

    @property
    def checkpoint_path(self) -> Path:
        return self.path


def is_exported_model(path: str | Path) -> bool:
    """Is predict's first argument an exported ONNX file (``predict MODEL.onnx ...``) rather than a run dir?"""
    return Path(path).suffix.lower() == ".onnx" and not Path(path).is_dir()


def load_exported(path: str | Path) -> ExportedModel:
    """MODEL.onnx + MODEL.onnx.json -> ExportedModel; a missing file or sidecar, a sidecar that is not ours or
    does not describe this file, or a file ONNX Runtime cannot load: one line saying what to do."""
    path = Path(path)
    again = "export it again with `damage-smp export RUN_DIR --format onnx --out FILE.onnx`"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file; give a run dir, or {again}")
    side = sidecar_path(path, "onnx")
    if not side.is_file():
        raise ValueError(f"{path}: its sidecar {side.name} is missing (it holds the label scheme and tiling); {again}")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        scheme = LabelScheme.from_dict(meta["label_scheme"])
        if meta[MARK]["format"] != "onnx":
            raise KeyError(MARK)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{side}: not a damage-smp ONNX sidecar ({type(e).__name__}: {e}); {again}") from None
    expected = meta.get("file_sha256")
    if expected and sha256_file(path) != expected:
        raise ValueError(f"{path}: differs from the file its sidecar {side.name} describes (sha256); {again}")
    forward = onnx_forward(path, threads=torch.get_num_threads())  # one line on a corrupt or foreign file
    return ExportedModel(path, scheme, meta.get("run", {}).get("epoch"), meta, forward)


def check_backend(backend: str, device: str) -> str:
    """-> the device to load the model on. An unknown --backend, or onnxruntime on a GPU, is one line;
    onnxruntime missing names the extra."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: unknown; use one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        if device not in ("auto", "cpu"):
            raise ValueError(f"--backend onnxruntime runs on the CPU; drop --device {device} (or use --backend torch)")
        require_onnx()
        return "cpu"
    return device


def tile_model(bundle: ModelBundle | ExportedModel, backend: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """(N, 3, h, w) float 0–255 -> (N, C, h, w) logits, as the tiler calls it."""
    if backend == "torch":
        return bundle.model
    if isinstance(bundle, ExportedModel):
        forward = bundle.forward
    else:
        forward = onnx_forward(cached_onnx(bundle), threads=torch.get_num_threads())
    return lambda x: torch.from_numpy(forward(x.contiguous()))


def cached_onnx(bundle: ModelBundle) -> Path:
    """The bundle's model as ONNX, written (atomically) only when no export of this checkpoint is cached."""
    key = f"{sha256_file(bundle.checkpoint_path)[:32]}-v{__version__}-op{ONNX_OPSET}"
    path = Path(tempfile.gettempdir()) / CACHE_DIR / f"{key}.onnx"
    if path.is_file() and path.stat().st_size > 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.partial")  # per process: shards may export at once
    try:
        write_onnx(bundle, staging)
        staging.replace(path)
    finally:
        staging.unlink(missing_ok=True)
    return path
