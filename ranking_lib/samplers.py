"""Triplet sampling, done once before training so that training only reads images.

A triplet is three row indices into one split's image cache: (query, positive, negative).

* query: uniform over all images of the split;
* positive: uniform over the *other* images of the query's class (never the query itself);
* negative: uniform over the images of all other classes (out-of-class negative).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ranking_lib.errors import RankingError
from ranking_lib.fileio import atomic_path, write_json


class TripletSampler:
    """Samples (query, positive, negative) index triplets from integer class labels.

    Args:
        labels: class index of every image, shape (N,).
        seed: seeds the generator; the same labels and seed give the same triplets.
        class_ids: names of the classes by label (e.g. wnids), used in error messages.
        split: the split the labels come from, used in error messages.
    """

    def __init__(self, labels: np.ndarray, seed: int = 0, class_ids: list[str] | None = None,
                 split: str | None = None) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise RankingError("TripletSampler needs a non-empty 1-D label array")
        self.labels = labels.astype(np.int64)
        self.seed = int(seed)
        order = np.argsort(self.labels, kind="stable")
        classes, starts, counts = np.unique(self.labels[order], return_index=True, return_counts=True)
        where = f" of the {split} split" if split else ""
        if len(classes) < 2:
            raise RankingError(f"triplet sampling needs at least 2 classes{where} (out-of-class negatives)")
        small = classes[counts < 2]
        if len(small):
            c = int(small[0])
            name = f"{class_ids[c]} (label {c})" if class_ids is not None and 0 <= c < len(class_ids) else f"label {c}"
            more = f"; {len(small) - 1} more such classes" if len(small) > 1 else ""
            raise RankingError(
                f"class {name}{where} has {int(counts[counts < 2][0])} image(s): "
                f"no positive can be drawn for it{more}"
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
    arr = np.ascontiguousarray(triplets, dtype=np.int64)
    side = path.with_suffix(".json")
    side.unlink(missing_ok=True)  # never a sidecar vouching for other triplets
    with atomic_path(path, need=arr.nbytes + 128) as tmp:
        np.save(tmp, arr)
    write_json(side, {"num_triplets": int(len(arr)), "sha256": _digest(arr), **(meta or {})})
    return path


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr, dtype=np.int64)).hexdigest()


def load_triplets(path: str | Path, num_images: int | None = None) -> np.ndarray:
    """Load triplets saved by :func:`save_triplets`; check they index a split of `num_images`."""
    path = Path(path)
    if not path.is_file():
        raise RankingError(f"triplet file not found: {path} (run the 'sample' step first)")
    try:
        t = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise RankingError(f"triplet file {path} is unreadable ({str(e).splitlines()[0]}); re-run 'sample'") from None
    if t.ndim != 2 or t.shape[1] != 3 or t.dtype.kind not in "iu":
        raise RankingError(f"triplet file {path} has shape {t.shape} ({t.dtype}), expected (N, 3) integers")
    try:
        side = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        side = None
    if not isinstance(side, dict):
        raise RankingError(f"triplet file {path} has no readable sidecar {path.with_suffix('.json').name}; re-run 'sample'")
    if "sha256" in side and side["sha256"] != _digest(t):
        raise RankingError(f"triplet file {path} is damaged or was modified (its checksum differs from "
                           f"{path.with_suffix('.json').name}); re-run 'sample'")
    if num_images is not None and (t.min() < 0 or t.max() >= num_images):
        raise RankingError(
            f"triplet file {path} indexes images up to {int(t.max())} but the split has "
            f"{num_images}: it was sampled for other data (re-run 'sample')"
        )
    return t
