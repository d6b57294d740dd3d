"""evaluate(run_dir, split) -> metrics.json, confusion matrix, per-image counts and per-group tables.

Every whole image of the split goes through the same Gaussian-blended sliding window as training's validation
and predict (``tiling.predict_index``, memory bounded by tile x width), at full resolution. Each image gets its
own confusion matrix; the split's matrix is their sum, so the numbers are exact pixel counts, not an average of
per-image scores.

Files written into the run directory (atomically; other splits already in metrics.json are kept):
- ``metrics.json``: ``{split_key: {summary, per_class, image_detection, groups, manifest, ...}}``
- ``confusion_matrix.csv`` / ``.png`` (rows = ground truth, columns = prediction; the PNG row-normalised)
- ``per_image.csv``: per image its TP/FP/FN pixel counts for every class (``tp_<i>``, ``fp_<i>``, ``fn_<i>``)
  and for damage-vs-clean (``damage_tp/fp/fn``), so that compare can bootstrap over images
- ``groups.csv``: one row per value of each manifest group column (material, content, ...)
The split key is the split name for the run's own manifest and ``<split>@<manifest stem>`` for another one;
files for keys other than ``test`` carry the key as a suffix (``per_image_val.csv``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from .cleanup import fill_class, parse_min_area
from .console import fmt, progress_bar
from .images import read_image, read_mask
from .labels import LabelScheme, UnknownMaskValues
from .manifest import SPLITS, group_columns, load_manifest, split_rows
from .metrics import ConfusionMatrix, image_detection
from .models import checkpoint_file, load_bundle
from .plots import save_confusion_matrix, save_pr_curve
from .runs import RunPaths, read_json, read_run_config, sha256_file, split_filename, write_csv, write_json
from .scoring import TolerantCounts, image_maps, print_decisions, print_tolerant, tuned_decision, tuned_entry
from .system import resolve_amp, resolve_device
from .thresholds import DamageHistogram, write_thresholds
from .tiling import predict_index

GROUP_METRICS = ("miou", "damage_miou", "damage_iou", "damage_f1", "pixel_accuracy")


# ============================================================================================ entry point
def evaluate(
    run_dir: str | Path,
    split: str = "test",
    manifest: str | Path | None = None,
    checkpoint: str = "best",
    tta: bool = False,
    device: str = "auto",
    tile: int | None = None,
    overlap: float | None = None,
    batch_size: int | None = None,
    max_pixels: int | None = None,
    tune: bool = False,
    min_area: str | int | dict | None = None,
    tolerance: int = 2,
    console: Console | None = None,
    colour_tolerance: int | None = None,
) -> dict:
    """Evaluate a run's checkpoint on every whole image of a split; write and return its metrics entry.

    ``manifest``: another manifest (its masks decoded with the run's label scheme; default: the run's own).
    ``tile``, ``overlap``, ``batch_size``, ``max_pixels`` and ``colour_tolerance`` default to the run's
    settings. ``tune``: choose the damage threshold on this split (val only), write thresholds.json; the tuned
    scores (``tuned``) use one chosen on another split, never this one. ``min_area``: remove smaller damage
    before scoring (``cleanup``); ``tolerance``: px of the tolerant per-class scores (``scoring.TolerantCounts``).
    Returns the metrics.json entry plus ``split_key`` and ``files``.
    """
    console, run_dir, paths = console or Console(), Path(run_dir), RunPaths(Path(run_dir))
    cfg, scheme = run_settings(run_dir, colour_tolerance)  # missing dir / not a run / other version: one line
    ckpt_path = checkpoint_file(run_dir, checkpoint)  # before the manifest and the model: a wrong name fails at once
    tile, overlap, batch_size, max_pixels = window_settings(cfg, tile, overlap, batch_size, max_pixels)
    manifest_path, foreign, rows, groups, split_key = load_split(paths, cfg.manifest, manifest, split, console)
    decision, note = tuned_decision(run_dir, split_key, scheme, ckpt_path, tune)
    sizes, hist = parse_min_area(min_area, scheme), DamageHistogram(scheme) if tune else None
    TolerantCounts(scheme, tolerance)  # a negative --tolerance fails before the model loads

    # ------------------------------------------------------------------ model
    dev = resolve_device(device)
    bundle = load_bundle(run_dir, checkpoint, dev)
    predict = partial(predict_index, bundle.model, num_classes=scheme.num_classes, tile=tile, overlap=overlap,
                      batch_size=batch_size, device=dev, amp_dtype=resolve_amp(cfg.amp, dev), tta=tta)  # fmt: skip
    settings = {"checkpoint": checkpoint, "epoch": bundle.epoch, "tta": bool(tta), "tile": tile, "overlap": overlap,
                "colour_tolerance": scheme.colour_tolerance,
                "min_area": {scheme.names[c]: px for c, px in sizes.items()}}  # fmt: skip
    console.print(f"[bold]{run_dir}[/]  {ckpt_path.name} (epoch {bundle.epoch})  {split_key}: {len(rows)} images  "
                  f"tile {tile} overlap {overlap:g}{'  TTA x4' if tta else ''}  device={dev}")  # fmt: skip

    # ------------------------------------------------------------------ the loop, then the numbers
    maps = partial(image_maps, predict, tuned=decision, hist=hist, min_area=sizes, fill=fill_class(scheme))
    totals, tolerant, mats, per_image = score_images(rows, groups, maps, scheme, foreign, max_pixels, console,
                                                     split_key, tolerance)  # fmt: skip
    total = totals["argmax"]
    entry = {**scores_entry(total, mats, rows, groups, scheme, manifest_path, settings),
             "tolerant": tolerant["argmax"].entry(),
             "tuned": tuned_entry(decision, note, totals.get("tuned"), scheme, tolerant.get("tuned"))}  # fmt: skip
    files = write_outputs(paths, split_key, entry, total, per_image, groups, scheme)
    if hist is not None:
        files += write_tuned(paths, hist, checkpoint, bundle, len(rows), scheme, console)
    print_summary(console, split_key, entry, scheme)
    console.print("wrote " + ", ".join(str(f) for f in files))
    return {**entry, "split_key": split_key, "files": [str(f) for f in files]}


# ============================================================================================ pieces
def scores_entry(total: ConfusionMatrix, mats: list[np.ndarray], rows, groups: list[str], scheme: LabelScheme,
                 manifest_path: Path, settings: dict) -> dict:  # fmt: skip
    """metrics.json's entry of one split: the argmax scores, detection, groups and what was evaluated."""
    return {
        "summary": total.summary(scheme),
        "per_class": total.per_class(scheme),
        "image_detection": image_detection(mats, scheme),
        "groups": {col: group_rows(rows[col].tolist(), mats, scheme) for col in groups},
        "manifest": str(manifest_path.resolve()),
        "manifest_sha256": sha256_file(manifest_path),
        **settings,
        "n_images": len(rows),
        "confusion_matrix": total.to_numpy().tolist(),
        "note": "absent classes are NaN and skipped",
    }


