"""Checkpoints (``<run>/checkpoints/{best,last}.pt``): atomic save and copy, safe load.

Apart from runs.py so that reading a run directory (compare, report) never imports torch.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import torch

from .images import WriteError, atomic_copy, atomic_write_bytes


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or from an incompatible version."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save to a temp file, fsync, rename. On failure (e.g. a full disk) the old file is untouched."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        raise checkpoint_write_error(path, e) from e


TRAINING_STATE = ("optimizer", "scaler", "rng")


def model_state(state: dict) -> dict:
    """A checkpoint without what only a resume needs (optimizer, scaler, RNG): best.pt, ~1/3 of last.pt's size.

    Adam keeps two tensors per weight, so dropping it turns a 172 MB resnet18 Unet checkpoint into 57 MB.
    """
    return {k: v for k, v in state.items() if k not in TRAINING_STATE}


def copy_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Copy a checkpoint (last -> best, epoch_NNN) atomically; on failure dst keeps its previous content."""
    try:
        atomic_copy(src, dst)
    except OSError as e:
        raise checkpoint_write_error(Path(dst), e) from e


def checkpoint_write_error(path: Path, e: OSError, checkpoint: Path | None = None) -> WriteError:
    """'could not write .../last.pt (No space left on device); the previous last.pt is intact. ... --resume RUN'.

    ``checkpoint``: the checkpoint a resume would start from, when ``path`` is another file of the run.
    """
    reason = getattr(e, "reason", "") or e.strerror or str(e)
    checkpoint = checkpoint or path
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    if checkpoint != path:
        kept = f"{checkpoint} is intact"
    else:
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
    err = WriteError(
        f"could not write {path} ({reason}); {kept}. Free disk space, then continue with "
        f"`damage-smp train --resume {run_dir}`"
    )
    err.errno, err.reason, err.target = e.errno, reason, path
    return err


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with weights_only=True (no arbitrary code from a file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: checkpoint not found; train the run first, or pick another with --checkpoint best|last"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(unsafe_message(path, str(e))) from None
    except Exception as e:
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(e).__name__}); it is corrupt or truncated — "
            "use --checkpoint last/best or retrain"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a damage-smp checkpoint (no 'model' entry)")
    return state


def unsafe_message(path: Path, torch_message: str) -> str:
    """Why a weights-only load refused a file, in the user's terms (torch's text changes between versions)."""
    found = re.search(r"GLOBAL ([\w.]+)", torch_message)  # the pickle names a Python function or class
    if found:
        what = f" ({found.group(1)})"
        return (
            f"{path}: not a readable checkpoint: it holds pickled Python code or objects{what}, which damage-smp "
            "(loading with weights_only) "
            "never loads: unpickling them "
            "could run any program (nothing from the file was run). Use a checkpoint made by damage-smp "
            "(--checkpoint best/last) or retrain"
        )
    return f"{path}: not a readable checkpoint; it is corrupt or truncated — use --checkpoint last/best or retrain"
