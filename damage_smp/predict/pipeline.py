"""predict(): check the inputs and the output folder, load the model (while the first scan decodes), run the
batch's stages (``stages``), write the tables.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from rich.console import Console

from ..cleanup import parse_min_area
from ..console import escape
from ..images import DEFAULT_MAX_PIXELS, read_image, write_image
from ..models import checkpoint_file, load_bundle
from ..plots import legend_image
from ..runs import read_json, sha256_file, write_json
from ..system import resolve_device
from ..thresholds import FILE as THRESHOLDS_FILE
from ..thresholds import Decision, resolve_decision
from .backend import ExportedModel, check_backend, is_exported_model, load_exported, tile_model
from .inputs import (
    SAVE_KINDS,
    Job,
    check_options,
    collect_inputs,
    effective_shard,
    parse_save,
    plan_outputs,
)
from .lanes import lane_count
from .outputs import PredictResult, batch_tables, merge_areas, write_tables
from .owned import check_nothing_foreign, clean_stale_temps, is_finished, predict_json_is_ours, read_record
from .stages import Loaded, Pipeline

SETTINGS_COMPARED = ("run_dir", "checkpoint", "epoch", "tile", "overlap", "tta", "decision", "threshold", "min_area")
SETTINGS_DEFAULTS = {"decision": "argmax", "min_area": {}}  # what a predict.json without the key was made with


def predict(
    run_dir: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    checkpoint: str = "best",
    tile: int = 512,
    overlap: float = 0.5,
    batch_size: int = 4,
    tta: bool = False,
    device: str = "auto",
    save: Iterable[str] | str = SAVE_KINDS,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 2,
    backend: str | None = None,
    decision: str = "auto",
    min_area: str | int | dict | None = None,
    dpi: float | None = None,
    console: Console | None = None,
    lanes: int | None = None,
) -> PredictResult:
    """Predict every input image with a run's model and write masks, overlays and areas under ``out``.

    ``inputs``: image files, folders (searched recursively), glob patterns or manifest CSVs (their image
    column). ``shard=(K, N)``, K counting from 1, takes every N-th image of the sorted inputs; under
    ``torchrun`` each rank takes its share of that. Finished images are skipped unless ``overwrite``.
    An image that cannot be read or predicted is listed in ``failures``; the others are all processed.
    ``backend``: ``torch``, or ``onnxruntime`` (CPU; the same tiles through an ONNX Runtime session); None picks
    torch for a run dir. ``run_dir`` may also be an exported ``MODEL.onnx`` with its sidecar ``MODEL.onnx.json``.
    ``decision``: tuned (the run's thresholds.json), argmax, or auto (tuned when the run has one); ``min_area``:
    remove smaller damage (px, or {class: px}; ``cleanup``); ``dpi``: for the mm² of areas.csv (default: the file's).
    ``lanes``: one-tile images predicted at once, each on its share of the threads (default 2 on a CPU with the
    PyTorch backend, else 1; ``predict.lanes``); other thread counts round differently (~7 pixels in a million).
    """
    console, start, kinds = console or Console(), time.perf_counter(), parse_save(save)
    check_options(tile, overlap, batch_size, workers, max_pixels, dpi)
    k, n = effective_shard(shard)
    out = Path(out)
    mine = plan_outputs(collect_inputs(inputs, exclude=out), out)[k - 1 :: n]
    records = _check_out(out, mine, kinds, k, n)  # before the model is even loaded
    todo = [j for j, r in zip(mine, records, strict=True) if overwrite or not is_finished(j, r, kinds)]
    first, (bundle, backend, dev), rule = _load_while_reading(todo, max_pixels, decision, run_dir, checkpoint,
                                                              backend, device)  # fmt: skip
    sizes = parse_min_area(min_area, bundle.scheme)
    settings = _settings(run_dir, checkpoint, bundle, rule, sizes, tile=tile, overlap=overlap, tta=tta, backend=backend)
    _prepare_out(out, settings, bundle, overwrite, k, n)
    clean_stale_temps({out, *(j.base.parent for j in mine)})

    n_skipped = len(mine) - len(todo)
    model_text = f"{escape(run_dir)} ({checkpoint}, epoch {bundle.epoch}) on {dev} ({backend}), {_rule_text(rule)}"
    _announce(console, len(todo), n_skipped, (k, n), model_text, overwrite)
    options = dict(tile=tile, overlap=overlap, batch_size=batch_size, tta=tta, model=tile_model(bundle, backend),
                   decision=rule)  # fmt: skip
    lanes = lane_count(dev, backend) if lanes is None else lanes
    pipeline = Pipeline(bundle, kinds, overwrite, max_pixels, workers, options, sizes, first=first, lanes=lanes)
    n_done, failures = pipeline.run(todo, console, show_progress=int(os.environ.get("RANK", "0")) == 0)
    tables = write_tables(out, mine, failures, bundle.scheme, k, n, dpi)
    return _merged_if_last(PredictResult(n_done, n_skipped, failures, out, tables), k, n, console, start)


def _merged_if_last(result: PredictResult, k: int, n: int, console: Console, start: float) -> PredictResult:
    """The last shard to finish (every shard's table is there) joins the tables, as --merge-areas would."""
    every_shard = n > 1 and all(batch_tables(result.out, i, n)[0].is_file() for i in range(1, n + 1))
    result.merged = every_shard and _merge(result.out, console)
    result.seconds = time.perf_counter() - start
    return result


def _load_while_reading(todo: list[Job], max_pixels: int, decision: str, *model_args) -> tuple:
    """-> (the first job's image being read, ``load_model(*model_args)``, the ``--decision`` rule).

    The first scan decodes, and the checkpoint is hashed for its thresholds.json (~20 ms for 21 MB; hashlib lets
    go of the GIL), while the model is built and loaded; an error in loading is reported at once, not after a
    big scan's decode."""
    early = ThreadPoolExecutor(2, "damage-smp-early")
    try:
        first = early.submit(read_image, todo[0].source, max_pixels) if todo else None
        hashing = early.submit(_tuned_checkpoint_digest, *model_args[:2]) if decision != "argmax" else None
        bundle, backend, dev = load_model(*model_args)
        exported = bundle.sidecar if isinstance(bundle, ExportedModel) else None
        rule = resolve_decision(Path(model_args[0]), decision, bundle.scheme, bundle.checkpoint_path,
                                exported=exported, digest=_result_or_none(hashing))  # fmt: skip
        return first, (bundle, backend, dev), rule
    finally:
        early.shutdown(wait=False)


def _tuned_checkpoint_digest(run_dir: str | Path, checkpoint: str) -> str | None:
    """sha256 of the checkpoint a run dir's thresholds.json is checked against; None where there is none."""
    if is_exported_model(run_dir) or not (Path(run_dir) / THRESHOLDS_FILE).is_file():
        return None
    return sha256_file(checkpoint_file(run_dir, checkpoint))


def _result_or_none(fut: Future | None):
    """A future's result, or None when there is none or it failed (whoever needs it then does the work itself)."""
    try:
        return fut.result() if fut is not None else None
    except Exception:  # noqa: BLE001 - e.g. a missing checkpoint, which the model load has reported already
        return None


def load_model(run_dir: str | Path, checkpoint: str, backend: str | None, device: str):
    """-> (bundle, backend, device): a run dir's checkpoint (backend torch unless given), or an exported ONNX
    file with its sidecar (``predict MODEL.onnx``: backend onnxruntime, on the CPU)."""
    if is_exported_model(run_dir):
        if backend not in (None, "onnxruntime"):
            raise ValueError(f"{run_dir}: an ONNX file runs on --backend onnxruntime; drop --backend {backend}")
        check_backend("onnxruntime", device)
        if checkpoint != "best":
            raise ValueError(f"--checkpoint {checkpoint}: only for a run dir; {run_dir} is one exported model")
        exported = load_exported(run_dir)
        return exported, "onnxruntime", exported.device
    backend = backend or "torch"
    dev = device_for_rank(check_backend(backend, device))
    return load_bundle(run_dir, checkpoint, dev), backend, dev


def _settings(run_dir: str | Path, checkpoint: str, bundle: Loaded, rule: Decision, sizes: dict, **tiling) -> dict:
    """predict.json: what made these predictions (a later batch into the same folder must match its
    SETTINGS_COMPARED; not the backend, which gives the same masks, so a batch may resume on the other one)."""
    return {
        "run_dir": str(Path(run_dir).resolve()),
        "checkpoint": checkpoint,
        "checkpoint_path": str(bundle.checkpoint_path),
        "epoch": bundle.epoch,
        **tiling,
        "decision": rule.kind,
        "threshold": rule.threshold,
        "min_area": {bundle.scheme.names[c]: px for c, px in sizes.items()},
        "label_scheme": bundle.scheme.to_dict(),
    }


def _check_out(out: Path, jobs: list[Job], kinds: Sequence[str], k: int, n: int) -> list[dict | None]:
    """Refuse a file as --out, or files there that predict would write but did not -> each job's record."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; give a folder for the masks (it is created if missing)")
    records = [read_record(j) for j in jobs]
    check_nothing_foreign(out, jobs, records, kinds, batch_tables(out, k, n))
    return records


def _prepare_out(out: Path, settings: dict, bundle: Loaded, overwrite: bool, k: int, n: int) -> None:
    """Create ``out``, refusing predictions made differently; shard 1 writes the batch-wide files
    (so shards never write the same file); a shard's stale areas table goes, so no merge ever joins it."""
    check_previous_settings(out, settings, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    if k == 1:
        write_json(out / "predict.json", settings)
        legend = out / "legend.png"
        if overwrite or not legend.is_file() or legend.stat().st_size == 0:
            write_image(legend, legend_image(bundle.scheme))
    if n > 1:
        batch_tables(out, k, n)[0].unlink(missing_ok=True)  # rebuilt when this shard is done


def _merge(out: Path, console: Console) -> bool:
    """Every shard is done (this one last): join the tables, as --merge-areas would. -> merged?"""
    try:
        merge_areas(out)
        return True
    except ValueError as e:  # e.g. stale tables of another N: this shard's own work is still done
        console.print(f"[yellow]not merged:[/] {escape(e)}")
        return False


def _announce(console: Console, n_todo: int, n_skipped: int, shard: tuple[int, int], model: str, overwrite: bool):
    where = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    console.print(
        f"predicting {n_todo} image(s){where} with {model}; {n_skipped} already finished"
        + ("" if overwrite else " (--overwrite redoes them)")
    )


def _rule_text(rule: Decision) -> str:
    return f"damage threshold {rule.threshold:.3f} from thresholds.json" if rule.kind == "tuned" else "argmax"


def device_for_rank(name: str) -> torch.device:
    """--device, and under torchrun on CUDA the GPU of this rank (cuda:LOCAL_RANK)."""
    device = torch.device(resolve_device(name))
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # so cuDNN workspaces and autocast live on this rank's GPU
    return device


def check_previous_settings(out: Path, settings: dict, overwrite: bool) -> None:
    """Refuse to mix predictions of another run, checkpoint or tiling into one output folder."""
    if overwrite or not predict_json_is_ours(out):  # an empty predict.json (nothing to compare) is replaced
        return
    old = read_json(out / "predict.json")
    was = {k: old.get(k, SETTINGS_DEFAULTS.get(k)) for k in SETTINGS_COMPARED}
    diffs = [f"{k} {was[k]!r} -> {settings[k]!r}" for k in SETTINGS_COMPARED if was[k] != settings[k]]
    if diffs:
        raise ValueError(
            f"{out}: holds predictions made differently ({'; '.join(diffs)}); "
            "use another --out, or --overwrite to redo these images"
        )
