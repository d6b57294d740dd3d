"""Using a model: predict, export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..console import escape
from .app import DecisionOpt, DpiOpt, MaxPixelsOpt, MinAreaOpt, UserError, app, console, user_errors

MODEL_HELP = "Run directory made by train, or an ONNX file made by export (its MODEL.onnx.json beside it)."
BACKEND_HELP = "torch, or onnxruntime (CPU; the [onnx] extra). Default: torch; onnxruntime for MODEL.onnx."


# ============================================================================================ predict
@app.command(rich_help_panel="Using a model")
@user_errors
def predict(
    run_dir: Annotated[
        Path | None, typer.Argument(metavar="RUN_DIR | MODEL.onnx", help=MODEL_HELP, show_default=False)
    ] = None,
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
    backend: Annotated[str | None, typer.Option(help=BACKEND_HELP)] = None,
    decision: DecisionOpt = None,
    min_area: MinAreaOpt = None,
    dpi: DpiOpt = None,
    save: Annotated[str, typer.Option(help="colour,index,overlay,prob,uncertainty,layers")] = "colour,index,overlay",
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
    from .. import predict as prediction

    if merge_areas is not None:
        return _merge_only(merge_areas, run_dir is not None or bool(inputs))
    if run_dir is None or not inputs or out is None:
        raise UserError("give RUN_DIR (or MODEL.onnx), one or more INPUTS and --out DIR (or --merge-areas DIR)")
    _run_batch(
        run_dir, inputs, out, checkpoint=checkpoint, tile=tile, overlap=overlap, batch_size=batch_size,
        tta=tta, device=device, save=save, overwrite=overwrite, max_pixels=max_pixels, workers=workers,
        shard=prediction.parse_shard(shard) if shard else None, backend=backend, decision=decision or "auto",
        min_area=min_area, dpi=dpi,
    )  # fmt: skip


def _merge_only(folder: Path, more: bool) -> None:
    from .. import predict as prediction

    if more:
        raise UserError("--merge-areas DIR works alone; drop RUN_DIR and INPUTS (or drop --merge-areas)")
    path, n = prediction.merge_areas(folder)
    console.print(f"merged the areas of {n} image(s) into [bold]{escape(str(path))}[/]")


def _run_batch(*args, **kwargs) -> None:
    """predict(...), its summary, and exit code 1 when an input failed; Ctrl-C says how to continue."""
    from .. import predict as prediction

    try:
        result = prediction.predict(*args, **kwargs, console=console)
    except KeyboardInterrupt:
        again = "run the same command again to continue (finished images are skipped)"
        raise UserError(f"interrupted (Ctrl-C); {again}") from None
    prediction.print_result(result, console)
    if result.failures:
        raise typer.Exit(1)


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
    from ..export import export as run_export

    done = run_export(run_dir, format, out, checkpoint=checkpoint, check_images=check_images, overwrite=overwrite,
                      console=console)  # fmt: skip
    console.print(f"wrote {escape(str(done.path))} and {escape(str(done.sidecar))}")
