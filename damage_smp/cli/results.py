"""Result commands: evaluate, compare, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..console import escape
from .app import SOURCE_HELP, ColourToleranceOpt, MinAreaOpt, app, console, user_errors


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
    tune: Annotated[
        bool, typer.Option("--tune", help="With --split val: pick the F1-best damage threshold, write thresholds.json.")
    ] = False,
    min_area: MinAreaOpt = None,
    tolerance: Annotated[
        int, typer.Option(help="Tolerant per-class precision/recall/F1: a hit within this many pixels.")
    ] = 2,
    colour_tolerance: ColourToleranceOpt = None,
) -> None:
    """Score a run on every whole image of a split: metrics.json, confusion matrix, per-image and per-group tables.

    Scores use the argmax and, when the run has thresholds.json tuned on another split, the tuned threshold too.
    """
    from ..evaluate import evaluate as run_evaluate

    run_evaluate(run_dir, split=split, manifest=manifest, checkpoint=checkpoint, tta=tta, device=device, tile=tile,
                 overlap=overlap, batch_size=batch_size, max_pixels=max_pixels, tune=tune,
                 min_area=min_area, tolerance=tolerance, console=console,
                 colour_tolerance=colour_tolerance)  # fmt: skip


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
    from ..compare import compare as run_compare

    run_compare(paths or [Path("experiments")], baseline=baseline, metric=metric, split=split, out=out,
                console=console, overwrite=overwrite)  # fmt: skip


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
    from ..report import report as write_report

    done = write_report(
        source, out, max_images=max_images, thumb_size=thumb_size, overwrite=overwrite, split=split, metric=metric,
        console=console,
    )  # fmt: skip
    what = f"{done.n_shown} of {done.n_total} scans" if done.kind == "gallery" else f"{done.n_total} run(s)"
    console.print(f"wrote {escape(str(done.path))} and {escape(str(done.files_dir))}/ ({what}, {done.seconds:.1f} s)")
    console.print(f"open it: {escape(done.path.resolve().as_uri())}")
