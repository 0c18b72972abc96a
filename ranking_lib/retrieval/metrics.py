"""Evaluation metrics for embeddings. Every metric is returned as a percentage (0-100, Python float).

Conventions: ``neighbour_labels`` is a (Q, K) integer array whose row i holds the labels of query
i's database neighbours sorted from nearest to farthest (the query itself already removed when the
queries are database items); ``query_labels`` is (Q,).
"""

from __future__ import annotations

import numpy as np
import torch

from ranking_lib.core.errors import RankingError


def _to_numpy(x, name: str, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    return a


def _check_neighbours(neighbour_labels, query_labels, k: int | None = None):
    nl = _to_numpy(neighbour_labels, "neighbour_labels")
    ql = _to_numpy(query_labels, "query_labels")
    if nl.ndim != 2:
        raise RankingError(
            f"neighbour_labels must be a 2-D (Q, K) array (got shape {nl.shape})"
        )
    if ql.ndim != 1 or len(ql) != len(nl):
        raise RankingError(
            f"query_labels must be (Q,) = ({len(nl)},) to match neighbour_labels (got shape {ql.shape})"
        )
    if len(nl) == 0:
        raise RankingError("no queries to evaluate (Q = 0)")
    if k is not None and (
        isinstance(k, bool)
        or not isinstance(k, (int, np.integer))
        or not 1 <= k <= nl.shape[1]
    ):
        raise RankingError(
            f"k={k} must be between 1 and {nl.shape[1]} (neighbour columns)"
        )
    return nl, ql


# ---------------------------------------------------------------------------------- triplets
def triplet_accuracy(anchor, positive, negative) -> float:
    """Percentage of triplets ranked correctly: ``100 * mean(||a - p|| < ||a - n||)``.

    The comparison is strict, so a tie (``||a - p|| == ||a - n||``) counts as wrong. Inputs are
    (T, d) numpy arrays or torch tensors (1-D inputs are one triplet); distances are computed in
    float64.
    """
    a, p, n = (
        np.atleast_2d(_to_numpy(t, "x", np.float64))
        for t in (anchor, positive, negative)
    )
    if a.shape != p.shape or a.shape != n.shape or a.ndim != 2:
        raise RankingError(
            f"anchor, positive and negative must have the same (T, d) shape "
            f"(got {a.shape}, {p.shape}, {n.shape})"
        )
    if len(a) == 0:
        raise RankingError("triplet accuracy needs at least one triplet")
    d_ap = np.sqrt(((a - p) ** 2).sum(1))
    d_an = np.sqrt(((a - n) ** 2).sum(1))
    return float(100.0 * np.mean(d_ap < d_an))


def triplet_accuracy_from_index(embeddings, triplets, chunk_size: int = 16384) -> float:
    """:func:`triplet_accuracy` of ``embeddings[triplets[:, 0]]`` (anchor/query),
    ``embeddings[triplets[:, 1]]`` (positive) and ``embeddings[triplets[:, 2]]`` (negative).

    Args:
        embeddings: (N, d) array or tensor.
        triplets: (T, 3) integer row indices into ``embeddings``.
    """
    e = _to_numpy(embeddings, "embeddings")
    t = _to_numpy(triplets, "triplets")
    if e.ndim != 2:
        raise RankingError(
            f"embeddings must be a 2-D (N, d) array (got shape {e.shape})"
        )
    if t.ndim != 2 or t.shape[1] != 3 or t.dtype.kind not in "iu":
        raise RankingError(
            f"triplets must be an integer (T, 3) array (got {t.dtype} {t.shape})"
        )
    if t.size and (t.min() < 0 or t.max() >= len(e)):
        raise RankingError(
            f"triplet indices must be in [0, {len(e) - 1}] (there are {len(e)} embeddings)"
        )
    if len(t) == 0:
        raise RankingError("triplet accuracy needs at least one triplet")
    # in chunks: 600k triplets x 1280-d in float64 would need ~18 GB at once
    correct = 0.0
    for s in range(0, len(t), chunk_size):
        c = t[s : s + chunk_size]
        correct += triplet_accuracy(e[c[:, 0]], e[c[:, 1]], e[c[:, 2]]) * len(c)
    return float(correct / len(t))


def score_at_top_k(embeddings, triplets, k: int = 30, index=None) -> dict:
    """Score at top-K (Wang et al. 2014, section 6.3), adapted to this project's triplets.

    The paper ranks 1,000 images per text query and, over its labelled triplets, counts among
    those whose positive *or* negative is in the query's top-K results how many are ranked
    correctly minus how many are ranked wrongly. Here the triplets are the split's sampled
    triplets (val: three val images each); each query's ranking is over all images of the same
    split (``embeddings``), the query itself excluded, by Euclidean distance (ties broken by index);
    its top-K are its K nearest. For every triplet (q, p, n) with p or n among q's top-K:
    correct = ``||q - p|| < ||q - n||`` (strict, like `triplet_accuracy`), wrong otherwise.

    Returns ``{"score": correct - wrong, "counted": correct + wrong, "correct": ..., "wrong": ...,
    "k": k}``; the score lies in [-counted, counted]. `index` may pass an `EmbeddingIndex` of
    `embeddings` already built.
    """
    e = _to_numpy(embeddings, "embeddings", np.float32)
    t = _to_numpy(triplets, "triplets")
    if e.ndim != 2 or t.ndim != 2 or t.shape[1] != 3 or t.dtype.kind not in "iu":
        raise RankingError(f"need (N, d) embeddings and integer (T, 3) triplets (got {e.shape}, {t.shape})")
    if t.size and (t.min() < 0 or t.max() >= len(e)):
        raise RankingError(f"triplet indices must be in [0, {len(e) - 1}]")
    if not 1 <= k < len(e):
        raise RankingError(f"k must be in [1, {len(e) - 1}] (got {k})")
    if index is None:
        from ranking_lib.retrieval.index import EmbeddingIndex

        index = EmbeddingIndex(e, np.zeros(len(e), dtype=np.int64), backend="torch")
    queries = np.unique(t[:, 0])
    top, _ = index.topk(e[queries], k, exclude=queries)
    row = np.searchsorted(queries, t[:, 0])
    in_top = (top[row] == t[:, 1:2]).any(axis=1) | (top[row] == t[:, 2:3]).any(axis=1)
    q, p, n = (e[t[:, i]].astype(np.float64) for i in range(3))
    right = np.sqrt(((q - p) ** 2).sum(1)) < np.sqrt(((q - n) ** 2).sum(1))
    correct, wrong = int((in_top & right).sum()), int((in_top & ~right).sum())
    return {"score": correct - wrong, "counted": correct + wrong, "correct": correct, "wrong": wrong, "k": int(k)}


# ---------------------------------------------------------------------------------- retrieval
def precision_at_k(neighbour_labels, query_labels, k: int) -> float:
    """Precision@k in percent: ``100 * mean_q( #{j < k : neighbour_labels[q, j] == query_labels[q]} / k )``."""
    nl, ql = _check_neighbours(neighbour_labels, query_labels, k)
    return float(100.0 * np.mean(nl[:, :k] == ql[:, None]))


def any_hit_at_k(neighbour_labels, query_labels, k: int) -> float:
    """Any-hit@k in percent: ``100 * mean_q( any_{j < k} neighbour_labels[q, j] == query_labels[q] )``,
    i.e. the share of queries with at least one same-label item among their k nearest."""
    nl, ql = _check_neighbours(neighbour_labels, query_labels, k)
    return float(100.0 * np.mean((nl[:, :k] == ql[:, None]).any(axis=1)))


def _majority_labels(nl: np.ndarray) -> np.ndarray:
    """Per row, the most frequent label; among tied labels the one occurring first (nearest)."""
    q, k = nl.shape
    if k == 1:
        return nl[:, 0].copy()
    # counts[q, j] = how often nl[q, j] occurs in row q
    counts = (nl[:, :, None] == nl[:, None, :]).sum(axis=2)
    best = np.argmax(
        counts, axis=1
    )  # argmax returns the first (nearest) maximal position
    return nl[np.arange(q), best]


def knn_accuracy(neighbour_labels, query_labels, k: int = 1) -> float:
    """k-NN classification accuracy in percent.

    The predicted label of query q is the most frequent label among its k nearest neighbours;
    ties between labels are broken in favour of the label whose first occurrence is nearest
    (so k=1 is the nearest neighbour's label). Returns ``100 * mean_q(pred[q] == query_labels[q])``.
    """
    nl, ql = _check_neighbours(neighbour_labels, query_labels, k)
    return float(100.0 * np.mean(_majority_labels(nl[:, :k]) == ql))


def map_at_r(neighbour_labels, query_labels, r) -> float:
    """MAP@R in percent, as defined by pytorch-metric-learning's ``AccuracyCalculator``.

    For query q, R_q = number of database items sharing q's label (not counting q itself when the
    queries are database items); ``r`` is that count, an int or a (Q,) int array. Then::

        AP@R(q) = (1 / R_q) * sum_{i=1..R_q} P_q(i) * rel_q(i),
        rel_q(i) = [neighbour_labels[q, i-1] == query_labels[q]],  P_q(i) = (1/i) sum_{j<=i} rel_q(j)
        MAP@R   = 100 * mean_q AP@R(q)

    Queries with R_q = 0 (no relevant database item) are left out of the mean, as
    pytorch-metric-learning leaves out "lone" queries. ``neighbour_labels`` needs >= max(R_q) columns.
    """
    nl, ql = _check_neighbours(neighbour_labels, query_labels)
    r_arr = _to_numpy(r, "r")
    if r_arr.dtype.kind not in "iu":
        raise RankingError(
            f"r must be an int or an integer (Q,) array (got dtype {r_arr.dtype})"
        )
    r_arr = (
        np.broadcast_to(r_arr.astype(np.int64), (len(nl),))
        if r_arr.ndim == 0
        else r_arr.astype(np.int64)
    )
    if r_arr.shape != (len(nl),):
        raise RankingError(
            f"r must be an int or a ({len(nl)},) array (got shape {r_arr.shape})"
        )
    if r_arr.min() < 0:
        raise RankingError(f"r must be >= 0 (got {int(r_arr.min())})")
    r_max = int(r_arr.max())
    if r_max > nl.shape[1]:
        raise RankingError(
            f"MAP@R needs at least max(R)={r_max} neighbour columns but neighbour_labels has {nl.shape[1]}"
        )
    keep = r_arr > 0
    if not keep.any():
        raise RankingError(
            "MAP@R is undefined: no query has a relevant database item (all R = 0)"
        )
    nl, ql, r_arr = nl[keep, :r_max], ql[keep], r_arr[keep]
    pos = np.arange(1, r_max + 1)
    rel = (nl == ql[:, None]) & (pos[None, :] <= r_arr[:, None])
    prec = np.cumsum(rel, axis=1) / pos[None, :]
    ap = (prec * rel).sum(axis=1) / r_arr
    return float(100.0 * ap.mean())


def r_precision(neighbour_labels, query_labels, r) -> float:
    """R-precision in percent, as defined by pytorch-metric-learning's ``AccuracyCalculator``:
    ``100 * mean_q( #{i < R_q : neighbour_labels[q, i] == query_labels[q]} / R_q )``, with R_q as in
    :func:`map_at_r` (queries with R_q = 0 left out). ``neighbour_labels`` needs >= max(R_q) columns."""
    nl, ql = _check_neighbours(neighbour_labels, query_labels)
    r_arr = np.broadcast_to(_to_numpy(r, "r").astype(np.int64), (len(nl),))
    keep = r_arr > 0
    if not keep.any():
        raise RankingError("R-precision is undefined: no query has a relevant database item (all R = 0)")
    r_max = int(r_arr.max())
    if r_max > nl.shape[1]:
        raise RankingError(
            f"R-precision needs at least max(R)={r_max} neighbour columns but neighbour_labels has {nl.shape[1]}"
        )
    nl, ql, r_arr = nl[keep, :r_max], ql[keep], r_arr[keep]
    rel = (nl == ql[:, None]) & (np.arange(1, r_max + 1)[None, :] <= r_arr[:, None])
    return float(100.0 * np.mean(rel.sum(axis=1) / r_arr))


def retrieval_metrics(
    index,
    query_embeddings,
    query_labels,
    *, ks=(1, 10, 30),
    exclude_self: bool = False,
    query_ids=None,
    chunk_size: int = 4096,
) -> dict:
    """Retrieval metrics of queries against an :class:`~ranking_lib.retrieval.index.EmbeddingIndex`.

    One ``index.topk`` pass (in chunks of ``chunk_size`` queries) with
    ``K = max(max(ks), max_q R_q)``, where R_q is the number of database items with query q's label
    (minus one when ``exclude_self``). With ``exclude_self=True`` query i *is* database item
    ``query_ids[i]`` (default ``arange(Q)``) and is dropped from its own neighbours.

    Returns a dict: ``precision@k`` for every k in ``ks``, ``any_hit@{max(ks)}``,
    ``r_precision``, ``map@r`` (all percentages, see the functions above) and ``num_queries``.
    (The nearest neighbour's class, KNN-1, is ``precision@1``.)
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise RankingError(f"ks must be positive integers (got {ks})")
    q = _to_numpy(query_embeddings, "query_embeddings", np.float32)
    ql = _to_numpy(query_labels, "query_labels")
    if q.ndim != 2 or ql.ndim != 1 or len(q) != len(ql):
        raise RankingError(
            f"query_embeddings (Q, d) and query_labels (Q,) must agree (got {q.shape}, {ql.shape})"
        )
    if len(q) == 0:
        raise RankingError("no queries to evaluate (Q = 0)")
    ql = ql.astype(np.int64)
    ids = None
    if exclude_self:
        ids = (
            np.arange(len(q))
            if query_ids is None
            else _to_numpy(query_ids, "query_ids").astype(np.int64)
        )
        if ids.shape != (len(q),):
            raise RankingError(
                f"query_ids must have shape ({len(q)},) (got {ids.shape})"
            )
        if ids.min() < 0 or ids.max() >= len(index):
            raise RankingError(f"query_ids must be in [0, {len(index) - 1}]")
        if not np.array_equal(index.labels[ids], ql):
            raise RankingError(
                "exclude_self: query_labels differ from the index labels at query_ids"
            )
    db_classes, db_counts = np.unique(index.labels, return_counts=True)
    pos = np.searchsorted(db_classes, ql)
    pos_c = np.minimum(pos, len(db_classes) - 1)
    r = np.where(db_classes[pos_c] == ql, db_counts[pos_c], 0) - (
        1 if exclude_self else 0
    )
    k_all = max(ks[-1], int(r.max()))
    k_lim = len(index) - (1 if exclude_self else 0)
    if k_all > k_lim:
        raise RankingError(
            f"ks up to {ks[-1]} exceed the {k_lim} searchable database items"
        )

    # the tested per-metric functions, on chunks of queries, weighted by chunk size
    sums = {f"precision@{k}": 0.0 for k in ks}
    sums.update({f"any_hit@{ks[-1]}": 0.0})
    ap_sum = rp_sum = 0.0
    ap_n = 0
    step = max(1, int(chunk_size))
    for s in range(0, len(q), step):
        e = slice(s, s + step)
        idx, _ = index.topk(q[e], k_all, exclude=None if ids is None else ids[e])
        nl, qe = index.labels[idx], ql[e]
        for k in ks:
            sums[f"precision@{k}"] += precision_at_k(nl, qe, k) * len(qe)
        sums[f"any_hit@{ks[-1]}"] += any_hit_at_k(nl, qe, ks[-1]) * len(qe)
        rc = r[e]
        keep = rc > 0
        if keep.any():
            ap_sum += map_at_r(nl[keep], qe[keep], rc[keep]) * keep.sum()
            rp_sum += r_precision(nl[keep], qe[keep], rc[keep]) * keep.sum()
            ap_n += int(keep.sum())
    n = len(q)
    out = {key: float(v / n) for key, v in sums.items()}
    out["r_precision"] = float(rp_sum / ap_n) if ap_n else float("nan")
    out["map@r"] = float(ap_sum / ap_n) if ap_n else float("nan")
    out["num_queries"] = int(n)
    return out
