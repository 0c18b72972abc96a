"""The optimiser and its learning-rate schedule, each chosen by name from a registry
(the config fields ``optimizer`` and ``lr_schedule``); an unknown name is one RankingError where
the object is built."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ranking_lib.core.registry import Registry
from ranking_lib.models.model import EmbeddingNet
from ranking_lib.training.budget import Replan, schedule_progress

OPTIMIZERS: Registry = Registry("optimizer")
"""Optimiser name -> ``(param_groups, lr, weight_decay, momentum) -> torch.optim.Optimizer`` (the
config field ``optimizer``)."""
OPTIMIZERS.add("sgd", lambda params, lr, weight_decay, momentum: torch.optim.SGD(
    params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True))
OPTIMIZERS.add("adam", lambda params, lr, weight_decay, momentum: torch.optim.Adam(
    params, lr=lr, weight_decay=weight_decay))
OPTIMIZERS.add("adamw", lambda params, lr, weight_decay, momentum: torch.optim.AdamW(
    params, lr=lr, weight_decay=weight_decay))
# torch's fused AdamW kernel: the same update in one pass over the parameters; 1.02x the profile's
# step on a native-bf16 Xeon, 1.01x held to AVX2 (docs/runs/bench_step_levers, not adopted)
OPTIMIZERS.add("adamw_fused", lambda params, lr, weight_decay, momentum: torch.optim.AdamW(
    params, lr=lr, weight_decay=weight_decay, fused=True))

LR_SCHEDULES: Registry = Registry("lr_schedule")
"""Schedule name -> lr multiplier at progress t (0..1) of the decay after the warm-up (the config
field ``lr_schedule``)."""
LR_SCHEDULES.add("cosine", lambda t: 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))
LR_SCHEDULES.add("constant", lambda t: 1.0)


def build_optimizer(model: EmbeddingNet, *, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                    backbone_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """Two parameter groups: the pretrained backbone (lr * backbone_lr_scale) and the head (lr);
    `name` one of `OPTIMIZERS` (refused in one line otherwise)."""
    make = OPTIMIZERS.get(name)
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    head = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    params = [{"params": head, "lr_scale": 1.0}]
    if backbone:
        params.append({"params": backbone, "lr_scale": backbone_lr_scale})
    return make(params, lr, weight_decay, momentum)


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate over a run: `lr` after a linear warm-up of `warmup_steps`, then the decay
    `kind` (one of `LR_SCHEDULES`, refused in one line where it is built) to the run's last step."""

    lr: float
    kind: str = "cosine"
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        LR_SCHEDULES.check(self.kind)

    def factor(self, step: int, steps: int, replans: Sequence[Replan] = ()) -> float:
        """Multiplier of `lr` at `step` of a run of `steps`: linear warm-up, then the decay (over
        the schedule whose end the budget's `replans` moved: `budget.schedule_progress`)."""
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if steps <= self.warmup_steps:
            return 1.0
        return LR_SCHEDULES.get(self.kind)(schedule_progress(step, steps, self.warmup_steps, replans))
