"""Self-training commands: pseudo-label (a trained run labels unlabelled scans for train --pseudo)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import MaxPixelsOpt, UserError, app, console, user_errors


@app.command("pseudo-label", rich_help_panel="Training")
@user_errors
def pseudo_label(
    teacher_run: Annotated[Path, typer.Argument(help="Run directory of the teacher model (made by train).")],
    inputs: Annotated[
        list[str], typer.Argument(help="Unlabelled images: files, folders (recursive), glob patterns or CSVs.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for masks/, manifest.csv and pseudo.json.")],
    threshold: Annotated[
        float, typer.Option(help="Pixels whose top class probability is below this become 255 (ignored), 0 < T < 1.")
    ] = 0.9,
    tta: Annotated[bool, typer.Option("--tta", help="Average 4 flips (4x slower).")] = False,
    checkpoint: Annotated[str, typer.Option(help="best, last, or a checkpoint name/path.")] = "best",
    tile: Annotated[int | None, typer.Option(help="Sliding-window tile size (default: the teacher's).")] = None,
    overlap: Annotated[float, typer.Option(help="Tile overlap fraction, 0 <= F < 1.")] = 0.5,
    batch_size: Annotated[int, typer.Option(help="Tiles per forward pass.")] = 4,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Redo finished masks (never masks a person edited).")
    ] = False,
    max_pixels: MaxPixelsOpt = 200_000_000,
) -> None:
    """Label unlabelled scans with a trained run: confident pixels become index masks for `train --pseudo DIR`.

    Finished images are skipped, so a killed run continues where it stopped. Exit code 1 when an input failed.
    """
    from ..pseudo import print_result
    from ..pseudo import pseudo_label as run_pseudo_label

    try:
        result = run_pseudo_label(
            teacher_run, inputs, out, threshold=threshold, tta=tta, checkpoint=checkpoint, tile=tile, overlap=overlap,
            batch_size=batch_size, device=device, max_pixels=max_pixels, overwrite=overwrite, console=console,
        )  # fmt: skip
    except KeyboardInterrupt:
        raise UserError(
            "interrupted (Ctrl-C); run the same command again to continue (finished masks are kept)"
        ) from None
    print_result(result, console)
    console.print(f"next: damage-smp train --pseudo {out} (with your labelled manifest)", soft_wrap=True, markup=False)
    if result.failures:
        raise typer.Exit(1)
