"""One run's row for compare (config/state/env/metrics/history, per-image counts), read with runs.py, no torch."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..config import CONFIG_VERSION, TrainConfig
from ..runs import describe_init, read_json_lenient, split_filename, stale_checked

SUMMARY_COLUMNS = ("miou", "damage_miou", "damage_iou", "damage_f1", "pixel_accuracy")
# settings that change how a run ran, not what it learnt: runs differing only in these (and the seed) are repeats
RUNTIME_FIELDS = {"seed", "name", "out_dir", "overwrite", "device", "num_workers", "cache_mb", "samples",
                  "save_every", "compile", "channels_last", "max_pixels", "deterministic", "amp",
                  "patience"}  # fmt: skip
_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


# ============================================================================================ reading one run
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
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan  # inf is not a score: missing, like NaN


def schedule_label(cfg: dict) -> str:
    if not cfg.get("freeze_encoder"):
        return "fine-tuned"
    if cfg.get("unfreeze_at"):
        return f"frozen→unfrozen@{cfg['unfreeze_at']}"
    return "frozen"


def weights_label(cfg: dict) -> str:
    w = str(cfg.get("encoder_weights", ""))
    return w if w in ("imagenet", "none") else ("path" if w else "")


def is_scratch(cfg: dict) -> bool:
    """Random weights, no pre-train run, no pseudo labels: the baseline every other initialisation is held to."""
    return weights_label(cfg) == "none" and not cfg.get("init_from") and not cfg.get("pseudo")


def self_training_label(st: dict | None) -> str:
    """'round 1 ← TEACHER (t 0.9, w 1)' for a run trained with --pseudo, else ''."""
    if not st:
        return ""
    teacher, t, w = st.get("teacher_name") or "?", st.get("threshold"), st.get("weight")
    return f"round {st.get('round', '?')} ← {teacher} (t {t}, w {w})"


def self_training_key(st: dict) -> str:
    """What a --pseudo run learnt from, independent of the (per-seed) pseudo folder and teacher: the round, the
    threshold, TTA and the teacher's settings but for its seed and run-time settings — so students of the
    seeds of one teacher setting form one seed group."""
    teacher = {k: v for k, v in (st.get("teacher_config") or {}).items() if k not in RUNTIME_FIELDS | {"pseudo"}}
    parts = {k: st.get(k) for k in ("round", "threshold", "tta", "checkpoint")}
    return json.dumps({**parts, "teacher": teacher}, sort_keys=True)


def read_run(run_dir: Path, name: str, split: str, metric: str) -> dict:
    """One run's row: settings, cost, validation and test numbers, status; never raises on a bad run dir."""
    problems: list[str] = []
    files: dict[str, dict | None] = {}
    for stem in ("config", "state", "env", "metrics"):
        files[stem], err = read_json_lenient(run_dir / f"{stem}.json")
        if err:
            problems.append(err)
    config, metrics = files["config"], files["metrics"]
    if files["state"] is not None:
        files["state"] = stale_checked(files["state"])
    row: dict = {"name": name, "path": str(run_dir), "status": "", "note": ""}
    private: dict = {"history": [], "counts": None, "damage_idx": None, "class_names": [], "cfg": None}
    scheme = _settings(row, private, config, files["env"], problems)

    history, err = read_history(run_dir / "history.csv")
    if err and config is not None:
        problems.append(err)
    private["history"] = history
    row.update(_cost(history))

    evaluated = metrics.get(split) if metrics else None
    row.update(_test_numbers(evaluated or {}, metric, problems))
    if evaluated:
        per_image = run_dir / split_filename("per_image", split, ".csv")
        private["counts"], err = read_per_image(per_image, len(scheme.get("classes") or []))
        if err:
            problems.append(err)

    row["status"] = _status(config, files["state"] or {}, metrics, evaluated, split, problems)
    row["note"] = "; ".join(problems)
    row["_private"] = private
    return row


