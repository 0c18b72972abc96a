"""Instance triplets, mixed into any triplet source.

Class triplets (query, positive of its class, negative) teach the network that a class is one
place; nothing in them keeps two images of one class apart, so the loss is lowest when each class
collapses to a point. An instance triplet asks for the finest grain of similarity: its positive
is another *view* of the query's own image (`training.views` makes it), its negative another
image of the query's class (the paper's in-class negative at its finest grain; with batch-hard
mining also the batch's hardest other image).

`InstanceTriplets` wraps a source with ``batch(step)`` and ``sha256`` (pre-sampled or online):
each step a seeded share of the source's triplets (``round(fraction * B)`` rows, drawn from
(seed, step)) becomes instance triplets, (q, q, n) with n uniform over the other images of q's
class, and `instance_rows` says which rows and (with K cached views) which view of q each
reads. Every draw is a function of (seed, step), so a resumed run draws what an uninterrupted
one does.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from ranking_lib.core.errors import RankingError


class InstanceTriplets:
    """A triplet source with instance triplets mixed in.

    Args:
        source: the class-triplet source (``batch(step)`` -> (B, 3) image indices, ``sha256``).
        labels: (N,) class labels of all images the indices point into.
        fraction: share of each step's triplets made instance triplets, in (0, 1].
        num_views: K cached views per image (each instance row draws one), 0 for live views.
        seed: seeds which rows, their negatives and their views.
        candidates: the images negatives may be drawn from (the training images not held out);
            default all. Every query must be one of them.
    """

    def __init__(self, source, labels: np.ndarray, fraction: float, *, num_views: int = 0, seed: int = 0,
                 candidates: np.ndarray | None = None) -> None:
        if not 0 < fraction <= 1:
            raise RankingError(f"instance_fraction must be in (0, 1] for instance triplets (got {fraction})")
        if num_views < 0:
            raise RankingError(f"num_views must be >= 0 (got {num_views})")
        self.source, self.fraction, self.num_views, self.seed = source, float(fraction), int(num_views), int(seed)
        self.labels = np.asarray(labels, dtype=np.int64)
        cand = np.arange(len(self.labels)) if candidates is None else np.unique(np.asarray(candidates, dtype=np.int64))
        order = cand[np.argsort(self.labels[cand], kind="stable")]  # candidates grouped by class
        n_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        self._pool = order
        self._counts = np.bincount(self.labels[order], minlength=n_classes)
        self._starts = np.concatenate([[0], np.cumsum(self._counts)[:-1]])
        self._rank = np.full(len(self.labels), -1, dtype=np.int64)  # an image's place in its class's pool
        self._rank[order] = np.arange(len(order)) - self._starts[self.labels[order]]
        h = hashlib.sha256(str(source.sha256).encode())
        h.update(repr(("instance", self.fraction, self.num_views, self.seed)).encode())
        h.update(np.ascontiguousarray(cand).tobytes())
        self.sha256 = h.hexdigest()
        """Identifies the source in checkpoints: the class source's, the share, K, the seed, the candidates."""

    @functools.lru_cache(maxsize=4)
    def _plan(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = np.array(self.source.batch(step), dtype=np.int64, copy=True)
        b = len(t)
        rng = np.random.default_rng([self.seed, 7919, int(step)])
        rows = np.zeros(b, dtype=bool)
        rows[rng.choice(b, size=int(round(self.fraction * b)), replace=False)] = True
        q = t[rows, 0]
        rank, lab = self._rank[q], self.labels[q]
        if (rank < 0).any():
            raise RankingError(f"image {int(q[np.argmax(rank < 0)])} is a query but not a candidate of instance triplets")
        count = self._counts[lab]
        if (count < 2).any():
            raise RankingError(f"class {int(lab[np.argmax(count < 2)])} has one candidate image: "
                               "no other image of the class can be an instance triplet's negative")
        j = (rng.random(len(q)) * (count - 1)).astype(np.int64)  # uniform over the class's other images
        t[rows, 1] = q
        t[rows, 2] = self._pool[self._starts[lab] + j + (j >= rank)]
        views = np.full(b, -1, dtype=np.int64)
        if self.num_views:
            views[rows] = rng.integers(0, self.num_views, len(q))
        for a in (t, rows, views):
            a.setflags(write=False)
        return t, rows, views

    def batch(self, step: int) -> np.ndarray:
        """The (B, 3) triplets of `step`; an instance row is (q, q, another image of q's class): its
        positive slot names the image whose view the trainer puts there."""
        return self._plan(step)[0]

    def instance_rows(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, views) of `step`: which rows are instance triplets (bool (B,)), and for each the
        cached view of its query it reads (0..K-1; -1 for class rows and for live views)."""
        _, rows, views = self._plan(step)
        return rows, views
