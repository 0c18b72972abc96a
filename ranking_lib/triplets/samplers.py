"""Triplet sampling, done once before training so that training only reads images.

A triplet is three row indices into one split's image cache: (query, positive, negative).

`TripletSampler` (the course's sampler, the default):

* query: uniform over all images of the split;
* positive: uniform over the *other* images of the query's class (never the query itself);
* negative: uniform over the images of all other classes (out-of-class negative).

`RelevanceTripletSampler` (the paper's §4, eqs. 5-8) weights queries and positives by a
pairwise relevance and draws a fraction of the negatives from the query's own class; see
`ranking_lib.triplets.relevance`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import atomic_path, write_json
from ranking_lib.core.registry import Registry


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
        neg = self.out_of_class(rng, q)
        return np.stack([q, p, neg], axis=1).astype(np.int64)

    def out_of_class(self, rng: np.random.Generator, q: np.ndarray) -> np.ndarray:
        """A negative for each query: uniform over the images outside its class."""
        cpos = self._class_pos[q]
        start, count = self._starts[cpos], self._counts[cpos]
        m = rng.integers(0, len(self.labels) - count)
        return self._order[m + (m >= start) * count]


class RelevanceTripletSampler:
    """The paper's relevance-weighted sampling with in-class negatives (Wang et al. 2014, §4).

    Relevance r_ij of two images of one class is the cosine similarity of their golden features
    (`ranking_lib.triplets.relevance`); r_i = sum over the other images j of its class of r_ij.

    * query: drawn with probability proportional to r_i (eq. 6);
    * positive: another image of the query's class, probability proportional to min(T_p, r_i,i+)
      (eq. 7);
    * negative: with probability `out_of_class_fraction` uniform over the images of the other
      classes; otherwise an *in-class* negative from the same distribution as positives, subject
      to r_i,i+ - r_i,i- >= T_r (eq. 8) and never the query or the positive. An in-class draw
      only takes positives for which such a negative exists; a query with none at all gets an
      out-of-class negative, counted in `in_class_fallbacks`.

    Args:
        labels: class index of every image, shape (N,).
        features: golden features (N, D) (L2-normalised here).
        out_of_class_fraction: share of out-of-class negatives, in [0, 1] (paper's best: 0.2).
        tp: T_p, the cap on relevance in the positive (and in-class negative) weights.
        tr: T_r >= 0, the relevance margin between positive and in-class negative.
        seed, class_ids, split: as for `TripletSampler`.
    """

    def __init__(self, labels: np.ndarray, features: np.ndarray, *, out_of_class_fraction: float = 0.2,
                 tp: float = 0.6, tr: float = 0.1, seed: int = 0, class_ids: list[str] | None = None,
                 split: str | None = None) -> None:
        from ranking_lib.triplets.relevance import RelevanceScores

        self._base = TripletSampler(labels, seed, class_ids, split)  # validates the labels
        if not 0.0 <= out_of_class_fraction <= 1.0:
            raise RankingError(f"out_of_class_fraction must be in [0, 1] (got {out_of_class_fraction})")
        if tp <= 0 or tr < 0:
            raise RankingError(f"relevance thresholds need T_p > 0 and T_r >= 0 (got {tp}, {tr})")
        self.labels = self._base.labels
        self.seed = int(seed)
        self.fraction, self.tp, self.tr = float(out_of_class_fraction), float(tp), float(tr)
        self.relevance = RelevanceScores(features, self.labels)
        self.in_class_fallbacks = 0

    def sample(self, num_triplets: int) -> np.ndarray:
        """Return an (num_triplets, 3) int64 array of (query, positive, negative) indices."""
        if num_triplets < 1:
            raise RankingError(f"num_triplets must be >= 1 (got {num_triplets})")
        rng = np.random.default_rng(self.seed)
        rel = self.relevance
        q = rng.choice(len(self.labels), size=num_triplets, p=rel.total / rel.total.sum())
        pools = [rel.members(c) for c in range(rel.num_classes)]
        t, self.in_class_fallbacks = draw_triplets(rng, q, pools, relevance=rel, out_of_class_fraction=self.fraction, tp=self.tp, tr=self.tr,
                                                   out_of_class=self._base.out_of_class)
        return t

    def positive_probabilities(self, query: int) -> tuple[np.ndarray, np.ndarray]:
        """(candidates, probabilities) of the positive of `query` in an out-of-class triplet."""
        rel = self.relevance
        cand = rel.members(rel.class_of(query))
        w = _weights(rel.rows(np.array([query]), cand)[0], self.tp)
        w[cand == query] = 0
        return cand, w / w.sum()


_FLOOR = 1e-6  # every allowed candidate keeps a positive weight, even at relevance <= 0


def _weights(r: np.ndarray, tp: float) -> np.ndarray:
    return np.maximum(np.minimum(r, tp), _FLOOR)


def _draw_rows(rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
    """One column index per row of the non-negative weight matrix `w` (rows sum > 0)."""
    c = np.cumsum(w, axis=1)
    u = rng.random(len(w)) * c[:, -1]
    return np.minimum((c <= u[:, None]).sum(axis=1), w.shape[1] - 1)


def draw_triplets(rng: np.random.Generator, queries: np.ndarray, pools: list[np.ndarray], *, relevance,
                  out_of_class_fraction: float, tp: float, tr: float, out_of_class) -> tuple[np.ndarray, int]:
    """Positives and negatives for drawn `queries` (paper §4): shared by the pre-sampled
    `RelevanceTripletSampler` and the online buffers (`ranking_lib.triplets.online`).

    `pools[c]` holds the candidate images of class c (all of them, or a buffer's content) and
    must include each query of class c; `out_of_class(rng, q)` draws out-of-class negatives.
    Returns the (n, 3) triplets, in the order of `queries`, and the number of in-class draws
    that fell back to an out-of-class negative because no valid in-class negative existed.
    """
    n = len(queries)
    pos = np.empty(n, dtype=np.int64)
    neg = np.full(n, -1, dtype=np.int64)
    in_class = rng.random(n) >= out_of_class_fraction
    cls = relevance.class_of(queries)
    fallbacks = 0
    for c in np.unique(cls):
        rows = np.flatnonzero(cls == c)
        cand = pools[c]
        if len(cand) < 2:
            raise RankingError(f"class {c} has {len(cand)} candidate image(s): no positive can be drawn")
        q = queries[rows]
        r = relevance.rows(q, cand)                                # (m, k) relevance to candidates
        is_self = cand[None, :] == q[:, None]
        w = np.where(is_self, 0.0, _weights(r, tp))
        inc = in_class[rows]
        if inc.any():
            # a positive p is usable in-class when some k (not q, not p) has r_k <= r_p - T_r
            big = np.where(is_self, np.inf, r)
            order = np.argsort(big, axis=1)[:, :2]
            lo1 = np.take_along_axis(big, order[:, :1], 1)
            lo2 = np.take_along_axis(big, order[:, 1:2], 1)
            col = np.arange(len(cand))[None, :]
            usable = ((r - tr >= lo1) & (col != order[:, :1])) | (r - tr >= lo2)
            w_in = np.where(usable & ~is_self, w, 0.0)
            ok = w_in.sum(axis=1) > 0
            fallbacks += int((inc & ~ok).sum())
            inc = inc & ok
            w = np.where(inc[:, None], w_in, w)
        j = _draw_rows(rng, w)
        pos[rows] = cand[j]
        if inc.any():
            sel = np.flatnonzero(inc)
            rp = r[sel, j[sel]][:, None]
            allowed = (r[sel] <= rp - tr) & ~is_self[sel] & (np.arange(len(cand))[None, :] != j[sel][:, None])
            neg[rows[sel]] = cand[_draw_rows(rng, np.where(allowed, _weights(r[sel], tp), 0.0))]
    out = neg < 0
    neg[out] = out_of_class(rng, queries[out])
    return np.stack([queries, pos, neg], axis=1).astype(np.int64), fallbacks


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


def load_triplets(path: str | Path, num_images: int | None = None, *, expect: dict | None = None) -> np.ndarray:
    """Load triplets saved by :func:`save_triplets`; check they index a split of `num_images`
    and that their sidecar records the settings in `expect` (``{"seed": 5, ...}``; a key the
    sidecar lacks is not checked, except ``sampler``, whose absence means ``uniform``)."""
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
    if not isinstance(side.get("sha256"), str):
        raise RankingError(f"triplet file {path}: its sidecar {path.with_suffix('.json').name} has no sha256, so its "
                           "content cannot be checked (edited?); re-run 'sample'")
    if side["sha256"] != _digest(t):
        raise RankingError(f"triplet file {path} is damaged or was modified (its checksum differs from "
                           f"{path.with_suffix('.json').name}); re-run 'sample'")
    if len(t) == 0:
        raise RankingError(f"triplet file {path} holds no triplets (shape {t.shape}): there is nothing to train "
                           "or score with; re-run 'sample' (--num-triplets, --val-triplets at least 1)")
    _check_settings(path, side, expect or {})
    if num_images is not None and (t.min() < 0 or t.max() >= num_images):
        raise RankingError(
            f"triplet file {path} indexes images up to {int(t.max())} but the split has "
            f"{num_images}: it was sampled for other data (re-run 'sample')"
        )
    return t


def _check_settings(path: Path, side: dict, expect: dict) -> None:
    """Refuse triplets whose sidecar records other sampling settings than `expect` (see
    :func:`load_triplets`), naming the first that differs."""
    for key, want in expect.items():
        have = side.get(key, "uniform" if key == "sampler" else None)
        if have is not None and have != want:
            raise RankingError(f"triplet file {path} was sampled with {key}={have!r}, but the run's config says "
                               f"{key}={want!r}: they are another run's triplets or the config changed: use the "
                               "settings they were sampled with, or re-run 'sample'")


SAMPLERS: Registry = Registry("sampler")
"""Sampler name -> the class drawing a run's training triplets, or None for ``auto`` (relevance
when out_of_class_fraction < 1: `RunConfig.uses_relevance`) (the config field ``sampler``)."""
SAMPLERS.add("auto", None)
SAMPLERS.add("uniform", TripletSampler)
SAMPLERS.add("relevance", RelevanceTripletSampler)
