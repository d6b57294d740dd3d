"""pseudo_label(teacher, inputs, out): a trained run labels unlabelled scans; its confident pixels become masks.

Per input image, the teacher's sliding-window probabilities (``tiling.iter_blended_rows``: memory bounded by
tile x width, the same blending as predict and evaluate) give, per pixel, the top class and its probability.
Pixels whose top probability is below ``threshold`` get 255 (ignore); the others their class index. The masks
are ordinary index PNGs (class index = pixel value, 255 = not confident): a person can correct them in any
editor, and ``OUT/labels.json`` is the scheme that reads them, so ``OUT/manifest.csv`` also works as a manifest
of its own (``train --manifest OUT/manifest.csv --labels OUT/labels.json``, once it has val rows).

OUT holds: ``pseudo.json`` (written first: it marks the folder as ours; teacher, checkpoint sha256, threshold,
label scheme, round), ``masks/<name>.png`` (mirroring the input folders, as predict does), ``records/<name>.json``
(one per finished mask, written after it: image, confident share, the mask's sha256), ``labels.json`` and
``manifest.csv`` (image, mask, split=train, source=pseudo, confident; rebuilt from the records at the end).
A mask counts as finished only when its record exists: every file is written to a temp name and renamed, so a
killed run leaves either nothing or a whole mask without a record (which carries our mark and is redone).
Nothing is written outside OUT; a file at a path we would write that we did not write is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from .console import escape, progress_bar
from .images import DEFAULT_MAX_PIXELS, TEMP_FILE, atomic_write_bytes, encode_image, read_image
from .labels import IGNORE_INDEX
from .models import ModelBundle, load_bundle
from .predict.inputs import Job, check_options, collect_inputs, plan_outputs
from .predict.owned import STALE_TEMP_SECONDS, carries_mark, marked
from .rundir import MARKERS, kind_of
from .runs import read_json, read_json_lenient, sha256_file, write_json, write_text
from .selftrain import WRITTEN_BY, index_scheme
from .system import resolve_amp, resolve_device
from .tiling import iter_blended_rows

MARK = b"written by damage-smp pseudo-label"
MARKER = MARKERS["pseudo"]  # pseudo.json
SCHEME_FILE = "labels.json"
SETTINGS_COMPARED = ("teacher", "checkpoint_sha256", "threshold", "tta", "tile", "overlap")


@dataclass
class PseudoResult:
    out: Path
    done: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    listed: int = 0  # rows of manifest.csv
    stale: int = 0  # masks made with other settings, not listed
    confident: float = float("nan")  # mean confident share of the listed masks
    seconds: float = 0.0


# ============================================================================================ the masks
def check_threshold(threshold: float) -> None:
    if not 0 < threshold < 1:
        raise ValueError(f"--threshold {threshold:g}: must be between 0 and 1 (both excluded), e.g. 0.9")


def confident_index(probs: torch.Tensor, threshold: float) -> np.ndarray:
    """(C, h, w) probabilities -> (h, w) uint8: the top class where its probability >= threshold, else 255."""
    index = probs.argmax(0).to(torch.uint8)
    index[probs.amax(0) < threshold] = IGNORE_INDEX
    return index.cpu().numpy()


def label_image(bundle: ModelBundle, image: np.ndarray, threshold: float, **tiling) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 pseudo mask (class index, 255 where not confident)."""
    device = next(bundle.model.parameters()).device
    out = np.empty(image.shape[:2], np.uint8)
    for y0, y1, x0, x1, probs in iter_blended_rows(
        bundle.model, image, bundle.scheme.num_classes, device=device, amp_dtype=resolve_amp(bundle.cfg.amp, device),
        **tiling,
    ):  # fmt: skip
        out[y0:y1, x0:x1] = confident_index(probs, threshold)
    return out


# ============================================================================================ the folder
@dataclass(frozen=True)
class Target:
    """One input and where its mask and record go."""

    source: Path
    mask: Path
    record: Path


def plan(inputs, out: Path) -> list[Target]:
    jobs: list[Job] = plan_outputs(collect_inputs(inputs, exclude=out), out / "masks")
    targets = []
    for job in jobs:
        rel = job.base.relative_to(out / "masks")
        mask = job.base.with_name(job.base.name + ".png")
        targets.append(Target(job.source, mask, (out / "records" / rel).with_name(rel.name + ".json")))
    return targets


def read_records(out: Path) -> dict[str, dict]:
    """Image path -> its record, for every record of ours under OUT/records."""
    found = {}
    for path in sorted((out / "records").rglob("*.json")) if (out / "records").is_dir() else []:
        data, _ = read_json_lenient(path)
        if data and data.get("written_by") == WRITTEN_BY and isinstance(data.get("image"), str):
            found[data["image"]] = {**data, "_record": str(path), "_mask": out / str(data.get("mask"))}
    return found


