"""`Trainer`: a plain training loop for the ranking network, readable top to bottom.

Each step takes the next `batch_size` triplets from its source, gathers their inputs (the decoded
uint8 cache, or the frozen stages' features), runs query, positive and negative images as ONE batch
of 3B through one network (the three networks share weights), and minimises the ranking hinge loss.
The trainer is handed its parts (`parts.TrainingParts`: optimiser, loss, miner, fine-grained terms)
and plain settings; it reads no config (`run_settings.make_trainer` turns a run's config into both).

Everything random in a step (triplet order, augmentation) is derived from (seed, step), so a
run resumed from a checkpoint reproduces the uninterrupted run. A time budget becomes a number of
steps before the loop and is re-planned at its checkpoints (`budget`: the plan, its moves and what
a resumed run keeps). The loss stays on the device between log steps (`loss_log.LossLog`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ranking_lib.training import distributed
from ranking_lib.training.budget import (BudgetPlan, Replan, TimeBudget, format_minutes, measure_step_rate,
                                         next_replan, replans_from, resumed_plan)
from ranking_lib.training.augment import flip_and_shift
from ranking_lib.training.checkpoint import load_model_state, read_checkpoint, resume_differences, save_checkpoint
from ranking_lib.core.devices import array_on_device, autocast, resolve_device, setup_device, to_device
from ranking_lib.core.errors import CheckpointError, DiskFullError, RankingError
from ranking_lib.core.fileio import disk_full_error, is_disk_full
from ranking_lib.models.inference import ModelInputs, embed_batch
from ranking_lib.training.loss_log import LossLog
from ranking_lib.training.optim import LRSchedule
from ranking_lib.training.parts import TrainingParts
from ranking_lib.triplets.presampled import PresampledTriplets
from ranking_lib.models.model import EmbeddingNet
from ranking_lib.core.progress import progress as progress_bar

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    checkpoint: Path
    loss_log: Path
    steps: int
    wall_s: float
    triplets_per_s: float
    final_loss: float | None
    steps_run: int = 0
    """Steps run by this call (0 when the checkpoint had already reached the run's steps)."""
    resumed_from: int | None = None
    steps_history: list | None = None
    """[[at_step, steps], ...]: the run's total steps, and the step at which each was set."""
    budget: dict | None = None
    """With ``train_minutes``: the `BudgetPlan` that fixed ``steps`` (rate, calibration)."""
    replans: list | None = None
    """The budget's moves of the schedule's end (`budget.Replan` as dicts), oldest first."""
    loop_s: float = 0.0
    """Seconds the training loop ran over every attempt (resumes add to it up to their checkpoint)."""


# The step-rate calibration of a time budget, on throwaway copies of the network and optimiser.
CALIBRATION_WARMUP = 5     # untimed steps first (allocations, oneDNN's kernel choice)
CALIBRATION_STEPS = 30     # then this many timed steps ...
CALIBRATION_MAX_S = 30.0   # ... or this many seconds, whichever comes first (at least 3 steps)


class Trainer:
    """Trains an `EmbeddingNet` on pre-sampled triplets of one image cache, with the parts it is
    handed; `run_settings.make_trainer` builds both from a run's config.

    Args:
        model: the network to train; `parts`: its optimiser, loss, miner and fine-grained terms
            (`parts.build_parts`).
        inputs: `ModelInputs`: the decoded uint8 images (a plain uint8 array is taken as such), or
            the float16 outputs of the model's frozen stages (see `stage_cache`); `labels`: (N,).
        triplets: int array (T, 3) of pre-sampled (query, positive, negative) indices into
            `inputs`, or a source with ``batch(step)`` and ``sha256`` (`online.OnlineTriplets`).
        run_dir: where `loss_log.csv` and `checkpoints/last.pt` are written.
        steps, batch_size, seed, schedule: the run's length (a budget replaces it with its plan's),
            triplets per step (the global batch under DDP), the seed every random choice of a step
            derives from with the step, and the learning rate over the steps (`optim.LRSchedule`).
        device, amp, bf16_cpu, augment, squared_distance, log_every, checkpoint_every: as the
            config's fields of those names (`core.config.RunConfig`).
        budget: a `budget.TimeBudget` that fixes `steps` from the measured step rate and re-plans
            at checkpoints; `replans`: a budgeted run's recorded moves, to repeat its schedule in a
            run of the final `steps` without a budget.
        settings: the run's settings (``RunConfig.to_dict()``), kept in each checkpoint; a
            checkpoint made with other run-shaping ones is not resumed.
        views: with instance triplets (`triplets` an `instance.InstanceTriplets`), the
            `views.TrainingViews` that put a view of the query's image in their positive slot.
    """

    def __init__(self, model: EmbeddingNet, inputs: ModelInputs | np.ndarray, labels: np.ndarray, triplets, *,
                 parts: TrainingParts, run_dir: str | Path, steps: int, batch_size: int, seed: int = 0,
                 schedule: LRSchedule, device: str = "auto", amp: bool = False, bf16_cpu: bool = False,
                 augment: bool = False, squared_distance: bool = False, log_every: int = 20,
                 checkpoint_every: int = 500, budget: TimeBudget | None = None, settings: dict | None = None,
                 replans: Sequence[Replan | dict] = (), views=None) -> None:
        self.steps, self.batch_size, self.seed, self.schedule = int(steps), int(batch_size), int(seed), schedule
        self.amp, self.bf16_cpu, self.augment, self.squared_distance = amp, bf16_cpu, augment, squared_distance
        self.log_every, self.checkpoint_every = log_every, checkpoint_every
        self.time_budget, self.settings = budget, dict(settings or {})
        self.dist = distributed.context()
        if batch_size % self.dist.world_size:
            raise RankingError(f"batch_size {batch_size} (the global batch) must be a multiple of the "
                               f"{self.dist.world_size} ranks")
        self.device = resolve_device(distributed.rank_device(device, self.dist))
        self.model = model.to(self.device)
        self.inputs = ModelInputs.of(inputs)
        images = self.images = self.inputs.array
        self.from_stage = self.inputs.from_stage
        # On a GPU the whole uint8 cache (1.2 GB for Tiny ImageNet) moves to the device once;
        # each step then gathers its images there instead of copying them from host memory.
        cuda = self.device.type == "cuda"
        self.device_images = array_on_device(images, self.device) if cuda else None
        # the multiscale network's shallow paths read the uint8 images beside the stage features
        side = self.inputs.images if self.from_stage and model.multiscale else None
        self.device_side_images = array_on_device(side, self.device) if cuda and side is not None else None
        setup_device(self.device)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.source = triplets if hasattr(triplets, "batch") else PresampledTriplets(triplets, batch_size, seed)
        self.triplets_sha256 = self.source.sha256
        self.views = views
        if views is not None and not hasattr(self.source, "instance_rows"):
            raise RankingError("views need a triplet source with instance triplets (instance.InstanceTriplets)")
        self.optimizer, self.loss_fn, self.miner = parts.optimizer, parts.loss, parts.miner
        self.teacher = None if parts.teacher is None else parts.teacher.to(self.device)
        self.distill, self.distill_weight = parts.distill, parts.distill_weight
        self.graded = None if parts.graded is None else parts.graded.to(self.device)
        self.run_dir = Path(run_dir)
        self.checkpoint_path = self.run_dir / "checkpoints" / "last.pt"
        self.loss_log_path = self.run_dir / "loss_log.csv"
        self.log = LossLog(self.loss_log_path, self.dist.is_main)
        self.step = 0
        self.resumed_from: int | None = None
        self.steps_history: list[list[int]] = [[0, self.steps]]
        self.budget: BudgetPlan | None = None
        """The plan `budget` made (its steps, rate and calibration), once `apply_budget` ran."""
        self.replans = replans_from(r if isinstance(r, dict) else r.to_dict() for r in replans)
        if self.replans and budget is not None:
            raise RankingError("recorded re-plans repeat a budget's schedule: give --steps (the run's final steps), "
                               "not a time budget")
        if self.replans and self.replans[-1].steps != self.steps:
            raise RankingError(f"the recorded re-plans end at {self.replans[-1].steps} steps, this run has "
                               f"steps={self.steps}")
        self.loop_s = 0.0  # the loop's seconds in earlier attempts, up to the checkpoint resumed from

    # ---- checkpoints ---------------------------------------------------------------
    def kept_settings(self) -> dict:
        """The settings a checkpoint keeps and a resume compares: `settings`, with the time budget
        the trainer was handed in place of any the settings name."""
        return {**self.settings, **(self.time_budget.settings() if self.time_budget else {})}

    def save(self) -> Path:
        if not self.dist.is_main:  # rank 0 writes for all
            return self.checkpoint_path
        return save_checkpoint(self.checkpoint_path, {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "config": {**self.kept_settings(), "steps": self.steps},
            "sampler_seed": self.seed,
            "architecture": self.model.architecture(),
            "triplets_sha256": self.triplets_sha256,
            "steps_history": self.steps_history,
            "budget": asdict(self.budget) if self.budget else None,
            "replans": [r.to_dict() for r in self.replans],
            "loop_s": self.loop_s,
        })

    def resume(self) -> bool:
        """Continue from `checkpoints/last.pt` if it exists; returns whether it did.

        Refused, in one line, when the checkpoint was made with other settings that shape the
        run (see `checkpoint.resume_differences`), from other triplets, or is already past
        `steps`. A larger `steps` extends the run and is recorded in `steps_history`.
        """
        if not self.checkpoint_path.is_file():
            return False
        path = self.checkpoint_path
        ckpt = read_checkpoint(path)
        step = int(ckpt.get("step", 0))
        start_over = "resume with the same settings, or start over with --no-resume (or another --run-dir)"
        saved = ckpt.get("config")
        if isinstance(saved, dict):
            diff = resume_differences(saved, self.kept_settings())
            if diff:
                desc = ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in diff.items())
                raise CheckpointError(f"checkpoint {path} (step {step}) was trained with other settings: "
                                      f"{desc}; {start_over}")
        if ckpt.get("sampler_seed") != self.seed:
            raise CheckpointError(
                f"checkpoint {path} was trained with seed {ckpt.get('sampler_seed')}, "
                f"this run uses seed {self.seed}; {start_over}")
        if ckpt.get("triplets_sha256", self.triplets_sha256) != self.triplets_sha256:
            raise CheckpointError(f"checkpoint {path} (step {step}) was trained on other triplets than "
                                  f"{self.run_dir / 'triplets_train.npy'} (re-sampled since?); {start_over}")
        if self.time_budget is not None:  # the budget's steps were chosen when the run began: kept, never re-measured
            saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
            self.budget = resumed_plan(saved, self.time_budget.settings(), ckpt.get("budget"),
                                       f"{path} (step {step})", start_over)
            self.steps = int(saved["steps"])
        if step > self.steps:
            raise CheckpointError(f"checkpoint {path} is at step {step}, past steps={self.steps}; pass "
                                  f"--steps {step} or more to go on, or start over with --no-resume")
        load_model_state(self.model, ckpt, path)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {path}: optimizer state does not fit "
                                  f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); {start_over}") from None
        self.step = self.resumed_from = step
        history = ckpt.get("steps_history") or [[0, self.steps]]
        if history[-1][1] != self.steps:
            history = history + [[step, self.steps]]
        self.steps_history = [list(map(int, h)) for h in history]
        if ckpt.get("replans") is not None:
            self.replans = replans_from(ckpt["replans"])
        self.loop_s = float(ckpt.get("loop_s", 0.0))
        self.log.keep_before(self.step)
        return True

    # ---- the time budget -------------------------------------------------------------
    def measure_step_rate(self, warmup: int = CALIBRATION_WARMUP, steps: int = CALIBRATION_STEPS,
                          max_s: float = CALIBRATION_MAX_S) -> tuple[float, int, float]:
        """(steps/s, steps run, seconds) of `step_loss` on throwaway copies of the network and the
        optimiser (`budget.measure_step_rate`); the run itself is left as it was."""
        return measure_step_rate(self, warmup, steps, max_s)

    def apply_budget(self, steps_per_s: float | None = None, progress: bool = True, spent_s: float = 0.0,
                     evaluation_s: float = 0.0) -> BudgetPlan | None:
        """With a time budget: fix `steps` from the step rate (measured unless `steps_per_s` is
        given; a resumed run keeps its checkpoint's plan) and the training minutes
        (`TimeBudget.training_minutes`: `spent_s` already run, `evaluation_s` to keep free for the
        evaluation). Logs the plan."""
        if self.time_budget is None:
            return None
        if self.budget is None:
            minutes = self.time_budget.training_minutes(spent_s, evaluation_s)
            if steps_per_s is None:
                rate, n, spent = self.measure_step_rate(max_s=min(CALIBRATION_MAX_S, minutes * 60 / 10))
            else:
                rate, n, spent = float(steps_per_s), 0, 0.0
            self.budget = self.time_budget.plan(minutes, rate, calibration_steps=n, calibration_s=spent, spent_s=spent_s,
                                                measured=steps_per_s is None, evaluation_s=evaluation_s)
            self.steps = self.budget.steps
            if self.resumed_from is None:
                self.steps_history = [[0, self.budget.steps]]
        if progress and self.dist.is_main:
            logger.info(self.budget.describe())
        return self.budget

    # ---- one step --------------------------------------------------------------------
    def _gather(self, array: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        order = np.argsort(idx, kind="stable")  # sorted reads are kinder to a memory map
        out = np.empty((len(idx),) + array.shape[1:], dtype=array.dtype)
        out[order] = array[idx[order]]
        return to_device(torch.from_numpy(out), self.device)

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(inputs, the uint8 images beside stage features for a multiscale network or None,
        labels) of the 3B images of `step`: queries, then positives, then negatives."""
        t = self.source.batch(step)
        idx = t.T.reshape(-1)
        if self.device_images is not None:
            x = self.device_images[torch.from_numpy(idx).to(self.device)]
        else:
            x = self._gather(self.images, idx)
        im = None
        if self.from_stage and self.model.multiscale:
            if self.inputs.images is None:
                raise RankingError("the multiscale network needs the images beside the stage features")
            im = (self.device_side_images[torch.from_numpy(idx).to(self.device)]
                  if self.device_side_images is not None else self._gather(self.inputs.images, idx))
        if self.views is not None:  # instance triplets: the positive is a view of the query's own image
            rows, views = self.source.instance_rows(step)
            x, im = self.views.positives(x, im, t[:, 0], rows, views=views, step=step)
        if self.augment:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            if self.from_stage:
                flip = (torch.rand(len(x), generator=g) < 0.5).to(self.device)
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                if im is not None:  # the shallow paths see the same mirror as the feature map
                    im = torch.where(flip[:, None, None, None], im.flip(2), im)
            else:
                x = flip_and_shift(x, g)
        return x, im, self.labels[torch.from_numpy(idx)].to(self.device)

    def _extra_gap(self, query_labels: torch.Tensor, negative_labels: torch.Tensor) -> torch.Tensor | None:
        """The graded margin's addition to each triplet's gap, or None without one."""
        return None if self.graded is None else self.graded(query_labels, negative_labels)

    def _teacher_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen pretrained network's embedding of this step's inputs (its pooled features,
        as the baseline embeds), in the global batch's order."""
        with torch.no_grad(), autocast(self.device, self.amp, self.bf16_cpu):
            t = embed_batch(self.teacher, x, self.inputs.kind, baseline=True)
        return self._global_batch(t)

    def _global_batch(self, z: torch.Tensor) -> torch.Tensor:
        """This rank's rows of the queries, positives and negatives gathered into the global
        batch, in one-process order (see `distributed`); `z` itself without DDP."""
        if not self.dist.enabled:
            return z
        parts = distributed.gather_rows(z, self.dist)
        local = len(z) // 3
        return torch.cat([part[k * local:(k + 1) * local] for k in range(3) for part in parts])

    def step_loss(self, step: int) -> torch.Tensor:
        """One optimiser step; its loss, left on the device (no host sync: the loop syncs once per log
        step; ``float(...)`` of it syncs)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr * group["lr_scale"] * self.schedule.factor(step, self.steps, self.replans)
        x, im, y = self._batch(step)
        b = self.batch_size
        if self.dist.enabled:  # this rank's triplets: a slice of the queries, positives, negatives
            s = self.dist.shard(b)
            rows = torch.cat([torch.arange(s.start, s.stop) + k * b for k in range(3)]).to(x.device)
            x, im = x[rows], None if im is None else im[rows]
        with autocast(self.device, self.amp, self.bf16_cpu):
            z = embed_batch(self.model, x, self.inputs.kind, im)
        z = self._global_batch(z)
        q, p, n = z[:b], z[b:2 * b], z[2 * b:]
        loss = self.loss_fn(q, p, n, self._extra_gap(y[:b], y[2 * b:]))
        if self.miner is not None:
            hard = self.miner(q, y[:b], z, y, self.squared_distance)
            if self.views is not None:  # an instance row's: the nearest other image, of any class
                ids = torch.from_numpy(self.source.batch(step).T.reshape(-1)).to(z.device)
                rows = torch.tensor(self.source.instance_rows(step)[0], device=z.device)
                hard = torch.where(rows, self.miner(q, ids[:b], z, ids, self.squared_distance), hard)
            ok = hard >= 0
            if ok.any():
                loss = 0.5 * (loss + self.loss_fn(q[ok], p[ok], z[hard[ok]], self._extra_gap(y[:b][ok], y[hard[ok]])))
        if self.teacher is not None:
            loss = loss + self.distill_weight * self.distill(z, self._teacher_embedding(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_gradients(self.model.parameters(), self.dist)
        self.optimizer.step()
        return loss.detach()

    # ---- the loop --------------------------------------------------------------------
    def fit(self, resume: bool = True, stop_at: int | None = None, progress: bool = True) -> TrainResult:
        """Train until `steps` (or `stop_at`, to simulate an interruption)."""
        resumed = resume and (self.resumed_from is not None or self.resume())
        if not resumed:
            self.log.keep_before(0)  # a fresh start: no rows of an earlier attempt survive
        if self.time_budget is not None and self.budget is None:
            self.apply_budget(progress=progress)
        end = self.steps if stop_at is None else min(stop_at, self.steps)
        log = self.log.open()
        self.model.train()
        t0 = time.perf_counter()
        start_step, loss = self.step, float("nan")
        show = progress and self.dist.is_main
        bar = progress_bar(initial=self.step, total=self.steps, desc="train", enabled=show, unit="step")
        looked = (self.step, self.loop_s)  # the re-planner's last look: (step, loop seconds)
        # a run without a budget says how long it will take once its rate is known
        estimate_at = start_step + CALIBRATION_WARMUP + CALIBRATION_STEPS
        announce = show and self.budget is None and self.steps - estimate_at > CALIBRATION_STEPS
        t_warm = None

        def flush() -> float:
            """Write the pending rows (one host sync); the last loss written."""
            last = log.flush()
            return loss if last is None else last

        loop_before = self.loop_s
        try:
            while self.step < end:
                step = self.step
                log.add(step, self.step_loss(step), self.optimizer.param_groups[0]["lr"], time.perf_counter() - t0)
                self.step = step + 1
                bar.update(1)
                if self.step % self.log_every == 0:
                    loss = flush()
                    bar.set_postfix(loss=f"{loss:.4f}")
                if self.step % self.checkpoint_every == 0 and self.step < end:
                    loss = flush()
                    self.loop_s = loop_before + time.perf_counter() - t0
                    if self._replan(looked, show):
                        end = self.steps if stop_at is None else min(stop_at, self.steps)
                        bar.total = self.steps
                    looked = (self.step, self.loop_s)
                    self.save()
                if announce and self.step == start_step + CALIBRATION_WARMUP:
                    t_warm = time.perf_counter()
                elif announce and self.step == estimate_at and t_warm is not None:
                    rate = CALIBRATION_STEPS / (time.perf_counter() - t_warm)
                    logger.info(f"{self.steps:,} steps at {rate:.2f} steps/s ~ "
                                f"{format_minutes((self.steps - start_step) / rate)}"
                                + (f" (resumed at step {start_step:,})" if start_step else ""))
            loss = flush()
            bar.close()
        except DiskFullError:  # a checkpoint's, naming its file
            raise
        except OSError as e:  # the loss log's own writes
            if is_disk_full(e):
                raise disk_full_error(self.loss_log_path) from None
            raise
        finally:
            log.close()
        done = self.step - start_step
        self.loop_s = loop_before + time.perf_counter() - t0
        if done or not self.checkpoint_path.is_file():
            self.save()
        distributed.barrier(self.dist)  # the other ranks return once rank 0's checkpoint is written
        wall = time.perf_counter() - t0
        final = loss if done else self.log.last_loss()
        return TrainResult(self.checkpoint_path, self.loss_log_path, self.step, wall,
                           done * self.batch_size / wall if wall > 0 and done else 0.0,
                           final, done, self.resumed_from, self.steps_history,
                           asdict(self.budget) if self.budget else None,
                           [r.to_dict() for r in self.replans], self.loop_s)

    def _replan(self, looked: tuple[int, float], show: bool) -> bool:
        """At a checkpoint of a budgeted run: move the schedule's end when the rate of the steps
        since the last look (`looked`: step, loop seconds) fits another number of steps into the
        loop's time left (`budget.next_replan`); records the move, says so. Whether it moved."""
        if self.time_budget is None:
            return False
        move = next_replan(self.budget, self.step, self.steps, self.loop_s, looked)
        if self.dist.enabled:  # every rank follows rank 0's decision
            t = torch.tensor([-1 if move is None else move.steps], dtype=torch.int64, device=self.device)
            torch.distributed.broadcast(t, 0)
            new = int(t)
            move = None if new < 0 else move if move is not None and move.steps == new else \
                Replan(self.step, self.steps, new)
        if move is None:
            return False
        self.replans.append(move)
        self.steps = move.steps
        self.steps_history.append([self.step, move.steps])
        if show:
            logger.info(move.describe())
        return True