def run_settings(run_dir: str | Path, colour_tolerance: int | None):
    """The run's (TrainConfig, LabelScheme), the scheme with ``colour_tolerance`` when one is given."""
    cfg, scheme, _ = read_run_config(run_dir)
    return cfg, scheme.with_colour_tolerance(colour_tolerance)


def window_settings(cfg, tile: int | None, overlap: float | None, batch_size: int | None, max_pixels: int | None):
    """(tile, overlap, batch_size, max_pixels): each one given, or the run's training setting."""
    tile = cfg.tile if tile is None else tile
    overlap = cfg.overlap if overlap is None else overlap
    batch_size = cfg.batch_size if batch_size is None else batch_size
    max_pixels = cfg.max_pixels if max_pixels is None else max_pixels
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be >= 1")
    return tile, overlap, batch_size, max_pixels


def load_split(paths: RunPaths, trained_on: str, given: str | Path | None, split: str, console: Console):
    """(manifest path, foreign?, the split's rows, group columns, split key); a split not present: an error."""
    manifest_path, foreign = resolve_manifest(paths, trained_on, given, console)
    df = load_manifest(manifest_path)
    present = [s for s in SPLITS if (df["split"] == s).any()]
    if split not in present:
        raise ValueError(
            f"{manifest_path}: no {split!r} split (splits present: {', '.join(present) or 'none'}); "
            f"choose one with --split"
        )
    split_key = f"{split}@{manifest_path.stem}" if foreign else split
    return manifest_path, foreign, split_rows(df, split), group_columns(df), split_key


