"""Reading run directories without torch: discovery, config/state/env/metrics/history, per-image counts."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..config import CONFIG_VERSION, TrainConfig

SUMMARY_COLUMNS = ("miou", "damage_miou", "damage_iou", "damage_f1", "pixel_accuracy")
MAX_DEPTH = 3  # run dirs are found at most this many folders below a given path
SKIP_DIRS = {"checkpoints", "samples", "compare", "__pycache__"}
_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


# ============================================================================================ file names
def split_filename(stem: str, split_key: str, suffix: str) -> str:
    """The file evaluate writes for a split key: ``stem.suffix`` for "test", else ``stem_<key>.suffix``.

    >>> split_filename("per_image", "test", ".csv"), split_filename("per_image", "test@fold-a b", ".csv")
    ('per_image.csv', 'per_image_test@fold-a_b.csv')
    """
    if split_key == "test":
        return f"{stem}{suffix}"
    return f"{stem}_{re.sub(r'[^A-Za-z0-9._@+=-]', '_', split_key)}{suffix}"


# ============================================================================================ discovery
def is_run_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def discover_runs(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Run dirs (folders with config.json) given directly or found up to 3 folders below; unique names."""
    found: list[tuple[Path, str]] = []
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such folder; give an experiments folder or run directories")
        if not root.is_dir():
            raise NotADirectoryError(f"{root}: not a folder; give an experiments folder or run directories")
        if is_run_dir(root):
            found.append((root, root.name))
            continue
        for dirpath, dirnames, _ in os.walk(root):
            here = Path(dirpath)
            depth = len(here.relative_to(root).parts)
            if depth and is_run_dir(here):
                found.append((here, here.relative_to(root).as_posix()))
                dirnames[:] = []
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)
            if depth >= MAX_DEPTH:
                dirnames[:] = []
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


# ============================================================================================ reading one run
def read_json_file(path: Path) -> tuple[dict | None, str | None]:
    """(data, None), (None, None) when the file is missing, or (None, reason) when it is unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{path.name}: unreadable ({type(e).__name__})"
    if not isinstance(data, dict):
        return None, f"{path.name}: not a JSON object"
    return data, None


def read_history(path: Path) -> tuple[list[dict], str | None]:
    """history.csv rows as dicts of floats (NaN for blanks; 'frozen' and 'energy_source' kept as text)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return [], "no history.csv"
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        return [], f"history.csv: unreadable ({type(e).__name__})"
    out = []
    for row in rows:
        parsed = {}
        for k, v in row.items():
            if k in ("frozen", "energy_source") or k is None:
                parsed[k] = v
            else:
                parsed[k] = to_float(v)
        if not math.isnan(parsed.get("epoch", math.nan)):
            out.append(parsed)
    return out, None


def to_float(v) -> float:
    if v is None or v == "":
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def schedule_label(cfg: dict) -> str:
    if not cfg.get("freeze_encoder"):
        return "fine-tuned"
    if cfg.get("unfreeze_at"):
        return f"frozen→unfrozen@{cfg['unfreeze_at']}"
    return "frozen"


def weights_label(cfg: dict) -> str:
    w = str(cfg.get("encoder_weights", ""))
    return w if w in ("imagenet", "none") else ("path" if w else "")


