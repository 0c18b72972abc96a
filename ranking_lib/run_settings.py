"""The run's config turned into plain arguments for the layers below, at the `workflow` boundary.

`workflow` hands `models/`, `triplets/` and `training/` what they need as plain values, as
`run_files.index_options` does for `retrieval/`; nothing below this layer reads a `RunConfig`
field by field for a network or its inputs.
"""

from __future__ import annotations

import numpy as np

from ranking_lib.core.config import RunConfig
from ranking_lib.core.errors import RankingError
from ranking_lib.models.stage_cache import FeatureOptions

__all__ = ["class_similarity", "feature_options", "model_kwargs"]


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
