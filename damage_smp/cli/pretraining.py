"""Self-supervised pre-training: pretrain (panel "Training"); train --init-from DIR uses its weights."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated

import typer

from ..config import docs_of
from ..console import escape
from ..pretrain.config import PretrainConfig
from .app import app, console, user_errors

Int = int | None
_DOCS = docs_of(PretrainConfig)  # the help of each option is the docstring under its PretrainConfig field
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PretrainConfig)}


def _option(name: str):
    """The option of a PretrainConfig field: its docstring as help, its default shown (None here = not given)."""
    return typer.Option(help=_DOCS[name], show_default=str(_DEFAULTS[name]))


@app.command(rich_help_panel="Training")
@user_errors
def pretrain(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(help="Folders, glob patterns or manifest CSVs of scans (no masks needed); not with --resume."),
    ] = None,
    out: Annotated[Path, typer.Option(help="The pre-train run directory to write (or continue).")] = Path("pretrain"),
    arch: Annotated[str | None, _option("arch")] = None,
    encoder: Annotated[str | None, _option("encoder")] = None,
    init: Annotated[str | None, _option("init")] = None,
    epochs: Annotated[Int, _option("epochs")] = None,
    samples_per_epoch: Annotated[Int, _option("samples_per_epoch")] = None,
    crop_size: Annotated[Int, _option("crop_size")] = None,
    batch_size: Annotated[Int, _option("batch_size")] = None,
    lr: Annotated[float | None, _option("lr")] = None,
    seed: Annotated[Int, _option("seed")] = None,
    device: Annotated[str | None, _option("device")] = None,
    num_workers: Annotated[Int, _option("num_workers")] = None,
    max_pixels: Annotated[Int, _option("max_pixels")] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out up to --epochs (its saved settings).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help=_DOCS["overwrite"])] = False,
) -> None:
    """Self-supervised pre-training of encoder and decoder on unlabelled scans (restore corrupted crops).

    Writes DIR/encoder.pt and DIR/model.pt for `train --init-from DIR` or `--encoder-weights DIR/encoder.pt`.
    """
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
