"""Terminal helpers shared by every command: markup escaping, one progress-bar factory, number formatting.

Torch-free (compare/ and report/ use it too).
"""

from __future__ import annotations

import errno
import math

from rich.console import Console
from rich.markup import escape as rich_escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

MISSING = "—"  # how a value that does not exist (NaN, None, no clean class, ...) is shown everywhere


def escape(text) -> str:
    """Text for a rich markup string: file names such as ``scan[1].png`` print as they are."""
    return rich_escape(str(text))


def progress_bar(
    console: Console | None = None,
    *,
    enabled: bool = True,
    transient: bool = True,
    fields: str = "",
    elapsed: bool = True,
) -> Progress:
    """The one progress bar of damage-smp: description, bar, n/total, elapsed, remaining [, extra fields].

    ``fields``: an extra rich column template such as ``"loss {task.fields[loss]:.4f}"`` (give the field
    to ``add_task``). ``enabled=False`` gives a bar that prints nothing (e.g. DDP ranks other than 0).
    """
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if fields:
        columns.append(TextColumn(fields))
    if elapsed:
        columns.append(TimeElapsedColumn())
    columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console, disable=not enabled, transient=transient)


def is_missing(value) -> bool:
    """None, '', NaN or ±inf: a value that is not a finite number and shows as '—'."""
    if value is None or (isinstance(value, str) and value == ""):
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def fmt(value, spec: str = ".3f") -> str:
    """A number with ``spec``, '—' for a missing one (None, NaN, inf), anything else as str."""
    if is_missing(value):
        return MISSING
    if isinstance(value, bool) or not hasattr(value, "__float__"):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars -> Python int/float, so integer specs such as ',d' work
        value = value.item()
    return format(value, spec)


OS_ERROR_HINTS = {
    errno.EROFS: "the file system is read-only; write somewhere else (another --out / --out-dir)",
    errno.EACCES: "no permission to write or read there; choose another place or fix its permissions",
    errno.EPERM: "the operation is not permitted there; choose another place or fix its permissions",
    errno.EEXIST: "something of that name is already there; choose another name or move it away",
    errno.ENOSPC: "the disk is full; free some space and run the command again",
    errno.ENOTDIR: "a file stands where a folder is needed; choose another path",
    errno.EISDIR: "a folder stands where a file is needed; choose another path",
    errno.ENAMETOOLONG: "the name is too long for the file system; choose a shorter one",
}


def describe_os_error(e: OSError) -> str:
    """'PATH: Read-only file system; the file system is read-only; write somewhere else' instead of '[Errno 30] ...'."""
    if e.errno not in OS_ERROR_HINTS or not e.strerror:
        return str(e)
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror}; {OS_ERROR_HINTS[e.errno]}"
