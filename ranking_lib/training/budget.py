"""The time budget: minutes of training turned into steps, and re-planned while the run goes.

A budget (`TimeBudget`: ``train_minutes``, and/or the whole pipeline's ``budget_minutes``, which
caps the training minutes at what is left after the time already spent and the evaluation's
estimated cost) becomes a number of steps before the run starts: the trainer's step rate is
measured on throwaway copies of the network and optimiser (`measure_step_rate`), then
`budget_steps` fixes the steps (`BudgetPlan`).

The machine may get slower or faster after that measurement (another program starts, a laptop
goes on battery). At each checkpoint the trainer compares the loop's time left with the rate of
the steps since the last look, and `replan_steps` moves the end of the schedule so training
still ends on time: the learning-rate schedule keeps its value at that step and runs its
remaining length over the new number of steps (`schedule_progress`). Each move is recorded
(`Replan`), in the checkpoint and ``train_summary.json``; a resumed run continues from the moves
its checkpoint holds, and a run handed the recorded moves (no budget) repeats the schedule.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import torch

from ranking_lib.core.errors import CheckpointError, RankingError
from ranking_lib.core.settings import BUDGET_KEYS, same_budget

REPLAN_TOLERANCE = 0.02
"""A re-plan moves the end only when the steps left change by more than this share (and 1 step):
a run whose first measurement holds keeps its plan."""


@dataclass
class BudgetPlan:
    """How a time budget became a number of steps."""

    train_minutes: float
    steps: int
    steps_per_s: float
    calibration_steps: int = 0
    """Steps run on the throwaway copies (0: the rate was given, or taken from a checkpoint)."""
    calibration_s: float = 0.0
    """Wall time of the calibration, subtracted from the budget."""
    measured: bool = True
    """False when the rate was given (tests) or the plan came from the checkpoint (resume)."""
    budget_minutes: float | None = None
    """The whole pipeline's budget that capped `train_minutes` (None: no such budget)."""
    spent_s: float = 0.0
    """With `budget_minutes`: seconds the pipeline had run when training started."""
    evaluation_s: float = 0.0
    """With `budget_minutes`: the evaluation's estimated seconds, kept free at the end."""
    replan: bool = False
    """Whether the loop moves the schedule's end when its rate changes (a measured rate: yes;
    a given one, as tests give: the plan stays fixed)."""

    @property
    def loop_s(self) -> float:
        """The seconds the training loop itself may run: the training minutes less the calibration."""
        return self.train_minutes * 60 - self.calibration_s

    def describe(self) -> str:
        how = (f"measured over {self.calibration_steps} steps on a copy of the network in "
               f"{self.calibration_s:.0f} s, spent from the budget" if self.measured else "from the checkpoint or given")
        if self.budget_minutes is not None:
            head = (f"budget {format_minutes(self.budget_minutes * 60)} end to end: {format_minutes(self.spent_s)} "
                    f"spent, evaluation ~{format_minutes(self.evaluation_s)} (estimate) -> training ")
        else:
            head = "budget "
        return (f"{head}{format_minutes(self.train_minutes * 60)} -> {self.steps:,} steps at "
                f"{self.steps_per_s:.2f} steps/s ({how})")


