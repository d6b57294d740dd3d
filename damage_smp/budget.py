"""--time-budget: how many optimizer steps fit in a wall-clock budget, so the LR schedule ends when the time does.

The budget counts from the first training step of this session (set-up, the final sample overlays and the final
checkpoint copy are outside it). Over a measuring window -- min(60 s, 10 % of the budget) -- the loop runs on a
provisional plan, re-estimated at every step; at the end of the first epoch that closes the window and has timed a
validation, the plan is fixed:

    steps left = (time left - one final validation) / (seconds per step + validation seconds per step)

where seconds per step is the measured wall time per optimizer step outside validation (data loading, checkpoint
writes and progress included; the first step, which carries start-up costs, left out) and validation seconds per
step spreads one validation over the steps between two validations (``--val-every`` epochs). The loop in
train.py calls ``epochs``, ``validates``, ``budget_step`` and ``record_budget``; under torchrun rank 0's plan is
every rank's (one LR, one last step).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, field

from . import distributed as ddp
from .config import parse_duration
from .runs import write_json

MAX_WINDOW_S = 60.0
WINDOW_FRACTION = 0.1


@dataclass
class TimeBudget:
    """The plan of one training session under --time-budget (a resumed run starts a new one)."""

    text: str  # as given, e.g. "20m"
    seconds: float
    start_step: int  # optimizer steps already taken (a resumed run)
    steps_per_epoch: int  # optimizer steps in a full epoch
    val_every: int
    t0: float = field(default_factory=time.perf_counter)
    val_s: list[float] = field(default_factory=list)
    fixed_total: int | None = None
    fixed_at_s: float = math.nan
    steps: int = 0  # steps taken in this session
    first_step_s: float = math.nan  # train seconds when the first step was done (start-up is not the rate)
    last: bool = False  # the epoch just trained is the last (decided in ``validates``)

    @classmethod
    def from_text(cls, text: str, start_step: int, steps_per_epoch: int, val_every: int) -> TimeBudget:
        return cls(text, parse_duration(text), start_step, max(1, steps_per_epoch), val_every)

    @property
    def window_s(self) -> float:
        return min(MAX_WINDOW_S, WINDOW_FRACTION * self.seconds)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def train_seconds(self) -> float:
        """Wall time of this session outside validation."""
        return self.elapsed() - sum(self.val_s)

    def step_done(self) -> None:
        self.steps += 1
        if self.steps == 1:
            self.first_step_s = self.train_seconds()

    def seconds_per_step(self) -> float:
        """Measured wall seconds per step outside validation; the first step (start-up, lazy set-up) left out."""
        if self.steps < 2:
            return self.train_seconds() / max(1, self.steps)
        return (self.train_seconds() - self.first_step_s) / (self.steps - 1)

    def validated(self, seconds: float) -> None:
        self.val_s.append(seconds)

    def needs_validation_timing(self) -> bool:
        """True once the window is over but no validation has been timed yet (the loop then validates)."""
        return not self.val_s and self.train_seconds() >= self.window_s

    def estimate(self) -> int:
        """Total optimizer steps (including those before this session) that fit the budget, by what was measured."""
        if self.steps == 0:
            return self.start_step + self.steps_per_epoch  # nothing measured yet: a first epoch
        per_step = self.seconds_per_step()
        val_each = sum(self.val_s) / len(self.val_s) if self.val_s else 0.0
        val_per_step = val_each / (self.steps_per_epoch * self.val_every)
        left = self.seconds - self.elapsed() - val_each  # keep time for the final validation
        more = max(0, math.floor(left / (per_step + val_per_step)))
        return self.start_step + self.steps + more

    def total(self) -> int:
        """The plan: fixed once measured, else the current estimate (never below the steps already taken)."""
        if self.fixed_total is not None:
            return self.fixed_total
        return max(self.start_step + self.steps, self.estimate())

    def epoch_end(self) -> None:
        """At an epoch's end: fix the plan once the window is over and a validation timed."""
        if self.fixed_total is None and self.val_s and self.train_seconds() >= self.window_s:
            self.fixed_total = max(self.start_step + self.steps, self.estimate())
            self.fixed_at_s = self.elapsed()

    def over(self, step: int) -> bool:
        return step >= self.total()

    def record(self, epochs: int, step: int) -> dict:
        """What the budget became, for config.json's "budget" list (one entry per training session)."""
        per_step = self.seconds_per_step() if self.steps else math.nan
        return {
            "time_budget": self.text,
            "seconds": self.seconds,
            "measured_s": round(self.fixed_at_s, 2) if math.isfinite(self.fixed_at_s) else None,
            "s_per_step": round(per_step, 4) if math.isfinite(per_step) else None,
            "first_step_s": round(self.first_step_s, 2) if math.isfinite(self.first_step_s) else None,
            "val_s": round(sum(self.val_s) / len(self.val_s), 2) if self.val_s else None,
            "start_step": self.start_step,
            "planned_steps": self.total(),
            "steps": step,
            "epochs": epochs,
            "elapsed_s": round(self.elapsed(), 2),
        }


