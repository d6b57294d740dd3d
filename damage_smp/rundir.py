"""Folders damage-smp makes in places a user names: recognise them, replace them safely, never lose anything.

The policy of every command that writes into a user-named place: refuse what damage-smp did not write; replace
what it did only with ``--overwrite``; never delete the old before the new exists (make new, then swap).

A new training run is made in a hidden staging folder beside its final place (``OUT/.NAME.partial``) and takes
its name only once set-up succeeded and its first checkpoint is on disk (``RunDirClaim.commit``); a run that
fails in set-up leaves nothing behind (``abandon``), and a run it replaces is removed only after the swap.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig, check_run_name
from .images import TEMP_FILE, atomic_write_bytes

MARKERS = {  # file that identifies each kind of folder damage-smp writes
    "run": "config.json",
    "predict": "predict.json",
    "compare": "compare.json",
    "pseudo": "pseudo.json",
    "pretrain": "pretrain.json",  # beside its config.json, which has no "train" entry (so it is no "run")
}


def kind_of(path: Path) -> str | None:
    """'run', 'predict', ... when damage-smp made this folder (its marker file says so), else None."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return None
    for kind, marker in MARKERS.items():
        file = path / marker
        if file.is_file() and _is_ours(file, kind):
            return kind
    return None


def _is_ours(file: Path, kind: str) -> bool:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(data, dict):
        return False
    return "config_version" in data and "train" in data if kind == "run" else True


def remove_ours(path: Path, kind: str) -> None:
    """Delete a folder damage-smp made (checked first); anything else is refused, never deleted."""
    if kind_of(path) != kind and not _is_staging(path):
        raise ValueError(f"{path}: not a {kind} folder made by damage-smp; it was not deleted")
    shutil.rmtree(path)


def swap_into_place(new: Path, target: Path, kind: str) -> Path:
    """Rename ``new`` to ``target``; an existing ``target`` (made by damage-smp) is removed only afterwards."""
    old = None
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        target.rmdir()  # an empty folder holds nothing to keep
    if target.exists():
        if kind_of(target) != kind:
            raise ValueError(f"{target}: exists and was not made by damage-smp; move it away or choose another name")
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    try:
        new.rename(target)
    except OSError:
        if old is not None:
            old.rename(target)  # put the old one back: the user keeps what they had
        raise
    if old is not None:
        shutil.rmtree(old)  # our own renamed run (checked above)
    return target


# ============================================================================================ training runs
STAGING_MARK = ".damage-smp-staging"


def _is_staging(path: Path) -> bool:
    return (Path(path) / STAGING_MARK).is_file()


@dataclass
class RunDirClaim:
    """Where a run is being made (``path``) and where it will live (``target``); the same folder on resume."""

    target: Path
    path: Path
    kind: str = "run"  # what kind_of says of target: a pretrain run replaces only a pretrain run

    def commit(self) -> Path:
        """The staging folder takes the run's name; a run it replaces goes only now."""
        if self.path == self.target:
            return self.target
        (self.path / STAGING_MARK).unlink()
        return swap_into_place(self.path, self.target, self.kind)

    def abandon(self) -> None:
        """Set-up failed: remove the staging folder (never the target, never a resumed run)."""
        if self.path != self.target and _is_staging(self.path):
            shutil.rmtree(self.path, ignore_errors=True)


def claim_run_dir(cfg: TrainConfig, resume: str | Path | None) -> RunDirClaim:
    """The run to resume, or a staging folder for a new run whose name is free, replaceable or --overwrite'n."""
    if resume is not None:
        check_resumable(Path(resume))
        remove_stale_temps(Path(resume))
        return RunDirClaim(Path(resume), Path(resume))
    name = cfg.name or cfg.auto_name(dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    check_run_name(name)
    return claim_new_dir(Path(cfg.out_dir) / name, cfg.overwrite)


def claim_new_dir(target: Path, overwrite: bool, kind: str = "run") -> RunDirClaim:
    """A staging folder ``.NAME.partial`` beside ``target``, which must be free, replaceable or --overwrite'n."""
    check_target(target, overwrite, kind)
    name = target.name
    staging = target.with_name(f".{name}.partial")
    if staging.exists():  # left by a set-up that was killed (a live one would have finished in seconds)
        if not _is_staging(staging):
            raise ValueError(f"{staging}: exists and was not made by damage-smp; move it away or choose another --name")
        shutil.rmtree(staging)
    (staging / "checkpoints").mkdir(parents=True)
    atomic_write_bytes(staging / STAGING_MARK, f"{os.getpid()}\n".encode())
    return RunDirClaim(target, staging, kind)


def remove_stale_temps(run_dir: Path) -> None:
    """Temp files of atomic writes left by a killed run (``.last.pt.x1y2z3a4.tmp``): the run is ours, not running."""
    for folder in (run_dir, run_dir / "checkpoints"):
        for entry in folder.iterdir() if folder.is_dir() else []:
            if entry.is_file() and not entry.is_symlink() and TEMP_FILE.match(entry.name):
                entry.unlink()


def check_target(target: Path, overwrite: bool, kind: str = "run") -> None:
    """A new run's place must be free, a run that never got a checkpoint, or a run replaced with --overwrite."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    if kind_of(target) != kind:
        what = "run" if kind == "run" else f"{kind} run"
        where = "--name or --out-dir" if kind == "run" else "--out"
        raise FileExistsError(
            f"{target} exists and is not a damage-smp {what} directory; it is never replaced (not even with "
            f"--overwrite): choose another {where}, or move it away"
        )
    if not (target / "checkpoints" / "last.pt").is_file():
        return  # a run that failed before its first checkpoint holds nothing to keep: replaced
    if not overwrite:
        again = f"--resume {target}" if kind == "run" else f"--out {target} --resume"
        raise FileExistsError(
            f"{target} already exists; choose another {'--name' if kind == 'run' else '--out'}, continue it with "
            f"{again}, or replace it with --overwrite (the old run is removed only once the new one has started)"
        )


def check_resumable(run_dir: Path) -> None:
    if not (Path(run_dir) / "checkpoints" / "last.pt").is_file():
        hint = (
            "it failed before its first checkpoint: start it again without --resume (same --name)"
            if kind_of(run_dir) == "run"
            else "give a run directory made by `damage-smp train`"
        )
        raise FileNotFoundError(f"--resume {run_dir}: no checkpoints/last.pt there, nothing to resume; {hint}")
