"""The shared parts of the command line: the Typer app, its consoles, shared options and the user-error policy.

User errors (ValueError, FileNotFoundError, OSError, ...) become one red line and exit code 1; set
DAMAGE_SMP_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import functools
import os
from typing import Annotated

import typer
from rich.console import Console

from ..console import describe_os_error, escape

app = typer.Typer(
    name="damage-smp",
    help="Find and name damage in images of analogue media, pixel by pixel (segmentation_models_pytorch).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
manifest_app = typer.Typer(
    help="Build, check, split and merge data manifests (image,mask,split CSVs).", no_args_is_help=True
)
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
DecisionOpt = Annotated[
    str | None, typer.Option(help="argmax, or tuned: the run's thresholds.json (default: tuned when the run has one).")
]
MinAreaOpt = Annotated[
    str | None, typer.Option("--min-area", help='Remove damage regions under PX pixels (or JSON {"class": px}).')
]
DpiOpt = Annotated[float | None, typer.Option(help="Scan resolution for mm² in areas.csv (default: the file's).")]
ColourToleranceOpt = Annotated[
    int | None,
    typer.Option(
        "--colour-tolerance",
        help="Snap mask colours within N (per channel) of one class's colour to it, e.g. JPEG "
        "(default: the scheme's, 0).",
    ),
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
