"""The choice fields of `RunConfig` and the registry holding each one's names.

Every registry lives in the module that builds its objects and refuses an unknown name there
(`core.registry.Registry.get`). This table sits above every layer, so core never imports a
builder: the CLI takes its flags' ``choices`` from it, and the pipeline steps (`workflow`), the
CLI and the notebook runner check a resolved config against it before any work starts.
``device`` is core's own choice (``auto``, ``cpu``, ``cuda`` or ``cuda:N``), checked by
`RunConfig.validate`.
"""

from __future__ import annotations

from ranking_lib.core.config import RunConfig
from ranking_lib.core.registry import Registry
from ranking_lib.models.backbones import BACKBONES
from ranking_lib.models.model import ARCHITECTURES, HEAD_INITS, HEADS
from ranking_lib.models.runtimes import FROZEN_RUNTIMES
from ranking_lib.retrieval.index import BACKENDS
from ranking_lib.retrieval.rerank import RERANKERS
from ranking_lib.training.optim import LR_SCHEDULES, OPTIMIZERS
from ranking_lib.triplets.miners import MINERS
from ranking_lib.triplets.online import TRIPLET_SOURCES
from ranking_lib.triplets.samplers import SAMPLERS

REGISTRIES: dict[str, Registry] = {r.field: r for r in (
    SAMPLERS, TRIPLET_SOURCES, BACKBONES, ARCHITECTURES, HEADS, HEAD_INITS, FROZEN_RUNTIMES, MINERS,
    OPTIMIZERS, LR_SCHEDULES, BACKENDS, RERANKERS,
)}
"""{RunConfig field: the registry of its names}."""


def choices(field: str) -> tuple[str, ...] | None:
    """The valid names of a choice field; None for a field that is not a registry's."""
    registry = REGISTRIES.get(field)
    return registry.names() if registry is not None else None


def check_choices(cfg: RunConfig) -> RunConfig:
    """`cfg` if every choice field names a registered choice; else the first unknown one is one
    RankingError (``backbone must be one of efficientnet_lite0, ... (got 'vgg')``)."""
    for field, registry in REGISTRIES.items():
        registry.check(getattr(cfg, field))
    return cfg