def is_finished(target: Target, records: dict[str, dict]) -> bool:
    """This image has a record, and its mask exists."""
    record = records.get(str(target.source))
    return record is not None and target.mask == record["_mask"] and target.mask.is_file()


def keep_names(out: Path, targets: list[Target], records: dict[str, dict]) -> list[Target]:
    """An image labelled before keeps its mask's name, even when other INPUTS moved the planned one."""
    kept = []
    for t in targets:
        r = records.get(str(t.source))
        kept.append(Target(t.source, r["_mask"], Path(r["_record"])) if r else t)
    return kept


def check_out(out: Path, targets: list[Target], records: dict[str, dict]) -> None:
    """Refuse a file as OUT, a folder of someone else's, or files at our paths that are not ours."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; give a folder for the pseudo masks (it is created if missing)")
    if out.is_dir() and any(out.iterdir()) and kind_of(out) != "pseudo":
        raise FileExistsError(
            f"--out {out}: exists and was not made by damage-smp pseudo-label (no {MARKER}); give a new or empty folder"
        )
    owner = {r["_record"]: image for image, r in records.items()}
    for t in targets:
        if is_finished(t, records):
            continue
        other = owner.get(str(t.record))
        if other is not None and other != str(t.source):
            raise FileExistsError(
                f"{t.mask}: already holds the pseudo mask of {other}; give the same INPUTS as before or another --out"
            )
        if t.mask.is_file() and t.mask.stat().st_size and not carries_mark(t.mask, MARK):
            raise FileExistsError(f"{t.mask}: exists and was not written by damage-smp pseudo-label; move it away")


def check_settings(out: Path, settings: dict, overwrite: bool, records: dict[str, dict]) -> None:
    """Masks of another teacher, checkpoint or threshold never mix into one folder (unless --overwrite)."""
    old, _ = read_json_lenient(out / MARKER)
    if not old or old.get("written_by") != WRITTEN_BY:
        return
    diffs = [f"{k} {old.get(k)!r} -> {settings[k]!r}" for k in SETTINGS_COMPARED if old.get(k) != settings[k]]
    if diffs and not overwrite:
        raise ValueError(
            f"{out}: holds pseudo masks made differently ({'; '.join(diffs)}); use another --out, or --overwrite "
            "to redo them"
        )
    if overwrite:
        masks = [out / r["mask"] for r in records.values()]
        edited = [
            m for m, r in zip(masks, records.values(), strict=True) if m.is_file() and sha256_file(m) != r["sha256"]
        ]
        if edited:
            raise FileExistsError(
                f"{edited[0]}: was edited after pseudo-label wrote it ({len(edited)} such mask(s)); --overwrite never "
                "replaces a person's corrections: use another --out, or move the edited masks away"
            )


def settings_of(teacher: Path, bundle: ModelBundle, checkpoint: str, threshold: float, **tiling) -> dict:
    """pseudo.json: what made the masks, the teacher's label scheme and settings, and its self-training round."""
    teacher_config = read_json(teacher / MARKERS["run"])
    teacher_round = int((teacher_config.get("self_training") or {}).get("round", 0))
    return {
        "written_by": WRITTEN_BY,
        "teacher": str(teacher.resolve()),
        "teacher_name": teacher.resolve().name,
        "checkpoint": checkpoint,
        "checkpoint_path": str(bundle.checkpoint_path),
        "checkpoint_sha256": sha256_file(bundle.checkpoint_path),
        "epoch": bundle.epoch,
        "threshold": threshold,
        **tiling,
        "label_scheme": bundle.scheme.to_dict(),
        "mask_scheme": SCHEME_FILE,
        "teacher_round": teacher_round,
        "round": teacher_round + 1,
        "teacher_config": bundle.cfg.to_dict(),
    }


def remove_stale_temps(out: Path) -> None:
    """Temp files of our atomic writes under masks/ and records/ that a kill left (old enough not to be live)."""
    for folder in (out / "masks", out / "records"):
        for path in folder.rglob(".*.tmp") if folder.is_dir() else []:
            if TEMP_FILE.match(path.name) and path.is_file() and not path.is_symlink():
                if time.time() - path.stat().st_mtime > STALE_TEMP_SECONDS:
                    path.unlink(missing_ok=True)


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps([settings[k] for k in SETTINGS_COMPARED]).encode()).hexdigest()[:16]


