"""The damage-smp command line: options -> config/paths -> one library call per command.

User errors (ValueError, FileNotFoundError, OSError, ...) become one red line and exit code 1; set
DAMAGE_SMP_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .console import describe_os_error, escape

app = typer.Typer(
    name="damage-smp",
    help="Find and name damage in images of analogue media, pixel by pixel (segmentation_models_pytorch).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
manifest_app = typer.Typer(help="Build, check and split data manifests (image,mask,split CSVs).", no_args_is_help=True)
app.add_typer(manifest_app, name="manifest")

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
console = Console(highlight=False)

LabelsOpt = Annotated[
    str, typer.Option("--labels", help="Label scheme: artefact, artefact-binary, binary, or a JSON file.")
]
MaxPixelsOpt = Annotated[
    int,
    typer.Option("--max-pixels", help="Refuse images above this many pixels (decompression-bomb guard)."),
]
ARTEFACT_INPUTS_HELP = "ARTeFACT .parquet shards, or folders holding them (searched recursively)."
SOURCE_HELP = "A predict --out folder (gallery), or a run dir / folder of runs (study page)."


class UserError(Exception):
    """An expected problem with the user's input; its message says what to do."""


OS_ERROR_TYPES = (OSError, FileExistsError, PermissionError, NotADirectoryError, IsADirectoryError, FileNotFoundError)
USER_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OSError)


def fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    return typer.Exit(1)


