"""The pre-sampled triplet source: the triplet file of ``sample`` walked in a seeded order, each
epoch its own permutation, so a step's triplets follow from (seed, step) alone and a resumed run
reproduces the uninterrupted one. `online.OnlineTriplets` and `instance.InstanceTriplets` are the
other sources a `Trainer` takes."""

from __future__ import annotations

import functools
import hashlib

import numpy as np


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The seeded order of the triplets in one epoch (computed once per epoch, not per step)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    perm.setflags(write=False)
    return perm


def batch_triplets(triplets: np.ndarray, step: int, batch_size: int, seed: int) -> np.ndarray:
    """The triplets of `step`: walks a per-epoch seeded permutation of all triplets."""
    n = len(triplets)
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        take = _epoch_order(n, seed, epoch)[offset: offset + batch_size - len(out)]
        out.extend(take.tolist())
    return triplets[np.asarray(out)]


class PresampledTriplets:
    """The triplet source of a pre-sampled triplet file: each step walks a seeded per-epoch
    permutation (`batch_triplets`). `OnlineTriplets` (`ranking_lib.triplets.online`) is the other source."""

    def __init__(self, triplets: np.ndarray, batch_size: int, seed: int) -> None:
        self.triplets = np.asarray(triplets)
        self.batch_size, self.seed = batch_size, seed
        self.sha256 = hashlib.sha256(np.ascontiguousarray(self.triplets, dtype=np.int64)).hexdigest()

    def batch(self, step: int) -> np.ndarray:
        return batch_triplets(self.triplets, step, self.batch_size, self.seed)
