"""Run directories: layout, atomic writes, checkpoint save/load.

experiments/<name>/
  config.json  env.json  history.csv  checkpoints/{best,last}.pt  metrics.json  confusion_matrix.{csv,png}
  per_image.csv  curves.png  samples/
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import math
import os
import pickle
import socket
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .config import CONFIG_VERSION, TrainConfig
from .images import WriteError, atomic_copy, atomic_write_bytes
from .labels import LabelScheme

HISTORY_FIELDS = [
    "epoch", "train_loss", "val_loss", "val_miou", "val_damage_miou", "lr", "seconds", "img_per_s",
    "data_seconds", "peak_mem_mb", "gpu_util", "energy_wh", "energy_source", "frozen",
]  # fmt: skip


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def env(self) -> Path:
        return self.root / "env.json"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, which: str = "best") -> Path:
        return self.checkpoints / f"{which}.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def state(self) -> Path:
        return self.root / "state.json"


# ------------------------------------------------------------------------------------------ atomic writes
def write_json(path: str | Path, data) -> None:
    atomic_write_bytes(path, (json.dumps(_jsonable(data), indent=2, allow_nan=True) + "\n").encode("utf-8"))


def write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_csv(path: str | Path, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    buf = io.StringIO()
    names = fieldnames or (list(rows[0].keys()) if rows else [])
    writer = csv.DictWriter(buf, fieldnames=names, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the run directory is damaged") from None


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON: NaN (e.g. an absent class's IoU) is written as null
    return obj


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ checkpoints
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
        unsafe = "Unsupported global" in str(e)  # objects other than tensors: refused, never run
        what = "holds Python objects that a safe load (weights_only) refuses" if unsafe else "is corrupt or truncated"
        raise CheckpointError(
            f"{path}: not a readable checkpoint; it {what} — use a checkpoint "
            "made by damage-smp (--checkpoint last/best) or retrain"
        ) from None
    except Exception as e:
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(e).__name__}); it is corrupt or truncated — "
            "use --checkpoint last/best or retrain"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a damage-smp checkpoint (no 'model' entry)")
    return state


# ------------------------------------------------------------------------------------------ reading runs
def read_run_config(run_dir: str | Path) -> tuple[TrainConfig, LabelScheme, dict]:
    """config.json -> (TrainConfig, LabelScheme, extras such as normalisation)."""
    paths = RunPaths(Path(run_dir))
    if not paths.root.is_dir():
        raise FileNotFoundError(f"{paths.root}: run directory not found")
    if not paths.config.is_file():
        raise FileNotFoundError(f"{paths.root}: not a run directory (no config.json); give a folder made by train")
    data = read_json(paths.config)
    version = data.get("config_version")
    if version != CONFIG_VERSION:
        raise ValueError(
            f"{paths.config}: config_version {version} but this damage-smp reads version {CONFIG_VERSION}; "
            "use the damage-smp version that made the run"
        )
    cfg = TrainConfig.from_dict(data["train"], source=str(paths.config))
    scheme = LabelScheme.from_dict(data["label_scheme"], source=str(paths.config))
    return cfg, scheme, data.get("model", {})


def write_run_config(run_dir: str | Path, cfg: TrainConfig, scheme: LabelScheme, model_info: dict) -> None:
    write_json(
        RunPaths(Path(run_dir)).config,
        {
            "config_version": CONFIG_VERSION,
            "train": cfg.to_dict(),
            "label_scheme": scheme.to_dict(),
            "model": model_info,
        },
    )


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "config.json").is_file()


def find_runs(root: str | Path) -> list[Path]:
    """Run directories at root or one/two levels below it (e.g. experiments/study/run), sorted."""
    root = Path(root)
    if is_run_dir(root):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        if is_run_dir(dirpath) and depth > 0:
            found.append(Path(dirpath))
            dirnames[:] = []
        elif depth >= 3:
            dirnames[:] = []
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("checkpoints", "samples")]
    return sorted(found)


# ------------------------------------------------------------------------------------------ state.json
def write_state(path: str | Path, status: str, epoch: int, reason: str = "") -> None:
    """state.json: running / finished / interrupted / failed, with the process that writes it (stale detection)."""
    write_json(path, {"status": status, "epoch": int(epoch), "reason": reason, "pid": os.getpid(),
                      "host": socket.gethostname(),
                      "updated": dt.datetime.now().isoformat(timespec="seconds")})  # fmt: skip


def read_state(run_dir: str | Path) -> dict | None:
    """state.json, with a "running" run whose process is gone (killed, machine restarted) shown as "killed"."""
    path = Path(run_dir) / "state.json"
    if not path.is_file():
        return None
    state = read_json(path)
    if state.get("status") == "running" and not _alive(state.get("pid"), state.get("host")):
        state = {**state, "status": "killed", "reason": state.get("reason") or "the training process is gone"}
    return state


def _alive(pid, host) -> bool:
    if not isinstance(pid, int) or host != socket.gethostname():
        return True  # another machine's process (or an old state.json): cannot tell, so not stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------------ resuming
def resumed_config(run_dir: str | Path, changes: dict) -> TrainConfig:
    """The saved config of a run with the given changes, which must be fields marked resumable (epochs, device...)."""
    from .config import resumable_fields

    fixed = [k for k in changes if k not in resumable_fields()]
    if fixed:
        flags = ", ".join("--" + k.replace("_", "-") for k in fixed)
        raise ValueError(f"--resume continues a run with its saved settings; drop {flags} (or start a new run)")
    cfg, _, _ = read_run_config(run_dir)
    return replace(cfg, **changes)
