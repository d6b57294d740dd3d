"""Training commands: train (its options generated from TrainConfig)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..console import escape
from .app import app, console, user_errors


# ============================================================================================ train
def train_options(fn):
    """Give ``fn`` one option per TrainConfig field: name, type, help (the field's docstring) and flag from the field.

    Every option defaults to None ("not given"), so a --config file's value is used unless the flag is given;
    the field's own default is shown in --help and docs/cli.md.
    """
    import dataclasses
    import inspect
    import typing

    from ..config import TrainConfig, field_docs, field_types

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
            help="Continue this run dir up to --epochs in total, or for a new --time-budget (only settings marked "
            "resumable may change: --epochs, --time-budget, --device, --num-workers, --patience, --compile, "
            "--tensorboard)."
        ),
    ] = None,
    **settings,
) -> None:
    """Train an smp model with Dice+CE on a manifest; writes a self-describing run directory."""
    from ..config import TrainConfig, read_config_file
    from ..runs import resumed_config
    from ..train import train as run_training

    given = {name: value for name, value in settings.items() if value is not None}
    if resume is not None:
        cfg = resumed_config(resume, given)
    else:
        file_settings = read_config_file(config) if config else {}
        cfg = TrainConfig.from_dict({**file_settings, **given}, source=f"--config {config}" if config else "flags")
    run_dir = run_training(cfg, resume=resume, console=console)
    console.print(f"run directory: [bold]{escape(str(run_dir))}[/]")