def read_run(run_dir: Path, name: str, split: str, metric: str) -> dict:
    """One run's row: settings, cost, validation and test numbers, status; never raises on a bad run dir."""
    problems: list[str] = []
    row: dict = {"name": name, "path": str(run_dir), "status": "", "note": ""}
    private: dict = {"history": [], "counts": None, "damage_idx": None, "class_names": [], "cfg": None}

    config, err = read_json_file(run_dir / "config.json")
    if err:
        problems.append(err)
    state, err = read_json_file(run_dir / "state.json")
    if err:
        problems.append(err)
    env, err = read_json_file(run_dir / "env.json")
    if err:
        problems.append(err)
    metrics, err = read_json_file(run_dir / "metrics.json")
    if err:
        problems.append(err)

    cfg: dict = {}
    model: dict = {}
    scheme: dict = {}
    if config is not None:
        if config.get("config_version") != CONFIG_VERSION:
            problems.append(f"config_version {config.get('config_version')} (this damage-smp: {CONFIG_VERSION})")
        cfg = {**_DEFAULTS, **(config.get("train") or {})}
        model = config.get("model") or {}
        scheme = config.get("label_scheme") or {}
        private["cfg"] = cfg
    row.update(
        arch=cfg.get("arch", ""),
        encoder=cfg.get("encoder", ""),
        weights=weights_label(cfg),
        weights_path=cfg.get("encoder_weights", "") if weights_label(cfg) == "path" else "",
        schedule=schedule_label(cfg) if cfg else "",
        train_fraction=cfg.get("train_fraction", math.nan),
        seed=cfg.get("seed", math.nan),
        labels=scheme.get("name", cfg.get("labels", "")),
        manifest=cfg.get("manifest", ""),
        epochs=cfg.get("epochs", math.nan),
        params_trainable=model.get("params_trainable_at_start", math.nan),
        params_total=model.get("params_total", math.nan),
    )
    private["data_id"] = (env or {}).get("manifest_sha256") or str(cfg.get("manifest", ""))
    classes = scheme.get("classes") or []
    private["class_names"] = [str(c.get("name", i)) for i, c in enumerate(classes) if isinstance(c, dict)]
    private["damage_idx"] = [i for i, c in enumerate(classes) if isinstance(c, dict) and c.get("damage", True)
                             and c.get("name") not in (scheme.get("clean"), scheme.get("background"))]  # fmt: skip

    # ------------------------------------------------------------------ training cost and validation
    history, err = read_history(run_dir / "history.csv")
    if err and config is not None:
        problems.append(err)
    private["history"] = history
    col = {k: np.array([h.get(k, math.nan) for h in history], float) for k in
           ("seconds", "img_per_s", "peak_mem_mb", "energy_wh", "val_miou", "val_damage_miou")}  # fmt: skip
    score = np.where(np.isnan(col["val_damage_miou"]), col["val_miou"], col["val_damage_miou"])
    sources = sorted({str(h.get("energy_source") or "") for h in history} - {""})
    row.update(
        epochs_run=int(max(h["epoch"] for h in history)) if history else 0,
        train_time_s=_nansum(col["seconds"]),
        img_per_s=_nan(np.nanmedian, col["img_per_s"]),
        peak_mem_mb=_nan(np.nanmax, col["peak_mem_mb"]),
        energy_wh=_nansum(col["energy_wh"]),
        energy_source=",".join(sources),
        best_val=_nan(np.nanmax, score),
    )

    # ------------------------------------------------------------------ test metrics
    evaluated = metrics.get(split) if metrics else None
    summary = (evaluated or {}).get("summary") or {}
    for k in SUMMARY_COLUMNS:
        row[k] = to_float(summary.get(k))
    row["metric"] = to_float(summary.get(metric))
    for c in (evaluated or {}).get("per_class") or []:
        row[f"iou_{c.get('name')}"] = to_float(c.get("iou"))
    row["n_images"] = (evaluated or {}).get("n_images", math.nan)
    row["checkpoint"] = (evaluated or {}).get("checkpoint", "")
    if evaluated:
        counts, err = read_per_image(run_dir / split_filename("per_image", split, ".csv"), len(classes))
        if err:
            problems.append(err)
        private["counts"] = counts

    # ------------------------------------------------------------------ status
    status = (state or {}).get("status") or ("unknown" if config is not None else "")
    if config is None or any("unreadable" in p or "not a JSON" in p for p in problems):
        status = "broken"
    elif status == "finished" and not evaluated:
        status = "not evaluated"
    elif config is not None and (config.get("config_version") != CONFIG_VERSION):
        status = "other version"
    if config is None and not problems:
        problems.append("config.json: missing")
    if not evaluated and metrics is not None and status not in ("broken",):
        problems.append(f"no {split!r} in metrics.json (splits: {', '.join(metrics) or 'none'})")
    if (state or {}).get("reason"):
        problems.append(str(state["reason"])[:120])
    row["status"] = status
    row["note"] = "; ".join(problems)
    row["_private"] = private
    return row


def _nansum(a: np.ndarray) -> float:
    return float(np.nansum(a)) if a.size and not np.isnan(a).all() else math.nan


def _nan(fn, a: np.ndarray) -> float:
    return float(fn(a)) if a.size and not np.isnan(a).all() else math.nan


# ============================================================================================ per-image counts
@dataclass
class ImageCounts:
    """Per-image pixel counts from per_image.csv: images (n,), tp/fp/fn (n, C), binary damage (n, 3)."""

    images: list[str]
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    dmg: np.ndarray  # (n, 3): damage-vs-clean tp, fp, fn
    k: int = 1  # how many runs' counts were summed into these (seeds pooled)

    def matrix(self) -> np.ndarray:
        """(n, 3C + 3) int64 count matrix in the order tp, fp, fn, damage tp/fp/fn (for the bootstrap)."""
        return np.concatenate([self.tp, self.fp, self.fn, self.dmg], axis=1).astype(np.int64)

    @property
    def support(self) -> np.ndarray:
        return self.tp + self.fn  # (n, C) target pixels per class: equal iff the ground truth is equal

    def aligned(self, order: list[str]) -> ImageCounts | None:
        pos = {name: i for i, name in enumerate(self.images)}
        if len(pos) != len(self.images) or set(pos) != set(order):
            return None
        idx = np.array([pos[name] for name in order])
        return ImageCounts(list(order), self.tp[idx], self.fp[idx], self.fn[idx], self.dmg[idx], self.k)

    def same_truth(self, other: ImageCounts) -> bool:
        """Same images with the same ground truth: equal target pixels per class and image (per run pooled)."""
        return self.tp.shape == other.tp.shape and np.array_equal(self.support * other.k, other.support * self.k)

    def __add__(self, other: ImageCounts) -> ImageCounts:
        return ImageCounts(self.images, self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                           self.dmg + other.dmg, self.k + other.k)  # fmt: skip


def read_per_image(path: Path, num_classes: int) -> tuple[ImageCounts | None, str | None]:
    """per_image.csv -> ImageCounts (csv + numpy: ~10x faster than pandas for many small files)."""
    if not path.is_file():
        return None, f"no {path.name} (bootstrap unavailable)"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            lines = list(reader)
        col = {name: i for i, name in enumerate(header)}
        wanted = [f"{k}_{c}" for k in ("tp", "fp", "fn") for c in range(num_classes)]
        wanted += ["damage_tp", "damage_fp", "damage_fn"]
        idx = [col[name] for name in wanted]  # KeyError: a column is missing
        counts = np.array([[int(line[i] or 0) for i in idx] for line in lines], np.int64).reshape(len(lines), -1)
        images = [line[col["image"]] for line in lines]
    except (OSError, ValueError, KeyError, IndexError, StopIteration, UnicodeDecodeError, csv.Error) as e:
        return None, f"{path.name}: unreadable ({type(e).__name__}: {str(e)[:80]})"
    c = num_classes
    split = (counts[:, :c], counts[:, c : 2 * c], counts[:, 2 * c : 3 * c], counts[:, 3 * c :])
    return ImageCounts(images, *split), None