# ============================================================================================ the loop's side
def epochs(run):
    """The epoch numbers to train: up to --epochs, or under --time-budget until the planned steps are taken."""
    if run.budget is None:
        yield from range(run.start_epoch, run.cfg.epochs + 1)
        return
    run.budget.t0 = time.perf_counter()  # the budget starts with the first step
    for epoch in itertools.count(run.start_epoch):
        yield epoch
        if run.budget.last:
            return
        # the epoch's records (checkpoint, curves) took time too: stop here if it was validated and time is up
        if not math.isnan(run.history[-1]["val_loss"]) and sync(run, run.budget.total()) <= run.step:
            run.total_steps = run.step
            return


def validates(run, epoch: int) -> bool:
    """Every --val-every epochs and at the end; under a budget also once to time validation for the plan.

    Under a budget this is where, after each epoch's steps, the plan may be fixed and the last epoch is decided.
    """
    if run.budget is None:
        return epoch % run.cfg.val_every == 0 or epoch == run.cfg.epochs
    b = run.budget
    b.epoch_end()
    run.total_steps = sync(run, b.total())
    b.last = run.step >= run.total_steps
    return b.last or epoch % run.cfg.val_every == 0 or sync(run, b.needs_validation_timing())


def sync(run, value):
    """Rank 0's value on every rank under torchrun (the plan is rank 0's), the value itself otherwise."""
    return ddp.broadcast(value) if run.world > 1 else value


def planned_epochs(run) -> int:
    """--epochs, or the epochs the budget's planned steps make (partial last epoch counted)."""
    if run.budget is None:
        return run.cfg.epochs
    return run.start_epoch - 1 + math.ceil((run.total_steps - run.budget.start_step) / run.budget.steps_per_epoch)


def budget_step(run) -> bool:
    """Count a step against the budget and update the plan; True when its last step is taken.

    Under torchrun rank 0's plan is every rank's, so all ranks use one LR and stop at the same step.
    """
    run.budget.step_done()
    run.total_steps = sync(run, run.budget.total())
    return run.step >= run.total_steps


def record_budget(run) -> None:
    """config.json's "budget": one entry per session (a resume adds one) saying what the budget became."""
    entry = run.budget.record(run.last_epoch, run.step)
    data = json.loads(run.paths.config.read_text(encoding="utf-8"))
    data["budget"] = [*data.get("budget", []), entry]
    write_json(run.paths.config, data)
    run.say(f"time budget {entry['time_budget']}: {entry['steps'] - entry['start_step']} steps "
            f"({entry['s_per_step']} s each), epochs {run.start_epoch}-{run.last_epoch}, "
            f"{entry['elapsed_s']:.0f} s")  # fmt: skip
