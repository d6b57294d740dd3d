"""Run directories: layout, atomic writes, reading (one error policy), discovery. Never imports torch.

experiments/<name>/
  config.json  env.json  state.json  history.csv  checkpoints/{best,last}.pt  metrics.json
  confusion_matrix.{csv,png}  per_image.csv  groups.csv  curves.png  samples/
(evaluate's files for a split other than test are named by ``split_filename``; checkpoints.py reads and writes
the .pt files, so compare and report read a run without torch.)
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import math
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from .config import CONFIG_VERSION, TrainConfig
from .images import atomic_write_bytes
from .labels import LabelScheme
from .rundir import MARKERS

HISTORY_FIELDS = [
    "epoch", "train_loss", "val_loss", "val_miou", "val_damage_miou", "lr", "seconds", "img_per_s",
    "data_seconds", "peak_mem_mb", "gpu_util", "energy_wh", "energy_source", "frozen", "steps", "planned_steps",
]  # fmt: skip
MAX_DEPTH = 3  # run dirs are found at most this many folders below a given path
PRETRAIN_MARKER = MARKERS["pretrain"]
SKIP_DIRS = {"checkpoints", "samples", "compare", "__pycache__"}  # never hold run dirs (a run's own, compare's out)


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


def split_filename(stem: str, split_key: str, suffix: str) -> str:
    """The file evaluate writes for a split key: ``stem.suffix`` for "test", else ``stem_<key>.suffix``.

    >>> split_filename("per_image", "test", ".csv"), split_filename("per_image", "test@fold-a b", ".csv")
    ('per_image.csv', 'per_image_test@fold-a_b.csv')
    """
    if split_key == "test":
        return f"{stem}{suffix}"
    return f"{stem}_{re.sub(r'[^A-Za-z0-9._@+=-]', '_', split_key)}{suffix}"


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


# ------------------------------------------------------------------------------------------ reading
def read_json(path: str | Path) -> dict:
    """A JSON object from a file; FileNotFoundError, or ValueError when it cannot be read, is not valid JSON or
    is not an object. Each message names the file; ``__cause__`` holds the underlying error."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the run directory is damaged") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object ({type(data).__name__}); the run directory is damaged")
    return data


def read_json_lenient(path: str | Path) -> tuple[dict | None, str | None]:
    """``read_json`` for readers that list a damaged run rather than stop (compare, report): (data, None),
    (None, None) when the file is missing, or (None, "<name>: unreadable (<why>)")."""
    path = Path(path)
    try:
        return read_json(path), None
    except FileNotFoundError:
        return None, None
    except ValueError as e:
        why = type(e.__cause__).__name__ if e.__cause__ is not None else "not a JSON object"
        return None, f"{path.name}: unreadable ({why})"


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


def write_run_config(
    run_dir: str | Path, cfg: TrainConfig, scheme: LabelScheme, model_info: dict, extra: dict | None = None
) -> None:
    """config.json; ``extra``: further top-level sections (e.g. "self_training": teacher, round, pseudo folder)."""
    write_json(
        RunPaths(Path(run_dir)).config,
        {
            "config_version": CONFIG_VERSION,
            "train": cfg.to_dict(),
            "label_scheme": scheme.to_dict(),
            "model": model_info,
            **(extra or {}),
        },
    )


# ------------------------------------------------------------------------------------------ discovery
def is_run_dir(path: str | Path) -> bool:
    """A training run (config.json); a pre-train run (config.json beside pretrain.json) is not one."""
    return (Path(path) / "config.json").is_file() and not (Path(path) / PRETRAIN_MARKER).is_file()


