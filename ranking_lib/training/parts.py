"""What a `Trainer` is handed: the optimiser, the ranking loss, the miner and the optional
fine-grained terms, built in one place (`build_parts`, from plain values that `run_settings` takes
from the config), as pytorch-metric-learning's trainers are handed theirs. The trainer runs the
loop; it builds none of them."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ranking_lib.core.errors import RankingError
from ranking_lib.training.losses import GradedMargin, RankingLoss, WithinClassDistillation
from ranking_lib.triplets.miners import MINERS


@dataclass
class TrainingParts:
    """The built parts of one training run."""

    optimizer: torch.optim.Optimizer
    loss: RankingLoss
    miner: Callable | None = None
    """Batch-hard (or other) negatives on top of the pre-sampled ones (`triplets.miners`); None: none."""
    teacher: nn.Module | None = None
    """The network as built, frozen: the within-class distances the distillation keeps (None: no
    distillation term)."""
    distill_weight: float = 0.0
    graded: GradedMargin | None = None
    """The graded margin (None: the plain gap)."""

    def __post_init__(self) -> None:
        if (self.teacher is None) != (self.distill_weight <= 0):
            raise RankingError("a distillation term needs both a teacher and a weight > 0")
        self.distill = WithinClassDistillation() if self.teacher is not None else None


def build_parts(model: nn.Module, optimizer: torch.optim.Optimizer, *, gap: float, squared_distance: bool = False,
                miner: str = "none", distill_weight: float = 0.0, graded_margin: float = 0.0,
                class_similarity=None) -> TrainingParts:
    """The parts of a run, for `model` as built (before any step; a resumed run builds them the
    same way before loading its checkpoint, so its teacher is the pretrained network again):
    `optimizer` (`optim.build_optimizer`), the ranking loss of `gap`, the `miner` by name
    (`MINERS`), within-class distillation of `distill_weight` and the graded margin of
    `graded_margin` over `class_similarity`, the (C, C) class similarity in [0, 1]."""
    if graded_margin > 0 and class_similarity is None:
        raise RankingError("graded_margin needs the classes' similarity (class_similarity)")
    teacher = copy.deepcopy(model).eval().requires_grad_(False) if distill_weight > 0 else None
    return TrainingParts(
        optimizer=optimizer,
        loss=RankingLoss(gap, squared_distance),
        miner=MINERS.get(miner),
        teacher=teacher, distill_weight=distill_weight if teacher is not None else 0.0,
        graded=GradedMargin(class_similarity, graded_margin) if graded_margin > 0 else None)