def score_images(rows, groups: list[str], maps: Callable, scheme: LabelScheme, foreign: bool, max_pixels: int,
                 console: Console, split_key: str, tolerance: int = 2) -> tuple[dict, dict, list, list]:  # fmt: skip
    """Predict every image of the split: ({decision: the split's matrix}, {decision: TolerantCounts}, one (C, C)
    argmax matrix per image, per-image rows). ``maps(image, target)`` -> {"argmax": (H, W), ...}
    (``scoring.image_maps``)."""
    totals: dict[str, ConfusionMatrix] = {}
    tolerant = {"argmax": TolerantCounts(scheme, tolerance)}
    mats: list[np.ndarray] = []
    per_image: list[dict] = []
    with progress_bar(console) as bar:
        task = bar.add_task(f"evaluate {split_key}", total=len(rows))
        for row in rows.to_dict("records"):
            image = read_image(row["image_path"], max_pixels)  # (H, W, 3) uint8
            target = decode_target(row["mask_path"], scheme, foreign, max_pixels)  # (H, W) uint8, 255 = ignore
            if target.shape != image.shape[:2]:
                raise ValueError(
                    f"{row['mask_path']}: mask is {target.shape[1]}x{target.shape[0]} but its image "
                    f"{row['image_path']} is {image.shape[1]}x{image.shape[0]}; masks must match their images"
                )
            for name, pred in maps(image, target).items():  # (H, W) uint8 per decision rule
                cm = ConfusionMatrix(scheme.num_classes)
                cm.update(pred, target)
                totals.setdefault(name, ConfusionMatrix(scheme.num_classes)).merge(cm)
                tolerant.setdefault(name, TolerantCounts(scheme, tolerance)).update(pred, target)
                if name == "argmax":
                    mat = cm.to_numpy()  # (C, C) int64 [target, pred]
            mats.append(mat)
            per_image.append({"image": row["image"], "image_path": row["image_path"],
                              **{g: row[g] for g in groups}, **per_image_counts(mat, scheme)})  # fmt: skip
            bar.advance(task)
    if not totals:
        totals["argmax"] = ConfusionMatrix(scheme.num_classes)
    return totals, tolerant, mats, per_image


def resolve_manifest(paths: RunPaths, trained_on: str, given: str | Path | None, console: Console):
    """(manifest path, foreign?) — the --manifest given, or the run's training manifest.

    A relative training manifest was relative to the folder train ran in; env.json keeps its absolute path
    and sha256, so a run still finds its data when evaluated from another folder.
    """
    env = {}
    if paths.env.is_file():
        try:
            env = read_json(paths.env)
        except ValueError:
            env = {}
    recorded = env.get("manifest")
    candidates = [Path(trained_on)]
    if recorded and Path(recorded) != Path(trained_on):
        candidates.append(Path(recorded))
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise FileNotFoundError(f"--manifest {path}: file not found; give an existing manifest CSV")
        same = any(c.is_file() and os.path.samefile(c, path) for c in candidates)
        return path, not same
    for path in candidates:
        if path.is_file():
            sha = env.get("manifest_sha256")
            if sha and sha256_file(path) != sha:
                console.print(
                    f"[yellow]warning: {path} changed since the run was trained (sha256 differs); "
                    "the split may not be the one the run was validated on[/]"
                )
            return path, False
    shown = " or ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{paths.root}: its training manifest {shown} is not found; run from the folder you trained in, "
        "or give the manifest with --manifest CSV"
    )


def decode_target(mask_path: str, scheme: LabelScheme, foreign: bool, max_pixels: int) -> np.ndarray:
    """A mask file -> (H, W) uint8 class indices in the run's label scheme; other values are a clear error."""
    try:
        return scheme.decode(read_mask(mask_path, max_pixels))
    except UnknownMaskValues as e:
        where = "this manifest's masks use a label scheme that differs from" if foreign else "it does not fit"
        raise ValueError(
            f"{mask_path}: {e}; {where} the run's scheme {scheme.name!r} ({scheme.num_classes} classes) — "
            "evaluate on masks in the run's scheme, or check them with `damage-smp manifest check --labels`"
        ) from None


def per_image_counts(mat: np.ndarray, scheme: LabelScheme) -> dict:
    """One image's (C, C) matrix -> pixels, damage-vs-clean IoU and counts, and tp_i/fp_i/fn_i per class."""
    tp = np.diag(mat)
    fp, fn = mat.sum(0) - tp, mat.sum(1) - tp
    binary = ConfusionMatrix.from_numpy(mat).damage_vs_clean(scheme)
    out = {"n_pixels": int(mat.sum()), "damage_iou": binary["iou"],
           "damage_tp": binary["tp"], "damage_fp": binary["fp"], "damage_fn": binary["fn"]}  # fmt: skip
    out.update({f"tp_{i}": int(v) for i, v in enumerate(tp)})
    out.update({f"fp_{i}": int(v) for i, v in enumerate(fp)})
    out.update({f"fn_{i}": int(v) for i, v in enumerate(fn)})
    return out


def group_rows(values: list, mats: list[np.ndarray], scheme: LabelScheme) -> list[dict]:
    """One summary per distinct value of a group column (in order of appearance), from summed matrices."""
    order = list(dict.fromkeys(values))
    out = []
    for value in order:
        members = [m for v, m in zip(values, mats, strict=True) if v == value]
        cm = ConfusionMatrix.from_numpy(np.sum(members, axis=0))
        out.append({"group": value, "n_images": len(members), **cm.summary(scheme)})
    return out


