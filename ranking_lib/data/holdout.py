"""The tuning split: training images held out to choose recipes on, so that val stays a test set.

With ``holdout_per_class = m``, `holdout_split` picks m training images of every class (seeded).
They never appear in the training triplets; the ``tune`` metrics rank them (as queries) against
the other training images (the database). Val is then evaluated once per final recipe.
"""

from __future__ import annotations

import numpy as np

from ranking_lib.core.errors import RankingError

__all__ = ["holdout_split"]

_SALT = 7919  # keeps the held-out choice independent of the triplet sampler's stream


def holdout_split(labels: np.ndarray, per_class: int, seed: int = 0,
                  class_ids: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held_out): sorted index arrays into `labels`; `per_class` of every class held out.

    Every class must keep at least two images (a positive needs another image of the class).
    """
    labels = np.asarray(labels)
    n = len(labels)
    if per_class <= 0:
        return np.arange(n), np.empty(0, dtype=np.int64)
    rng = np.random.default_rng([int(seed), _SALT])
    held = []
    for c in np.unique(labels):
        ids = np.flatnonzero(labels == c)
        if len(ids) - per_class < 2:
            name = class_ids[int(c)] if class_ids is not None and 0 <= int(c) < len(class_ids) else f"label {int(c)}"
            raise RankingError(f"class {name} has {len(ids)} training images: holding out {per_class} "
                               "would leave fewer than 2 to train on (lower holdout_per_class)")
        held.append(rng.choice(ids, size=per_class, replace=False))
    held_out = np.sort(np.concatenate(held)).astype(np.int64)
    kept = np.setdiff1d(np.arange(n), held_out).astype(np.int64)
    return kept, held_out
