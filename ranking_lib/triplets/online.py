"""Online triplet sampling (Wang et al. 2014, §4, Fig. 4): per-class buffers filled from an
image stream by weighted reservoir sampling, and triplets drawn from the buffers while training.

The stream is a seeded permutation of the training images, epoch after epoch. Every
`refresh_steps` steps the buffers are rebuilt from the next `stream_chunk` images of the stream:
each image j gets the key u_j^(1/r_j) (u uniform in (0, 1), r_j its total relevance, 1 without
relevance) and each class keeps the `buffer_size` largest keys among its streamed images, which
is what inserting the images one by one into a reservoir that evicts its smallest key gives
(tested equal against such a one-by-one reservoir). Each step then draws its batch from the buffers: queries with
probability proportional to r_i, positives and negatives as in `RelevanceTripletSampler`
(`samplers.draw_triplets`), out-of-class negatives uniform over the other classes' buffers.

Every draw is a function of (seed, step): the buffers of a step depend only on its round,
so a killed and resumed run draws the same batches as an uninterrupted one, and the checkpoint
needs no buffer state.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from ranking_lib.core.errors import RankingError
from ranking_lib.core.registry import Registry
from ranking_lib.triplets.relevance import RelevanceScores
from ranking_lib.triplets.samplers import TripletSampler, draw_triplets


def reservoir_keys(u: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Keys u^(1/w) of weighted reservoir sampling (larger weight, larger key on average)."""
    return np.power(u, 1.0 / weights)


def fill_buffers(stream: np.ndarray, keys: np.ndarray, labels: np.ndarray, num_classes: int,
                 capacity: int) -> list[np.ndarray]:
    """The content of every class buffer after offering `stream` (image indices, in order, with
    their `keys`) to empty reservoirs of `capacity`: per class, the images with the largest keys."""
    cls = labels[stream]
    order = np.lexsort((-keys, cls))  # by class, then key descending
    cls_sorted = cls[order]
    starts = np.searchsorted(cls_sorted, np.arange(num_classes))
    ends = np.searchsorted(cls_sorted, np.arange(num_classes), side="right")
    return [np.sort(stream[order[s:min(e, s + capacity)]]) for s, e in zip(starts, ends)]


class OnlineTriplets:
    """Triplets drawn per step from per-class reservoir buffers over an image stream.

    Args:
        labels: (N,) class labels of the training images.
        batch_size: triplets per step.
        buffer_size: images kept per class buffer.
        refresh_steps: steps between buffer rebuilds.
        stream_chunk: images streamed into each rebuild (default: 2 x buffer_size per class).
        features: golden features (N, D) for relevance weights (None: uniform, r = 1).
        out_of_class_fraction, tp, tr: as for `RelevanceTripletSampler` (in-class negatives
            need `features`).
        seed: seeds the stream, the keys and every draw.
        index: maps the images of `labels` to the indices triplets should hold (e.g. the kept
            training images when a tuning split is held out); default the identity.
    """

    def __init__(self, labels: np.ndarray, *, batch_size: int, buffer_size: int = 32, refresh_steps: int = 50,
                 stream_chunk: int | None = None, features: np.ndarray | None = None,
                 out_of_class_fraction: float = 1.0, tp: float = 0.6, tr: float = 0.1, seed: int = 0,
                 class_ids: list[str] | None = None, index: np.ndarray | None = None) -> None:
        TripletSampler(labels, seed, class_ids, "train")  # the same label checks
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        if self.index is not None and len(self.index) != len(labels):
            raise RankingError(f"index has {len(self.index)} entries for {len(labels)} labels")
        self.labels = np.asarray(labels, dtype=np.int64)
        if buffer_size < 2 or refresh_steps < 1 or batch_size < 1:
            raise RankingError(f"online sampling needs buffer_size >= 2, refresh_steps >= 1 and batch_size >= 1 "
                               f"(got {buffer_size}, {refresh_steps}, {batch_size})")
        if features is None and out_of_class_fraction < 1.0:
            raise RankingError("in-class negatives (out_of_class_fraction < 1) need relevance features")
        self.batch_size, self.buffer_size, self.refresh_steps = batch_size, buffer_size, refresh_steps
        self.num_classes = int(self.labels.max()) + 1
        self.stream_chunk = int(stream_chunk or 2 * buffer_size * self.num_classes)
        self.fraction, self.tp, self.tr, self.seed = float(out_of_class_fraction), float(tp), float(tr), int(seed)
        if features is None:  # uniform: cosine of identical unit vectors is 1 for every pair
            features = np.ones((len(self.labels), 1), dtype=np.float32)
        self.relevance = RelevanceScores(features, self.labels)
        h = hashlib.sha256(np.ascontiguousarray(self.labels).tobytes())
        h.update(repr((batch_size, buffer_size, refresh_steps, self.stream_chunk, self.fraction, self.tp,
                       self.tr, self.seed)).encode())
        h.update(np.ascontiguousarray(self.relevance.total).tobytes())
        if self.index is not None:
            h.update(self.index.tobytes())
        self.sha256 = h.hexdigest()
        """Identifies the source in checkpoints (as the triplet file's SHA-256 does)."""

    def _stream(self, start: int, count: int) -> np.ndarray:
        n = len(self.labels)
        out = []
        while count > 0:
            epoch, offset = divmod(start, n)
            take = _epoch_permutation(n, self.seed, epoch)[offset:offset + count]
            out.append(take)
            start += len(take)
            count -= len(take)
        return np.concatenate(out)

    @functools.lru_cache(maxsize=2)
    def buffers(self, round_: int) -> tuple[np.ndarray, ...]:
        """Buffer contents (one sorted index array per class) during round `round_`."""
        stream = self._stream(round_ * self.stream_chunk, self.stream_chunk)
        rng = np.random.default_rng([self.seed, 7, round_])
        u = rng.random(len(stream))
        keys = reservoir_keys(np.maximum(u, 1e-300), self.relevance.total[stream])
        pools = fill_buffers(stream, keys, self.labels, self.num_classes, self.buffer_size)
        return tuple(pools)

    def batch(self, step: int) -> np.ndarray:
        """The (batch_size, 3) triplets of `step`."""
        pools = list(self.buffers(step // self.refresh_steps))
        # classes whose buffer holds fewer than 2 images cannot give a query a positive
        usable = np.concatenate([p for p in pools if len(p) >= 2])
        rng = np.random.default_rng([self.seed, 11, step])
        w = self.relevance.total[usable]
        q = usable[rng.choice(len(usable), size=self.batch_size, p=w / w.sum())]
        everyone = np.concatenate(pools)

        def out_of_class(r: np.random.Generator, qs: np.ndarray) -> np.ndarray:
            others = [everyone[self.labels[everyone] != self.labels[x]] for x in qs]
            return np.array([o[r.integers(len(o))] for o in others], dtype=np.int64)

        t, _ = draw_triplets(rng, q, pools, relevance=self.relevance, out_of_class_fraction=self.fraction, tp=self.tp, tr=self.tr, out_of_class=out_of_class)
        return t if self.index is None else self.index[t]


TRIPLET_SOURCES: Registry = Registry("triplet_source")
"""Triplet source name -> the class drawing triplets while training, or None for ``presampled``
(the run's seeded triplet file) (the config field ``triplet_source``)."""
TRIPLET_SOURCES.add("presampled", None)
TRIPLET_SOURCES.add("online", OnlineTriplets)


@functools.lru_cache(maxsize=2)
def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    perm = np.random.default_rng([seed, 5, epoch]).permutation(n)
    perm.setflags(write=False)
    return perm