def write_outputs(paths: RunPaths, key: str, entry: dict, total: ConfusionMatrix, per_image: list[dict],
                  groups: list[str], scheme: LabelScheme) -> list[Path]:  # fmt: skip
    """metrics.json (merged), confusion matrix CSV + PNG, per_image.csv and groups.csv; all atomic."""
    existing = {}
    if paths.metrics.is_file():
        try:
            existing = read_json(paths.metrics)
        except ValueError:
            raise ValueError(
                f"{paths.metrics}: not valid JSON, so the other splits in it cannot be kept; move it away "
                "and run evaluate again"
            ) from None
    write_json(paths.metrics, {**existing, key: entry})
    names = scheme.names
    mat = total.to_numpy()
    cm_csv = paths.root / split_filename("confusion_matrix", key, ".csv")
    write_csv(cm_csv, [{"target \\ predicted": n, **dict(zip(names, map(int, r), strict=True))}
                       for n, r in zip(names, mat, strict=True)], ["target \\ predicted", *names])  # fmt: skip
    cm_png = paths.root / split_filename("confusion_matrix", key, ".png")
    save_confusion_matrix(mat, names, cm_png, title=f"{paths.root.name} — {key} (row-normalised, %)")
    per_csv = paths.root / split_filename("per_image", key, ".csv")
    c = scheme.num_classes
    fields = ["image", "image_path", *groups, "n_pixels", "damage_iou", "damage_tp", "damage_fp", "damage_fn",
              *[f"{k}_{i}" for k in ("tp", "fp", "fn") for i in range(c)]]  # fmt: skip
    write_csv(per_csv, per_image, fields)
    files = [paths.metrics, cm_csv, cm_png, per_csv]
    if groups:
        grp_csv = paths.root / split_filename("groups", key, ".csv")
        rows = [{"column": col, **{k: v for k, v in r.items() if k not in ("absent_classes", "note")}}
                for col in groups for r in entry["groups"][col]]  # fmt: skip
        write_csv(grp_csv, rows, ["column", "group", "n_images", *GROUP_METRICS, "n_pixels"])
        files.append(grp_csv)
    return files


def write_tuned(paths: RunPaths, hist: DamageHistogram, checkpoint: str, bundle, n_images: int,
                scheme: LabelScheme, console: Console) -> list[Path]:  # fmt: skip
    """--tune: thresholds.json and the val precision-recall curve."""
    best = hist.best()
    path = write_thresholds(paths.root, best, checkpoint=checkpoint, checkpoint_path=bundle.checkpoint_path,
                            epoch=bundle.epoch, split="val", n_images=n_images, scheme=scheme)  # fmt: skip
    figure = paths.root / "pr_curve_val.png"
    save_pr_curve(hist.curve(), best, figure, title=f"{paths.root.name} — val, damage vs clean")
    console.print(f"tuned on val: damage threshold {best['threshold']:.3f}, F1 {best['f1']:.4f} on val "
                  f"(at 0.5: {best['f1_at_0.5']:.4f}); score it on test: evaluate --split test")  # fmt: skip
    return [path, figure]


# ============================================================================================ terminal
def print_summary(console: Console, key: str, entry: dict, scheme: LabelScheme) -> None:
    s, det = entry["summary"], entry["image_detection"]
    table = Table(title=f"{key}: {entry['n_images']} images, {s['n_pixels']:,} pixels ({entry['checkpoint']}, "
                  f"epoch {entry['epoch']})")  # fmt: skip
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, value in [
        ("mIoU (classes present)", s["miou"]),
        ("damage mIoU (damage classes)", s["damage_miou"]),
        ("damage-vs-clean IoU", s["damage_iou"]),
        ("damage-vs-clean F1", s["damage_f1"]),
        ("pixel accuracy", s["pixel_accuracy"]),
        ("image-level detection precision", det["precision"]),
        ("image-level detection recall", det["recall"]),
    ]:
        table.add_row(label, fmt(value, ".4f"))
    console.print(table)
    classes = Table(title="per class")
    for col in ("class", "IoU", "Dice", "precision", "recall", "target px"):
        classes.add_column(col, justify="left" if col == "class" else "right")
    for r in entry["per_class"]:
        cells = [fmt(r[k], ".4f") for k in ("iou", "dice", "precision", "recall")]
        classes.add_row(r["name"], *cells, f"{r['support']:,}", style="dim" if math.isnan(r["iou"]) else None)
    console.print(classes)
    if s["absent_classes"]:
        console.print(f"absent classes (NaN, skipped in the means): {', '.join(s['absent_classes'])}")
    for col, rows in entry["groups"].items():
        gt = Table(title=f"by {col}")
        gt.add_column(col)
        gt.add_column("images", justify="right")
        for m in GROUP_METRICS:
            gt.add_column(m, justify="right")
        for r in rows:
            gt.add_row(str(r["group"]), str(r["n_images"]), *[fmt(r[m], ".4f") for m in GROUP_METRICS])
        console.print(gt)
    print_tolerant(console, entry)
    print_decisions(console, entry)