# ============================================================================================ entry point
def pseudo_label(
    teacher: str | Path,
    inputs,
    out: str | Path,
    *,
    threshold: float = 0.9,
    tta: bool = False,
    checkpoint: str = "best",
    tile: int | None = None,
    overlap: float = 0.5,
    batch_size: int = 4,
    device: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    console: Console | None = None,
) -> PseudoResult:
    """Label every input image with the teacher run's model into ``out``; finished images are skipped.

    ``inputs``: image files, folders, glob patterns or CSVs with an image column (as predict takes them).
    An image that cannot be read is listed in ``failures``; the others are all labelled.
    """
    console = console or Console()
    start = time.perf_counter()
    check_threshold(threshold)
    teacher, out = Path(teacher), Path(out)
    records = read_records(out)
    targets = keep_names(out, plan(inputs, out), records)
    check_out(out, targets, records)
    bundle = load_bundle(teacher, checkpoint, resolve_device(device))
    tiling = {"tile": tile or bundle.cfg.tile, "overlap": overlap, "tta": tta}
    check_options(tiling["tile"], overlap, batch_size, 1, max_pixels)
    settings = settings_of(teacher, bundle, checkpoint, threshold, **tiling)
    check_settings(out, settings, overwrite, records)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / MARKER, {**settings, "status": "running"})  # first: the folder is ours from here on
    write_json(out / SCHEME_FILE, index_scheme(bundle.scheme).to_dict())
    remove_stale_temps(out)

    key = settings_key(settings)
    todo = [
        t for t in targets if overwrite or not is_finished(t, records) or records[str(t.source)].get("settings") != key
    ]
    result = PseudoResult(out, skipped=len(targets) - len(todo))
    console.print(
        f"pseudo-labelling {len(todo)} image(s) with {escape(teacher)} ({checkpoint}, epoch {bundle.epoch}, "
        f"threshold {threshold:g}{', tta' if tta else ''}); {result.skipped} already finished"
    )
    label_all(out, bundle, todo, threshold, dict(tiling, batch_size=batch_size), max_pixels, key, result, console)
    write_manifest(out, read_records(out), key, result)
    write_json(out / MARKER, {**settings, "status": "finished", "images": result.listed,
                              "confident": result.confident})  # fmt: skip
    result.seconds = time.perf_counter() - start
    return result


def label_all(out: Path, bundle, todo: list[Target], threshold: float, tiling: dict, max_pixels: int, key: str,
              result: PseudoResult, console: Console) -> None:  # fmt: skip
    """Decode the next image in a thread while this one is labelled; each mask, then its record, lands whole."""
    with ThreadPoolExecutor(1, "damage-smp-read") as reader, progress_bar(console, transient=False) as bar:
        task = bar.add_task("pseudo-labelling", total=len(todo))
        ahead = reader.submit(read_image, todo[0].source, max_pixels) if todo else None
        for i, target in enumerate(todo):
            current = ahead
            ahead = reader.submit(read_image, todo[i + 1].source, max_pixels) if i + 1 < len(todo) else None
            try:
                index = label_image(bundle, current.result(), threshold, **tiling)
                write_mask(out, target, index, key)
                result.done += 1
            except (ValueError, OSError) as e:  # unreadable or not an image: report it, go on
                result.failures.append((str(target.source), str(e) or type(e).__name__))
            bar.advance(task)


def write_mask(out: Path, target: Target, index: np.ndarray, key: str) -> None:
    """The mask (marked as ours), then its record: a mask without a record is never taken for finished."""
    data = marked(encode_image(index, ".png"), ".png", MARK)
    atomic_write_bytes(target.mask, data)
    valid = index != IGNORE_INDEX
    record = {
        "written_by": WRITTEN_BY,
        "image": str(target.source),
        "mask": target.mask.relative_to(out).as_posix(),
        "width": int(index.shape[1]),
        "height": int(index.shape[0]),
        "confident": float(valid.mean()),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "settings": key,
    }
    write_json(target.record, record)


def write_manifest(out: Path, records: dict[str, dict], key: str, result: PseudoResult) -> None:
    """manifest.csv from the records of the current settings whose mask exists (paths relative to OUT)."""
    rows, shares = ["image,mask,split,source,confident"], []
    for image, r in sorted(records.items()):
        if r.get("settings") != key:
            result.stale += 1
            continue
        if not (out / r["mask"]).is_file():
            continue
        rows.append(f"{_csv(_relative(image, out))},{_csv(r['mask'])},train,pseudo,"
                    f"{r['confident']:.4f}")  # fmt: skip
        shares.append(r["confident"])
    write_text(out / "manifest.csv", "\n".join(rows) + "\n")
    result.listed = len(shares)
    result.confident = float(np.mean(shares)) if shares else float("nan")


def _relative(path: str, folder: Path) -> str:
    return Path(os.path.relpath(path, os.path.abspath(folder))).as_posix()


def _csv(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def print_result(result: PseudoResult, console: Console) -> None:
    console.print(
        f"labelled {result.done}, skipped {result.skipped} finished, failed {len(result.failures)} in "
        f"{result.seconds:.0f}s -> {escape(result.out)}; manifest.csv lists {result.listed} image(s), "
        f"{100 * result.confident:.1f}% of their pixels confident"
    )
    if result.stale:
        console.print(f"[yellow]{result.stale} mask(s) made with other settings are not listed[/]")
    for path, error in result.failures:
        console.print(f"  [red]{escape(error if error.startswith(path) else f'{path}: {error}')}[/]", soft_wrap=True)