# ------------------------------------------------------------------------------------------ pre-train runs
def read_pretrain(folder: str | Path, flag: str = "--init-from") -> dict:
    """A finished ``damage-smp pretrain`` run's pretrain.json (arch, encoder, init, ...) plus ``run`` (its path);
    ValueError naming ``flag`` when the folder is not one or has no model.pt yet."""
    folder = Path(folder).expanduser()
    marker = folder / PRETRAIN_MARKER
    if not marker.is_file():
        raise ValueError(
            f"{flag} {folder}: not a pre-train run (no {PRETRAIN_MARKER}); give a folder made by "
            "`damage-smp pretrain INPUTS --out DIR`"
        )
    data = read_json(marker)
    if not (folder / "model.pt").is_file():
        raise ValueError(
            f"{flag} {folder}: the pre-train run has not finished (no model.pt); continue it with "
            f"`damage-smp pretrain --out {folder} --resume`"
        )
    return {**data, "run": str(folder.resolve())}


def describe_init(train: TrainConfig | dict, model_info: dict | None = None) -> str:
    """How a run's weights started, for tables: imagenet, none, path:FILE, pretrain:NAME, imagenet+pretrain:NAME
    (encoder and decoder from a pre-train run that itself started from ImageNet) or ...pretrain-encoder:NAME
    (--encoder-weights PRETRAIN_DIR/encoder.pt). ``train`` is config.json's "train" (or the TrainConfig),
    ``model_info`` its "model" entry, which names the pre-train run even after it moved."""
    settings = train.to_dict() if isinstance(train, TrainConfig) else dict(train)
    pre = (model_info or {}).get("pretrain") or {}
    weights = str(settings.get("encoder_weights", "imagenet"))
    if settings.get("init_from") or pre:
        name = Path(pre.get("run") or settings.get("init_from") or weights).name
        label = "pretrain-encoder" if pre.get("part") == "encoder" else "pretrain"
        init = pre.get("init", weights)
        return f"imagenet+{label}:{name}" if init == "imagenet" else f"{label}:{name}"
    return weights if weights in ("imagenet", "none") else f"path:{Path(weights).name}"


def walk_run_tree(root: Path) -> Iterator[tuple[Path, int, list[str]]]:
    """(folder, depth, file names) for root and the folders below it where run dirs are looked for: at most
    MAX_DEPTH down, never inside a run dir, a hidden folder or SKIP_DIRS; sorted, so discovery is reproducible."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        if depth >= MAX_DEPTH or is_run_dir(here):
            dirnames[:] = []
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)
        yield here, depth, filenames
        for d in dirnames:  # os.walk does not enter links: a linked run dir is listed, never walked into
            if (here / d).is_symlink() and is_run_dir(here / d):
                yield here / d, depth + 1, []


def discover_runs(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Run dirs (folders with config.json) given directly or found up to MAX_DEPTH folders below; unique names."""
    found: list[tuple[Path, str]] = []
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such folder; give an experiments folder or run directories")
        if not root.is_dir():
            raise NotADirectoryError(f"{root}: not a folder; give an experiments folder or run directories")
        if is_run_dir(root):
            found.append((root, root.name))
            continue
        found += [(d, d.relative_to(root).as_posix()) for d, depth, _ in walk_run_tree(root) if depth and is_run_dir(d)]
    if not found:
        shown = ", ".join(str(p) for p in paths)
        raise ValueError(
            f"{shown}: no run directories found (folders with config.json, up to {MAX_DEPTH} levels down); "
            "train one with `damage-smp train` or give run directories"
        )
    seen: dict[Path, str] = {}
    for d, name in found:
        seen.setdefault(d.resolve(), name)
    dirs = list(seen)
    names = list(seen.values())
    if len(set(names)) < len(names):  # the same relative name under two roots: fall back to full paths
        names = [str(d) for d in dirs]
    return dirs, names


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
    return stale_checked(read_json(path))


def stale_checked(state: dict) -> dict:
    """A "running" state written by a process that is gone (killed, machine restarted) becomes "killed"."""
    if state.get("status") == "running" and not _alive(state.get("pid"), state.get("host")):
        reason = "the training process is gone (killed?); continue with damage-smp train --resume RUN_DIR"
        state = {**state, "status": "killed", "reason": state.get("reason") or reason}
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
