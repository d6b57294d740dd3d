"""The damage-smp command line: options -> config/paths -> one library call per command.

User errors (ValueError, FileNotFoundError, OSError, ...) become one red line and exit code 1; set
DAMAGE_SMP_DEBUG=1 to see the traceback instead. Each module below registers its commands on ``app``;
the import order is the order of ``--help``.
"""

from __future__ import annotations

import sys

from . import data, pretraining, results, selftrain, training, using  # noqa: F401  (registers the commands)
from .app import UserError, app, console, err_console, fail, user_errors

__all__ = ["UserError", "app", "console", "err_console", "fail", "main", "user_errors"]


def main() -> None:  # pragma: no cover - console entry for python -m damage_smp
    app(prog_name="damage-smp")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
