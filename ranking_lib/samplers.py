"""Triplet sampling, done once before training so that training only reads images.

A triplet is three row indices into one split's image cache: (query, positive, negative).

* query: uniform over all images of the split;
* positive: uniform over the *other* images of the query's class (never the query itself);
* negative: uniform over the images of all other classes (out-of-class negative).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ranking_lib.errors import RankingError
from ranking_lib.fileio import atomic_path


class TripletSampler:
    """Samples (query, positive, negative) index triplets from integer class labels.

    Args:
        labels: class index of every image, shape (N,).
        seed: seeds the generator; the same labels and seed give the same triplets.
    """

    def __init__(self, labels: np.ndarray, seed: int = 0) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise RankingError("TripletSampler needs a non-empty 1-D label array")
        self.labels = labels.astype(np.int64)
        self.seed = int(seed)
        order = np.argsort(self.labels, kind="stable")
        classes, starts, counts = np.unique(self.labels[order], return_index=True, return_counts=True)
        if len(classes) < 2:
            raise RankingError("triplet sampling needs at least 2 classes (out-of-class negatives)")
        small = classes[counts < 2]
        if len(small):
            raise RankingError(
                f"class {int(small[0])} has fewer than 2 images: no positive can be drawn for it"
            )
        self._order = order  # image indices grouped by class
        self._classes = classes
        self._starts = starts
        self._counts = counts
        # position of each image's class in `classes`
        self._class_pos = np.searchsorted(classes, self.labels)
        # position of each image inside its class block
        self._rank_in_class = np.empty(len(labels), dtype=np.int64)
        self._rank_in_class[order] = np.arange(len(labels)) - np.repeat(starts, counts)

    def sample(self, num_triplets: int) -> np.ndarray:
        """Return an (num_triplets, 3) int64 array of (query, positive, negative) indices."""
        if num_triplets < 1:
            raise RankingError(f"num_triplets must be >= 1 (got {num_triplets})")
        rng = np.random.default_rng(self.seed)
        n = len(self.labels)
        q = rng.integers(0, n, size=num_triplets)
        cpos = self._class_pos[q]
        start, count = self._starts[cpos], self._counts[cpos]
        # positive: uniform over the count - 1 other members of the class
        r = rng.integers(0, count - 1)
        r = r + (r >= self._rank_in_class[q])
        p = self._order[start + r]
        # negative: uniform over the n - count images outside the class
        m = rng.integers(0, n - count)
        m = m + (m >= start) * count
        neg = self._order[m]
        return np.stack([q, p, neg], axis=1).astype(np.int64)


def save_triplets(path: str | Path, triplets: np.ndarray, meta: dict | None = None) -> Path:
    """Save triplets as ``.npy`` (atomically) with a ``.json`` sidecar describing them."""
    path = Path(path)
    with atomic_path(path) as tmp:
        np.save(tmp, np.asarray(triplets, dtype=np.int64))
    side = path.with_suffix(".json")
    side.write_text(json.dumps({"num_triplets": int(len(triplets)), **(meta or {})}, indent=2))
    return path


def load_triplets(path: str | Path, num_images: int | None = None) -> np.ndarray:
    """Load triplets saved by :func:`save_triplets`; check they index a split of `num_images`."""
    path = Path(path)
    if not path.is_file():
        raise RankingError(f"triplet file not found: {path} (run the 'sample' step first)")
    t = np.load(path)
    if t.ndim != 2 or t.shape[1] != 3:
        raise RankingError(f"triplet file {path} has shape {t.shape}, expected (N, 3)")
    if num_images is not None and (t.min() < 0 or t.max() >= num_images):
        raise RankingError(
            f"triplet file {path} indexes images up to {int(t.max())} but the split has "
            f"{num_images}: it was sampled for other data (re-run 'sample')"
        )
    return t