def _settings(row: dict, private: dict, config: dict | None, env: dict | None, problems: list[str]) -> dict:
    """config.json's settings into the row (cfg, class names, damage classes into private); returns the scheme."""
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
    st = (config or {}).get("self_training") if cfg.get("pseudo") else None
    st = st if isinstance(st, dict) else None
    if st:  # students of one teacher setting group across seeds (each seed has its own pseudo folder)
        private["cfg"] = {**cfg, "pseudo": self_training_key(st)}
    row.update(
        arch=cfg.get("arch", ""),
        encoder=cfg.get("encoder", ""),
        weights=weights_label(cfg),
        weights_path=cfg.get("encoder_weights", "") if weights_label(cfg) == "path" else "",
        init=describe_init(cfg, model) if cfg else "",
        self_training=self_training_label(st),
        teacher=(st or {}).get("teacher_name", ""),
        round=(st or {}).get("round", 0) if cfg else math.nan,
        schedule=schedule_label(cfg) if cfg else "",
        train_fraction=cfg.get("train_fraction", math.nan),
        seed=cfg.get("seed", math.nan),
        labels=scheme.get("name", cfg.get("labels", "")),
        manifest=cfg.get("manifest", ""),
        **_epochs(cfg, (config or {}).get("budget")),
        params_trainable=model.get("params_trainable_at_start", math.nan),
        params_total=model.get("params_total", math.nan),
    )
    private["data_id"] = (env or {}).get("manifest_sha256") or str(cfg.get("manifest", ""))
    classes = scheme.get("classes") or []
    private["class_names"] = [str(c.get("name", i)) for i, c in enumerate(classes) if isinstance(c, dict)]
    private["damage_idx"] = [i for i, c in enumerate(classes) if isinstance(c, dict) and c.get("damage", True)
                             and c.get("name") not in (scheme.get("clean"), scheme.get("background"))]  # fmt: skip
    return scheme


def _epochs(cfg: dict, budget) -> dict:
    """Planned epochs, and under --time-budget the budget and what it became (config.json's last "budget" entry)."""
    if not cfg.get("time_budget"):
        return {"epochs": cfg.get("epochs", math.nan), "time_budget": "", "steps": math.nan}
    last = budget[-1] if isinstance(budget, list) and budget and isinstance(budget[-1], dict) else {}
    return {"epochs": to_float(last.get("epochs")), "time_budget": str(last.get("time_budget", cfg["time_budget"])),
            "steps": to_float(last.get("steps"))}  # fmt: skip


def _cost(history: list[dict]) -> dict:
    """Training cost and best validation score from history.csv's rows."""
    col = {k: np.array([h.get(k, math.nan) for h in history], float) for k in
           ("seconds", "img_per_s", "peak_mem_mb", "energy_wh", "val_miou", "val_damage_miou")}  # fmt: skip
    score = np.where(np.isnan(col["val_damage_miou"]), col["val_miou"], col["val_damage_miou"])
    sources = sorted({str(h.get("energy_source") or "") for h in history} - {""})
    return dict(
        epochs_run=int(max(h["epoch"] for h in history)) if history else 0,
        train_time_s=_nansum(col["seconds"]),
        img_per_s=_nan(np.nanmedian, col["img_per_s"]),
        peak_mem_mb=_nan(np.nanmax, col["peak_mem_mb"]),
        energy_wh=_nansum(col["energy_wh"]),
        energy_source=",".join(sources),
        best_val=_nan(np.nanmax, score),
    )


def _test_numbers(evaluated: dict, metric: str, problems: list[str]) -> dict:
    """metrics.json's entry for the split (empty when not evaluated) -> summary, metric, per-class IoU columns.

    Infinity / NaN (a hand-edited or foreign metrics.json) are missing values, never averaged, and noted."""
    summary = evaluated.get("summary") or {}
    odd = [k for k, v in summary.items() if isinstance(v, float) and not math.isfinite(v)]
    if odd:
        problems.append(f"non-finite {', '.join(odd)} in metrics.json treated as missing")
    out = {k: to_float(summary.get(k)) for k in SUMMARY_COLUMNS}
    out["metric"] = to_float(summary.get(metric))
    for c in evaluated.get("per_class") or []:
        out[f"iou_{c.get('name')}"] = to_float(c.get("iou"))
    out["n_images"] = evaluated.get("n_images", math.nan)
    out["checkpoint"] = evaluated.get("checkpoint", "")
    return out


def _status(config: dict | None, state: dict, metrics: dict | None, evaluated, split: str, problems: list[str]) -> str:
    """finished / failed / ... from state.json, overridden by broken, not evaluated, other version; adds notes."""
    status = state.get("status") or ("unknown" if config is not None else "")
    if config is None or any("unreadable" in p for p in problems):
        status = "broken"
    elif status == "finished" and not evaluated:
        status = "not evaluated"
    elif config.get("config_version") != CONFIG_VERSION:
        status = "other version"
    if config is None and not problems:
        problems.append("config.json: missing")
    if not evaluated and metrics is not None and status != "broken":
        problems.append(f"no {split!r} in metrics.json (splits: {', '.join(metrics) or 'none'})")
    if state.get("reason"):
        problems.append(str(state["reason"])[:120])
    return status


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