@dataclass(frozen=True)
class Replan:
    """One move of the schedule's end, made at `step`."""

    step: int
    from_steps: int
    """The run's total steps before the move."""
    steps: int
    """The run's total steps after it."""
    steps_per_s: float = float("nan")
    """The rate of the steps since the previous look (what the move is based on)."""
    elapsed_s: float = float("nan")
    """Seconds the loop had run at `step` (over every resume)."""
    left_s: float = float("nan")
    """Seconds of the loop's budget left at `step`."""

    def describe(self) -> str:
        return (f"re-planned at step {self.step:,}: {self.steps_per_s:.2f} steps/s, "
                f"{format_minutes(max(self.left_s, 0.0))} left -> {self.steps:,} steps (was {self.from_steps:,})")

    @classmethod
    def from_dict(cls, d: dict) -> "Replan":
        try:
            return cls(int(d["step"]), int(d["from_steps"]), int(d["steps"]),
                       *(float(d.get(k, float("nan"))) for k in ("steps_per_s", "elapsed_s", "left_s")))
        except (KeyError, TypeError, ValueError) as e:
            raise RankingError(f"a recorded re-plan is not usable ({d!r}: {e})") from None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TimeBudget:
    """A run's time budget (at least one of the two): `train_minutes` for the training loop, and/or
    `budget_minutes` for the whole pipeline; `warmup_steps`, which the steps must pass."""

    train_minutes: float | None = None
    budget_minutes: float | None = None
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.train_minutes is None and self.budget_minutes is None:
            raise RankingError("no time budget: set train_minutes or budget_minutes (or give --steps)")

    def settings(self) -> dict:
        """The budget as the config's fields (``train_minutes``, ``budget_minutes``)."""
        return {k: getattr(self, k) for k in BUDGET_KEYS}

    def training_minutes(self, spent_s: float = 0.0, evaluation_s: float = 0.0) -> float:
        """The training loop's minutes: `train_minutes`, capped by `budget_minutes` less the
        `spent_s` seconds already run and the `evaluation_s` seconds the evaluation will take;
        one-line RankingError when the whole budget leaves no time to train."""
        limits = [] if self.train_minutes is None else [float(self.train_minutes)]
        if self.budget_minutes is not None:
            left = (self.budget_minutes * 60 - spent_s - evaluation_s) / 60
            if left <= 0:
                raise RankingError(
                    f"budget_minutes={self.budget_minutes:g} leaves no time to train: {format_minutes(spent_s)} "
                    f"spent before training, the evaluation needs ~{format_minutes(evaluation_s)} (estimate); "
                    f"give a larger budget, or --steps")
            limits.append(left)
        return min(limits)

    def plan(self, minutes: float, steps_per_s: float, *, calibration_steps: int = 0, calibration_s: float = 0.0,
             measured: bool = True, spent_s: float = 0.0, evaluation_s: float = 0.0) -> BudgetPlan:
        """The plan of a run starting now: `minutes` of training (`training_minutes`) at
        `steps_per_s` (measured over `calibration_steps` in `calibration_s`, spent from the budget,
        when `measured`; a measured plan re-plans as the run goes)."""
        capped = self.train_minutes is None or minutes < self.train_minutes
        what = f"budget_minutes={self.budget_minutes:g} ({minutes:.1f} min of training left)" if capped else None
        steps = budget_steps(minutes, steps_per_s, self.warmup_steps, calibration_s, what)
        whole = self.budget_minutes is not None
        return BudgetPlan(minutes, steps, steps_per_s, calibration_steps, calibration_s, measured=measured,
                          replan=measured, budget_minutes=self.budget_minutes,
                          spent_s=spent_s if whole else 0.0, evaluation_s=evaluation_s if whole else 0.0)


def format_minutes(seconds: float) -> str:
    """'45 s', '2 min', '3.5 min' (tenths under 10 min), '40 min', '2 h 23 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 9.95 * 60:
        return f"{round(seconds / 60, 1):g} min"
    minutes = int(round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def budget_steps(train_minutes: float, steps_per_s: float, warmup_steps: int = 0, spent_s: float = 0.0,
                 what: str | None = None) -> int:
    """Steps that fit into `train_minutes` at `steps_per_s`, `spent_s` (the calibration) already
    spent; one-line RankingError (naming the budget as `what`, by default ``train_minutes=M``)
    when that is not more than the warm-up."""
    if not (train_minutes is not None and math.isfinite(train_minutes) and train_minutes > 0):
        raise RankingError(f"train_minutes must be > 0 (got {train_minutes})")
    if not (math.isfinite(steps_per_s) and steps_per_s > 0):
        raise RankingError(f"the measured step rate is not usable ({steps_per_s} steps/s)")
    steps = int((train_minutes * 60 - spent_s) * steps_per_s)
    if steps <= warmup_steps:
        least = (warmup_steps + 1) / steps_per_s + spent_s
        raise RankingError(
            f"{what or f'train_minutes={train_minutes:g}'} leaves {max(steps, 0)} steps at {steps_per_s:.2f} steps/s, not more "
            f"than warmup_steps={warmup_steps}: give at least {math.ceil(least / 6) / 10:g} minutes, or --steps")
    return steps


def replan_steps(step: int, steps: int, left_s: float, steps_per_s: float,
                 tolerance: float = REPLAN_TOLERANCE) -> int | None:
    """The new total when `left_s` seconds at `steps_per_s` fit another number of steps than the
    `steps - step` planned (by more than `tolerance` of them and one step); None: keep the plan.
    No time left ends the run at `step`."""
    if not (math.isfinite(steps_per_s) and steps_per_s > 0):
        return None
    fit = step + max(0, int(left_s * steps_per_s))
    planned_left = max(steps - step, 0)
    if abs(fit - steps) <= max(1.0, tolerance * planned_left):
        return None
    return fit


def schedule_progress(step: int, steps: int, warmup_steps: int, replans: Sequence[Replan] = ()) -> float:
    """How far (0..1) the decay after the warm-up is at `step`, in a run of `steps` whose end was
    moved by `replans`: each move keeps the progress it had reached and spreads what is left over
    the steps to its new end. Without moves: ``(step - warmup) / (steps - warmup)``."""
    start, done = warmup_steps, 0.0
    ends = [r.from_steps for r in replans[:1]] + [r.steps for r in replans[:-1]] + [steps]
    end = ends[0]
    for i, r in enumerate(replans):
        if r.step > step:
            break
        at = max(r.step, warmup_steps)
        done = _segment(at, start, done, end)
        start, end = at, ends[i + 1]
    return _segment(step, start, done, end)


def _segment(step: int, start: int, done: float, end: int) -> float:
    return min(1.0, done + (1.0 - done) * (step - start) / max(1, end - start))


def replans_from(records: Iterable[dict] | None) -> list[Replan]:
    """Re-plans read back from a checkpoint or ``train_summary.json`` (one-line error when malformed)."""
    out = [Replan.from_dict(d) for d in records or []]
    if any(b.step < a.step for a, b in zip(out, out[1:])):
        raise RankingError("recorded re-plans are out of step order")
    return out


def measure_step_rate(run, warmup: int, steps: int, max_s: float) -> tuple[float, int, float]:
    """(steps/s, steps run, seconds) of a trainer's `step_loss` (`run`: a `trainer.Trainer`) on
    deep copies of its network and optimiser, on the batches of the run's first steps: `warmup`
    untimed steps, then up to `steps` timed ones or `max_s` seconds (at least 3). The run's own
    weights, optimiser state and random state are left as they were; under DDP every rank gets
    rank 0's rate."""
    t_all = time.perf_counter()
    own = run.model, run.optimizer
    run.model, run.optimizer = copy.deepcopy(own)
    try:
        with torch.random.fork_rng(devices=[]):
            run.model.train()
            for s in range(warmup):
                run.step_loss(run.step + s)
            t0, n, last = time.perf_counter(), 0, None
            while n < max(3, steps) and (n < 3 or n < steps and time.perf_counter() - t0 < max_s):
                last = run.step_loss(run.step + warmup + n)
                n += 1
            float(last)  # waits for the device
            rate = n / (time.perf_counter() - t0)
    finally:
        run.model, run.optimizer = own
    if run.dist.enabled:  # every rank plans with rank 0's rate
        t = torch.tensor([rate], dtype=torch.float64, device=run.device)
        torch.distributed.broadcast(t, 0)
        rate = float(t)
    return rate, warmup + n, time.perf_counter() - t_all


