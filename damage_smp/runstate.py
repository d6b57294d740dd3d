"""state.json around a training loop (train and pretrain): running, then finished / interrupted / failed on every
way out, and errors that say what is kept. ``run`` is any object with ``main``, ``paths`` (RunPaths), ``cfg``
(batch_size, crop_size), ``last_epoch``, ``start_epoch``, ``say`` and ``resume_command()``.
"""

from __future__ import annotations

import contextlib

import torch

from . import distributed as ddp
from .checkpoints import checkpoint_write_error
from .images import WriteError
from .runs import write_state


class TrainingStopped(ValueError):
    """Training ended early for a reason the user must act on (NaN loss, out of memory)."""


@contextlib.contextmanager
def run_state(run):
    """state.json says running while the loop runs, and why it stopped on every way out; errors say what is kept."""
    if run.main:
        write_state(run.paths.state, "running", run.start_epoch - 1)
    last = run.paths.checkpoint("last")
    try:
        yield
    except KeyboardInterrupt:
        note_state(run, "interrupted", "Ctrl-C")
        run.say(f"[yellow]interrupted; continue with: {run.resume_command()}[/]")
        raise
    except torch.OutOfMemoryError:
        msg = (
            f"out of memory at batch size {run.cfg.batch_size}, crop {run.cfg.crop_size}; use a smaller --batch-size "
            f"or --crop-size (and --accum-steps to keep the effective batch); {last} is kept"
        )
        note_state(run, "failed", msg)
        raise TrainingStopped(msg) from None
    except WriteError as e:  # a full disk: say what is kept and how to go on (rerunning would start over)
        note_state(run, "failed", str(e))
        if "--resume" in str(e):
            raise
        raise checkpoint_write_error(e.target or last, e, last) from e
    except Exception as e:
        note_state(run, "failed", str(e))
        raise
    finally:
        ddp.barrier()


def note_state(run, status: str, reason: str) -> None:
    """state.json on the way out of a failure: a full disk must not hide the error that stopped the run."""
    if run.main:
        with contextlib.suppress(OSError):
            write_state(run.paths.state, status, run.last_epoch, reason)
