"""The optimiser and its learning-rate schedule, each chosen by name from a registry
(the config fields ``optimizer`` and ``lr_schedule``); an unknown name is one RankingError."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ranking_lib.core.config import RunConfig
from ranking_lib.core.registry import Registry
from ranking_lib.models.model import EmbeddingNet
from ranking_lib.training.budget import Replan, schedule_progress

OPTIMIZERS: Registry = Registry("optimizer")
"""Optimiser name -> ``(param_groups, cfg) -> torch.optim.Optimizer`` (the config field ``optimizer``)."""
OPTIMIZERS.add("sgd", lambda params, cfg: torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                                           weight_decay=cfg.weight_decay, nesterov=True))
OPTIMIZERS.add("adam", lambda params, cfg: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay))
OPTIMIZERS.add("adamw", lambda params, cfg: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay))

LR_SCHEDULES: Registry = Registry("lr_schedule")
"""Schedule name -> lr multiplier at progress t (0..1) of the decay after the warm-up (the config
field ``lr_schedule``)."""
LR_SCHEDULES.add("cosine", lambda t: 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))
LR_SCHEDULES.add("constant", lambda t: 1.0)


def build_optimizer(cfg: RunConfig, model: EmbeddingNet) -> torch.optim.Optimizer:
    """Two parameter groups: the pretrained backbone (lr * backbone_lr_scale) and the head (lr)."""
    make = OPTIMIZERS.get(cfg.optimizer)
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    head = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    params = [{"params": head, "lr_scale": 1.0}]
    if backbone:
        params.append({"params": backbone, "lr_scale": cfg.backbone_lr_scale})
    return make(params, cfg)


def lr_factor(cfg: RunConfig, step: int, replans: Sequence[Replan] = ()) -> float:
    """Multiplier of cfg.lr at `step`: linear warm-up, then constant or cosine decay to 0 (over
    the schedule whose end the budget's `replans` moved: `budget.schedule_progress`)."""
    decay = LR_SCHEDULES.get(cfg.lr_schedule)
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.steps <= cfg.warmup_steps:
        return 1.0
    return decay(schedule_progress(step, cfg.steps, cfg.warmup_steps, replans))

