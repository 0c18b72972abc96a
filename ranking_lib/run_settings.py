"""The run's config turned into plain arguments for the layers below, at the `workflow` boundary.

`workflow` hands `models/`, `triplets/` and `training/` what they need as plain values, as
`run_files.index_options` does for `retrieval/`; nothing below this layer reads a `RunConfig`
field by field for a network, its inputs or its training (the trainer is handed built parts and
plain settings: `make_trainer`).
"""

from __future__ import annotations

import numpy as np

from ranking_lib.core.config import RunConfig
from ranking_lib.core.errors import RankingError
from ranking_lib.core.plan import Workload
from ranking_lib.models.stage_cache import FeatureOptions
from ranking_lib.training.budget import TimeBudget
from ranking_lib.training.optim import LRSchedule, build_optimizer
from ranking_lib.training.parts import TrainingParts, build_parts
from ranking_lib.training.trainer import Trainer

__all__ = ["class_similarity", "feature_options", "make_trainer", "model_kwargs", "trainer_kwargs", "training_parts",
           "workload"]


def model_kwargs(cfg: RunConfig, **over) -> dict:
    """`build_model`'s arguments for the run's network (`over`: fields replaced, e.g. ``architecture``)."""
    c = cfg.replace(**over) if over else cfg
    return dict(seed=c.seed, backbone=c.backbone, embedding_dim=c.embedding_dim, pretrained=c.pretrained,
                input_size=c.input_size, head=c.head,
                normalize_embeddings=c.normalize_embeddings, freeze_stages=c.freeze_stages,
                channels_last=c.channels_last, freeze_bn=c.freeze_bn, architecture=c.architecture)


def feature_options(cfg: RunConfig) -> FeatureOptions:
    """How the run computes its frozen stages' outputs and what its network reads."""
    return FeatureOptions(pretrained=cfg.pretrained, batch_size=cfg.embed_batch_size, device=cfg.device,
                          bf16_cpu=cfg.bf16_cpu, runtime=cfg.frozen_runtime, cache_stages=cfg.cache_stage_features)


def workload(cfg: RunConfig) -> Workload:
    """What the run will do, for its time estimate (`core.plan.describe_plan`, `evaluation_seconds`)."""
    return Workload(**{name: getattr(cfg, name) for name in Workload.__dataclass_fields__})


def class_similarity(cfg: RunConfig, wnids) -> np.ndarray | None:
    """The classes' Wu–Palmer similarity a graded margin needs (``graded_margin``), else None;
    one line when WordNet or WordNet class ids are missing."""
    if cfg.graded_margin <= 0:
        return None
    from ranking_lib.retrieval.semantic import load_hierarchy

    hierarchy, note = load_hierarchy(wnids, cfg.wordnet_dir)
    if hierarchy is None:
        raise RankingError(f"graded_margin={cfg.graded_margin:g} grades by WordNet, which is not available here "
                           f"({note.rsplit(': WordNet-graded', 1)[0]}): set graded_margin 0")
    return hierarchy.similarity


def training_parts(cfg: RunConfig, model, class_similarity: np.ndarray | None = None) -> TrainingParts:
    """The optimiser, loss, miner and fine-grained terms the run names, for `model` as built
    (`class_similarity`: the graded margin's, from `class_similarity`)."""
    optimizer = build_optimizer(model, name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                momentum=cfg.momentum, backbone_lr_scale=cfg.backbone_lr_scale)
    return build_parts(model, optimizer, gap=cfg.gap, squared_distance=cfg.squared_distance, miner=cfg.miner,
                       distill_weight=cfg.distill_weight, graded_margin=cfg.graded_margin,
                       class_similarity=class_similarity)


def trainer_kwargs(cfg: RunConfig) -> dict:
    """`Trainer`'s settings of the run: steps, batch, seed, schedule, precision, logging, the time
    budget (None without one) and the settings its checkpoints keep."""
    budget = TimeBudget(cfg.train_minutes, cfg.budget_minutes, cfg.warmup_steps) if cfg.budgeted else None
    return dict(run_dir=cfg.run_dir, steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.seed,
                schedule=LRSchedule(cfg.lr, cfg.lr_schedule, cfg.warmup_steps), device=cfg.device, amp=cfg.amp,
                bf16_cpu=cfg.bf16_cpu, augment=cfg.augment, squared_distance=cfg.squared_distance,
                log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, budget=budget,
                settings=cfg.to_dict())


def make_trainer(cfg: RunConfig, model, inputs, labels, triplets, *, class_similarity: np.ndarray | None = None,
                 **over) -> Trainer:
    """The run's `Trainer` of `model`, handed its parts (`training_parts`) and settings
    (`trainer_kwargs`; `over` replaces some, e.g. ``run_dir``, ``replans``, ``views``)."""
    return Trainer(model, inputs, labels, triplets, parts=training_parts(cfg, model, class_similarity),
                   **{**trainer_kwargs(cfg), **over})