def resumed_plan(saved: dict, now: dict, recorded: dict | None, where: str, start_over: str) -> BudgetPlan:
    """The plan a budgeted run's checkpoint was made with (`saved`: its config, `recorded`: its
    ``budget``), which the resumed run keeps (never re-measured). Refused in one line
    (CheckpointError, `where` naming the checkpoint) when the checkpoint had no budget or another
    one than the config `now`."""
    if all(saved.get(k) is None for k in BUDGET_KEYS):
        raise CheckpointError(f"checkpoint {where} was trained for steps={saved.get('steps')} "
                              f"without a time budget; go on with --steps N, or {start_over}")
    if not same_budget(saved, now):
        def said(d):
            return ", ".join(f"{k}={d.get(k)}" for k in BUDGET_KEYS if d.get(k) is not None) or "no budget"
        raise CheckpointError(f"checkpoint {where} was planned with {said(saved)} "
                              f"({saved.get('steps')} steps, now {said(now)}); "
                              f"pass --steps N to change its length, or {start_over}")
    b = recorded or {}
    return BudgetPlan(float(b.get("train_minutes", saved.get("train_minutes") or float("nan"))),
                      int(saved["steps"]), float(b.get("steps_per_s", float("nan"))),
                      int(b.get("calibration_steps", 0)), float(b.get("calibration_s", 0.0)), measured=False,
                      budget_minutes=saved.get("budget_minutes"), spent_s=float(b.get("spent_s", 0.0)),
                      evaluation_s=float(b.get("evaluation_s", 0.0)), replan=bool(b.get("replan", False)))


def next_replan(plan: BudgetPlan | None, step: int, steps: int, loop_s: float,
                looked: tuple[int, float]) -> Replan | None:
    """At a checkpoint of a run planned by `plan`: the move of the schedule's end (`replan_steps`)
    when the rate of the steps since the last look (`looked`: step, loop seconds) fits another
    number of steps into the loop's time left; None: keep the plan (or no re-planning plan)."""
    if plan is None or not plan.replan:
        return None
    ran_s = loop_s - looked[1]
    rate = (step - looked[0]) / ran_s if ran_s > 0 else float("nan")
    left_s = plan.loop_s - loop_s
    new = replan_steps(step, steps, left_s, rate)
    return None if new is None else Replan(step, steps, new, rate, loop_s, left_s)