def user_errors(fn):
    """Turn expected exceptions into one clear line and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            raise fail("interrupted (Ctrl-C); a training run can continue with --resume RUN_DIR") from None
        except USER_ERRORS as e:
            if os.environ.get("DAMAGE_SMP_DEBUG"):
                raise
            text = describe_os_error(e) if type(e) in OS_ERROR_TYPES else str(e)
            raise fail(escape(text) or type(e).__name__) from None

    return wrapper


@app.callback()
def _main() -> None:
    """damage-smp: damage segmentation for scans of photographs, film, paintings and manuscripts."""


# ============================================================================================ synth
@app.command()
@user_errors
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write images/, masks/ and manifest.csv into.")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 48,
    size: Annotated[str, typer.Option("--size", help="WIDTHxHEIGHT of every image.")] = "512x384",
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same bytes.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty folder.")] = False,
    root_manifest: Annotated[
        Path | None,
        typer.Option(
            "--root-manifest", help="Also write this manifest, paths relative to its folder (e.g. data_manifest.csv)."
        ),
    ] = None,
) -> None:
    """Write a synthetic damaged-media sample (photo, film, paper, parchment, canvas) with exact artefact masks."""
    from .synth import parse_size
    from .synth import synth as make_sample

    manifest = make_sample(
        out_dir, n=n, size=parse_size(size), seed=seed, overwrite=overwrite, root_manifest=root_manifest
    )
    extra = f" and {escape(str(root_manifest))}" if root_manifest else ""
    console.print(f"wrote {n} images and masks; manifest: {escape(str(manifest))}{extra}", soft_wrap=True)
    console.print(f"next: damage-smp manifest check {escape(str(manifest))}", soft_wrap=True)


# ============================================================================================ manifest
GroupLeaveOutOpt = Annotated[
    str | None,
    typer.Option("--leave-out", help="Hold this group out entirely as test: VALUE or COLUMN=VALUE."),
]


@manifest_app.command("build")
@user_errors
def manifest_build(
    images: Annotated[Path, typer.Option("--images", help="Folder of images (subfolders included).")],
    masks: Annotated[
        Path, typer.Option("--masks", help="Folder of masks named after their images (suffixes like _mask are fine).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Manifest CSV to write; its paths are relative to its folder.")],
    labels: LabelsOpt = "artefact",
    val: Annotated[float, typer.Option(help="Fraction of images for validation.")] = 0.15,
    test: Annotated[float, typer.Option(help="Fraction of images for test.")] = 0.15,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    group_by: Annotated[
        str | None,
        typer.Option(
            "--group-by",
            help="Regex searched in each image's path (relative, no extension); its first group names the image's "
            "group, and no group spans two splits. E.g. '^([^/]+)/' (subfolder) or '(.+)_\\d+$' (stem prefix).",
        ),
    ] = None,
    leave_out: GroupLeaveOutOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing CSV.")] = False,
    max_pixels: MaxPixelsOpt = 200_000_000,
) -> None:
    """Pair images with masks by name, split them (at random or by group) and write a manifest CSV."""
    from .labels import load_scheme
    from .manifest import build_manifest, summarize

    df = build_manifest(
        images, masks, out, load_scheme(labels), val=val, test=test, seed=seed, group_by=group_by,
        leave_out=leave_out, overwrite=overwrite, max_pixels=max_pixels,
    )  # fmt: skip
    for warning in df.attrs.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    console.print(f"wrote {escape(str(out))}: {len(df)} pairs; {summarize(df)}", soft_wrap=True)
    console.print(f"next: damage-smp manifest check {escape(str(out))} --labels {escape(labels)}", soft_wrap=True)


@manifest_app.command("check")
@user_errors
def manifest_check(
    csv: Annotated[Path, typer.Argument(help="Manifest CSV (image,mask,split[,group columns]).")],
    labels: LabelsOpt = "artefact",
    max_pixels: MaxPixelsOpt = 200_000_000,
) -> None:
    """Audit every row: files, sizes, mask values, duplicates, splits and class pixel shares. Exit 1 on errors."""
    from .labels import load_scheme
    from .manifest import audit_manifest, print_audit

    report = audit_manifest(csv, load_scheme(labels), max_pixels=max_pixels)
    print_audit(report, console)
    if report.errors:
        raise typer.Exit(1)


@manifest_app.command("split")
@user_errors
def manifest_split(
    csv: Annotated[Path, typer.Argument(help="Manifest CSV to re-split (it is not modified).")],
    out: Annotated[Path, typer.Option("--out", help="New manifest CSV; with --folds, a folder for fold-*.csv.")],
    by: Annotated[
        str | None, typer.Option("--by", help="Group column: no value of it spans two splits (e.g. material).")
    ] = None,
    val: Annotated[float, typer.Option(help="Fraction of images for val (of the rest with --leave-out).")] = 0.15,
    test: Annotated[float, typer.Option(help="Fraction of images for test (unused with --leave-out/--folds).")] = 0.15,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    leave_out: GroupLeaveOutOpt = None,
    folds: Annotated[
        bool, typer.Option("--folds", help="Leave-one-group-out: one manifest per value of --by, held out as test.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
) -> None:
    """Re-split a manifest: random, grouped (--by), one group held out (--leave-out), or all folds (--folds)."""
    from .manifest import split_manifest, summarize

    written = split_manifest(
        csv, out, by=by, val=val, test=test, seed=seed, leave_out=leave_out, folds=folds, overwrite=overwrite
    )
    for df in written:
        for warning in df.attrs.get("warnings", []):
            console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
        console.print(f"wrote {escape(df.attrs['manifest'])}: {summarize(df)}", soft_wrap=True)


# ============================================================================================ train
def train_options(fn):
    """Give ``fn`` one option per TrainConfig field: name, type, help (the field's docstring) and flag from the field.

    Every option defaults to None ("not given"), so a --config file's value is used unless the flag is given;
    the field's own default is shown in --help and docs/cli.md.
    """
    import dataclasses
    import inspect
    import typing

    from .config import TrainConfig, field_docs, field_types

    docs, hints = field_docs(), field_types()
    params = []
    for f in dataclasses.fields(TrainConfig):
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        shown = f.default if f.default is not None else False
        option = typer.Option(flag, help=docs[f.name], show_default=str(shown) if shown is not False else False)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[hints[f.name] | None, option]))  # fmt: skip
    own_hints = typing.get_type_hints(fn, include_extras=True)
    own = [p.replace(annotation=own_hints[p.name]) for p in inspect.signature(fn).parameters.values()
           if p.kind != inspect.Parameter.VAR_KEYWORD]  # fmt: skip
    fn.__signature__ = inspect.Signature(own + params)
    fn.__annotations__ = {p.name: p.annotation for p in own + params}  # Typer reads both
    return fn


@app.command(rich_help_panel="Training")
@user_errors
@train_options
def train(
    config: Annotated[Path | None, typer.Option(help="JSON or TOML file of settings; flags override it.")] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue this run dir up to --epochs in total (only settings marked resumable "
            "may change: --epochs, --device, --num-workers, --patience, --compile, --tensorboard)."
        ),
    ] = None,
    **settings,
) -> None:
    """Train an smp model with Dice+CE on a manifest; writes a self-describing run directory."""
    from .config import TrainConfig, read_config_file
    from .runs import resumed_config
    from .train import train as run_training

    given = {name: value for name, value in settings.items() if value is not None}
    if resume is not None:
        cfg = resumed_config(resume, given)
    else:
        file_settings = read_config_file(config) if config else {}
        cfg = TrainConfig.from_dict({**file_settings, **given}, source=f"--config {config}" if config else "flags")
    run_dir = run_training(cfg, resume=resume, console=console)
    console.print(f"run directory: [bold]{escape(str(run_dir))}[/]")


# ============================================================================================ evaluate
@app.command(rich_help_panel="Results")
@user_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="Run directory made by `damage-smp train`.")],
    split: Annotated[str, typer.Option(help="Split to evaluate: test, val or train.")] = "test",
    manifest: Annotated[
        Path | None, typer.Option(help="Evaluate on another manifest (default: the run's training manifest).")
    ] = None,
    checkpoint: Annotated[str, typer.Option(help="best or last (checkpoints/NAME.pt).")] = "best",
    tta: Annotated[bool, typer.Option("--tta", help="Test-time augmentation: average 4 flips (4x slower).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    tile: Annotated[int | None, typer.Option(help="Sliding-window tile size (default: the run's).")] = None,
    overlap: Annotated[float | None, typer.Option(help="Sliding-window overlap 0..<1 (default: the run's).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Tiles per forward pass (default: the run's).")] = None,
    max_pixels: Annotated[
        int | None, typer.Option("--max-pixels", help="Refuse images above this many pixels (default: the run's).")
    ] = None,
) -> None:
    """Score a run on every whole image of a split: metrics.json, confusion matrix, per-image and per-group tables."""
    from .evaluate import evaluate as run_evaluate

    run_evaluate(run_dir, split=split, manifest=manifest, checkpoint=checkpoint, tta=tta, device=device, tile=tile,
                 overlap=overlap, batch_size=batch_size, max_pixels=max_pixels, console=console)  # fmt: skip


# ============================================================================================ compare
@app.command(rich_help_panel="Results")
@user_errors
def compare(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="An experiments folder (runs found 3 levels deep) or run directories.")
    ] = None,
    baseline: Annotated[
        str, typer.Option(help="auto (weights none, same arch/encoder/fraction) or a RUN name.")
    ] = "auto",
    metric: Annotated[
        str, typer.Option(help="damage_miou, miou, damage_iou, damage_f1, pixel_accuracy, ...")
    ] = "damage_miou",
    split: Annotated[str, typer.Option(help="Split key evaluated (test, val, or test@MANIFEST_STEM).")] = "test",
    out: Annotated[
        Path | None, typer.Option(help="Folder for compare.md/.csv and plots (default EXPERIMENTS/compare).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier comparison in that folder.")
    ] = False,
) -> None:
    """Compare runs: one row each, seeds grouped as mean ± std, Δ and bootstrap 95% CI against the scratch baseline."""
    from .compare import compare as run_compare

    run_compare(paths or [Path("experiments")], baseline=baseline, metric=metric, split=split, out=out,
                console=console, overwrite=overwrite)  # fmt: skip


# ============================================================================================ predict
@app.command(rich_help_panel="Using a model")
@user_errors
def predict(
    run_dir: Annotated[Path | None, typer.Argument(help="Run directory made by train.", show_default=False)] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Argument(help="Image files, folders (recursive), glob patterns or manifest CSVs.", show_default=False),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (masks, overlays, areas.csv).")] = None,
    checkpoint: Annotated[str, typer.Option(help="best, last, or a checkpoint name/path.")] = "best",
    tile: Annotated[int, typer.Option(help="Sliding-window tile size in pixels (multiple of 32).")] = 512,
    overlap: Annotated[float, typer.Option(help="Tile overlap fraction, 0 <= F < 1.")] = 0.5,
    batch_size: Annotated[int, typer.Option(help="Tiles per forward pass.")] = 4,
    tta: Annotated[bool, typer.Option("--tta", help="Average 4 flips (4x slower).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    backend: Annotated[str, typer.Option(help="torch, or onnxruntime (CPU; the [onnx] extra).")] = "torch",
    save: Annotated[str, typer.Option(help="Comma list of outputs: colour,index,overlay.")] = "colour,index,overlay",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo images whose outputs exist.")] = False,
    shard: Annotated[
        str | None, typer.Option(help="K/N: predict every N-th input from the K-th (K counts from 1).")
    ] = None,
    max_pixels: MaxPixelsOpt = 200_000_000,
    workers: Annotated[int, typer.Option(help="Decode threads and write threads (each).")] = 2,
    merge_areas: Annotated[
        Path | None,
        typer.Option("--merge-areas", help="Only join the per-shard area tables of this --out folder."),
    ] = None,
) -> None:
    """Predict damage masks, overlays and areas.csv for images of any size; finished images are skipped.

    Exit code 1 when an input failed (listed at the end and in failures.csv); the others are all written.
    """
    from . import predict as prediction

    if merge_areas is not None:
        if run_dir is not None or inputs:
            raise UserError("--merge-areas DIR works alone; drop RUN_DIR and INPUTS (or drop --merge-areas)")
        path, n = prediction.merge_areas(merge_areas)
        console.print(f"merged the areas of {n} image(s) into [bold]{escape(str(path))}[/]")
        return
    if run_dir is None or not inputs or out is None:
        raise UserError("give RUN_DIR, one or more INPUTS and --out DIR (or --merge-areas DIR)")
    try:
        result = prediction.predict(
            run_dir, inputs, out, checkpoint=checkpoint, tile=tile, overlap=overlap, batch_size=batch_size,
            tta=tta, device=device, save=save, overwrite=overwrite, max_pixels=max_pixels, workers=workers,
            shard=prediction.parse_shard(shard) if shard else None, backend=backend, console=console,
        )  # fmt: skip
    except KeyboardInterrupt:
        again = "run the same command again to continue (finished images are skipped)"
        raise UserError(f"interrupted (Ctrl-C); {again}") from None
    prediction.print_result(result, console)
    if result.failures:
        raise typer.Exit(1)


# ============================================================================================ import-artefact
@app.command("import-artefact", rich_help_panel="Data")
@user_errors
def import_artefact(
    inputs: Annotated[list[Path], typer.Argument(metavar="PARQUET_FILES_OR_DIR", help=ARTEFACT_INPUTS_HELP)],
    out: Annotated[Path, typer.Option("--out", help="Folder for images/, masks/ and manifest.csv.")],
    max_side: Annotated[
        int | None, typer.Option("--max-side", help="Downscale so the longer side is at most N pixels.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the provisional random 70/15/15 split.")] = 0,
    max_pixels: Annotated[
        int | None, typer.Option("--max-pixels", help="Refuse scans above this many pixels (default 200 MP).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Re-import every row (and write into a non-empty folder).")
    ] = False,
) -> None:
    """Import ARTeFACT from its Hugging Face parquet shards: images, index masks and a grouped manifest.

    Re-running the same command continues an interrupted import (finished rows are skipped).
    """
    from .artefact import import_artefact as run_import

    run_import(inputs, out, max_side=max_side, overwrite=overwrite, max_pixels=max_pixels, seed=seed)


# ============================================================================================ report
@app.command(rich_help_panel="Results")
@user_errors
def report(
    source: Annotated[Path, typer.Argument(metavar="RUN_DIR | EXPERIMENTS_DIR | PREDICT_OUT_DIR", help=SOURCE_HELP)],
    out: Annotated[
        Path, typer.Option("--out", help="The HTML page to write; its images go into <name>_files/ beside it.")
    ],
    max_images: Annotated[
        int | None,
        typer.Option("--max-images", help="Gallery: show only the N most damaged scans (the summary covers all)."),
    ] = None,
    thumb_size: Annotated[int, typer.Option("--thumb-size", help="Long side of the scan previews in pixels.")] = 1024,
    split: Annotated[str, typer.Option(help="Study: the evaluated split to compare.")] = "test",
    metric: Annotated[str, typer.Option(help="Study: the metric runs are ranked by.")] = "damage_miou",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing report of that name.")] = False,
) -> None:
    """One HTML page to look at: a gallery of a predict batch, or a study's comparison, curves and samples."""
    from .report import report as write_report

    done = write_report(
        source, out, max_images=max_images, thumb_size=thumb_size, overwrite=overwrite, split=split, metric=metric,
        console=console,
    )  # fmt: skip
    what = f"{done.n_shown} of {done.n_total} scans" if done.kind == "gallery" else f"{done.n_total} run(s)"
    console.print(f"wrote {escape(str(done.path))} and {escape(str(done.files_dir))}/ ({what}, {done.seconds:.1f} s)")
    console.print(f"open it: {escape(done.path.resolve().as_uri())}")


# ============================================================================================ export
@app.command(rich_help_panel="Using a model")
@user_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory made by train.")],
    format: Annotated[str, typer.Option("--format", help="onnx, smp (a save_pretrained folder) or torchscript.")],
    out: Annotated[Path, typer.Option("--out", help="The file (onnx, torchscript) or folder (smp) to write.")],
    checkpoint: Annotated[str, typer.Option(help="best, last, or a checkpoint name/path.")] = "best",
    check_images: Annotated[
        list[Path] | None, typer.Option("--check-images", help="Images for the parity check (default: val split).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier export of that name.")] = False,
) -> None:
    """Export a run's model (ONNX, smp folder + model card, TorchScript); exit 1 if it fails the parity check."""
    from .export import export as run_export

    done = run_export(run_dir, format, out, checkpoint=checkpoint, check_images=check_images, overwrite=overwrite,
                      console=console)  # fmt: skip
    console.print(f"wrote {escape(str(done.path))} and {escape(str(done.sidecar))}")


def main() -> None:  # pragma: no cover - console entry for python -m damage_smp
    app(prog_name="damage-smp")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
