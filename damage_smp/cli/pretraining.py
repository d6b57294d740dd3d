"""Self-supervised pre-training: pretrain (panel "Training"); train --init-from DIR uses its weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ..console import escape
from .app import app, console, user_errors

Int = int | None


@app.command(rich_help_panel="Training")
@user_errors
def pretrain(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(help="Folders, glob patterns or manifest CSVs of scans (no masks needed); not with --resume."),
    ] = None,
    out: Annotated[Path, typer.Option(help="The pre-train run directory to write (or continue).")] = Path("pretrain"),
    arch: Annotated[str | None, typer.Option(help="smp architecture; train --init-from needs the same.")] = None,
    encoder: Annotated[
        str | None, typer.Option(help="smp encoder or tu-<timm name> (default tu-efficientnet_lite0).")
    ] = None,
    init: Annotated[str | None, typer.Option(help="Encoder weights to start from: imagenet or none.")] = None,
    epochs: Annotated[Int, typer.Option(help="Epochs in total (with --resume: up to this many). [default: 20]")] = None,
    samples_per_epoch: Annotated[Int, typer.Option(help="Random crops per epoch. [default: 256]")] = None,
    crop_size: Annotated[
        Int, typer.Option(help="Square crops at native resolution, a multiple of 32. [default: 256]")
    ] = None,
    batch_size: Annotated[Int, typer.Option(help="Crops per optimizer step. [default: 8]")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW). [default: 0.001]")] = None,
    seed: Annotated[Int, typer.Option(help="Seed for weights, crops and corruptions. [default: 0]")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N. [default: auto]")] = None,
    num_workers: Annotated[Int, typer.Option(help="Data loader workers (-1: sized to the machine).")] = None,
    max_pixels: Annotated[Int, typer.Option(help="Refuse images above this many pixels.")] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out up to --epochs (its saved settings).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a pre-train run in --out (never anything else).")] = False,
) -> None:
    """Self-supervised pre-training of encoder and decoder on unlabelled scans (restore corrupted crops).

    Writes DIR/encoder.pt and DIR/model.pt for `train --init-from DIR` or `--encoder-weights DIR/encoder.pt`.
    """
    from ..pretrain import PretrainConfig
    from ..pretrain import pretrain as run_pretrain
    from ..pretrain.config import resumed

    settings = dict(arch=arch, encoder=encoder, init=init, epochs=epochs, samples_per_epoch=samples_per_epoch,
                    crop_size=crop_size, batch_size=batch_size, lr=lr, seed=seed, device=device,
                    num_workers=num_workers, max_pixels=max_pixels)  # fmt: skip
    given = {k: v for k, v in settings.items() if v is not None}
    if inputs:
        given["inputs"] = tuple(os.path.abspath(p) for p in inputs)  # a resumed run finds them from anywhere
    if resume:
        cfg = resumed(out, given)
    else:
        if not inputs:
            raise ValueError("no INPUTS given; pass folders, glob patterns or manifest CSVs of scans")
        cfg = PretrainConfig(**given, out=str(out), overwrite=overwrite)
    run_dir = run_pretrain(cfg, resume=resume, console=console)
    console.print(f"pre-train run: [bold]{escape(str(run_dir))}[/]  next: damage-smp train --init-from "
                  f"{escape(str(run_dir))} --arch {cfg.arch} --encoder {cfg.encoder} ...")  # fmt: skip
