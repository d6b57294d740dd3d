"""The forward pass of predict's tiles: the run's PyTorch model, or an ONNX Runtime session of it (CPU).

For ``onnxruntime`` the run's model is exported once to an ONNX file in the system temp folder, named after the
checkpoint's sha256 (and the damage-smp version and opset that wrote the graph), and reused by later batches.
It lives outside ``--out`` so that predict's ownership checks of that folder never see it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from .. import __version__
from ..export import ONNX_OPSET, onnx_forward, require_onnx, write_onnx
from ..models import ModelBundle
from ..runs import sha256_file

BACKENDS = ("torch", "onnxruntime")
CACHE_DIR = "damage-smp-onnx"


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


def tile_model(bundle: ModelBundle, backend: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """(N, 3, h, w) float 0–255 -> (N, C, h, w) logits, as the tiler calls it."""
    if backend == "torch":
        return bundle.model
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
