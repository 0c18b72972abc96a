"""The evaluation protocol: which queries are ranked against which database, as a pure function.

No files are read or written here; `workflow.evaluate` loads the embeddings and triplets and
saves what `evaluate_embeddings` returns.

* ``train``: a seeded subset of ``train_eval_queries`` training images (never held-out ones),
  each ranked against all training images but itself; triplet accuracy on the training triplets.
* ``tune`` (when images are held out): the held-out training images ranked against the training
  images that were trained on; triplets drawn among training images (tuning triplets).
* ``val`` (when given): every val image ranked against the whole training database; triplets of
  val images only.

With a `Reranker` (``rerank`` other than ``none``) the tune and val queries are re-ranked
(query expansion, database-side augmentation); the train split and every triplet accuracy stay
plain search.
"""

from __future__ import annotations

import numpy as np

from ranking_lib.core.errors import RankingError
from ranking_lib.core.names import SCORE_K
from ranking_lib.retrieval.index import EmbeddingIndex
from ranking_lib.retrieval.rerank import AUTO_CANDIDATES, Reranker
from ranking_lib.retrieval.metrics import (
    retrieval_metrics,
    score_at_top_k,
    triplet_accuracy_from_index,
)


def score_at_top(embeddings: np.ndarray, triplets: np.ndarray) -> dict:
    """Score at top-30; on a split of 30 images or fewer every other image is in the top-K, so K
    is then the split's size minus one (recorded as ``score_at_top_30_k``)."""
    s = score_at_top_k(embeddings, triplets, min(SCORE_K, len(embeddings) - 1))
    return {f"score_at_top_{SCORE_K}": s["score"], f"score_at_top_{SCORE_K}_counted": s["counted"],
            f"score_at_top_{SCORE_K}_k": s["k"]}


def queries_without_match(query_labels: np.ndarray, db_labels: np.ndarray) -> int:
    """Queries whose class has no image in the database: no ranking can answer them right, so
    they lower every metric (a class without training images)."""
    return int((~np.isin(query_labels, db_labels)).sum())


def choose_rerank(kept_db: EmbeddingIndex, queries: np.ndarray, labels: np.ndarray, *, ks, index_options: dict,
                  candidates=AUTO_CANDIDATES) -> tuple[Reranker, dict[str, float]]:
    """The candidate re-ranking with the best precision@max(ks) of the tuning queries (ties: the
    earlier, i.e. simpler, candidate), and every candidate's score."""
    k = max(ks)
    scores, best, best_score = {}, Reranker(), -1.0
    queries = np.asarray(queries, np.float32)
    # the query neighbours of every AQE candidate come from one search (the longest list's head),
    # the augmented database of the DBA candidates with the same (k, alpha) is built once
    aqe_k = max((n for m, n, _ in candidates if m == "aqe"), default=0)
    found = Reranker("aqe", aqe_k).neighbours(kept_db, queries) if aqe_k else None
    augmented: dict[tuple[int, float], EmbeddingIndex] = {}
    for method, n, alpha in candidates:
        r = Reranker(method, n, alpha)
        if method.startswith("dba"):
            key = (n, alpha)
            if key not in augmented:
                augmented[key] = r.database(kept_db, **index_options)
            db = augmented[key]
        else:
            db = kept_db
        q = r.expand(db, queries, found) if method == "aqe" else r.queries(db, queries)
        p = retrieval_metrics(db, q, labels, ks=(k,))[f"precision@{k}"]
        scores[r.name] = p
        if p > best_score:
            best, best_score = r, p
    return best, scores


def train_query_ids(kept: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The seeded training images that serve as train-split queries (sorted)."""
    return np.sort(np.random.default_rng(seed).choice(kept, size=min(n, len(kept)), replace=False))


def evaluate_embeddings(db: EmbeddingIndex, triplets: dict[str, np.ndarray], *, kept: np.ndarray,
                        held: np.ndarray, ks=(1, 10, 30), train_eval_queries: int = 10000, seed: int = 0,
                        val: EmbeddingIndex | None = None, index_options: dict | None = None,
                        rerank: Reranker | None = None) -> dict[str, dict]:
    """Metrics of every split the arguments allow (see the module docstring).

    Args:
        db: the training database (all training images, held-out ones included).
        triplets: ``train`` (always), ``tune`` (when `held` is non-empty), ``val`` (with `val`).
        kept, held: indices of `db` trained on and held out (`data.holdout.holdout_split`).
        val: the val split's index; None leaves val out.
        index_options: `EmbeddingIndex` keyword arguments for the tune database.
        rerank: re-ranking of the tune and val queries (None: plain search).
    """
    rerank = rerank or Reranker()
    metrics: dict[str, dict] = {}
    opts = index_options or {}
    search = None
    if rerank.method == "auto":
        if not len(held):
            raise RankingError("rerank 'auto' chooses on the tuning split: set holdout_per_class > 0, "
                               "or pass a method (none, aqe, dba, dba+aqe)")
        base = EmbeddingIndex(db.embeddings[kept], db.labels[kept], **opts)
        rerank, search = choose_rerank(base, db.embeddings[held], db.labels[held], ks=ks, index_options=opts)
    trip = triplets["train"]
    m = {"triplet_acc": triplet_accuracy_from_index(db.embeddings, trip), "num_triplets": int(len(trip))}
    ids = train_query_ids(kept, train_eval_queries, seed)
    m.update(retrieval_metrics(db, db.embeddings[ids], db.labels[ids], ks=ks, exclude_self=True, query_ids=ids))
    metrics["train"] = m
    if len(held):
        trip = triplets["tune"]
        kept_db = rerank.database(EmbeddingIndex(db.embeddings[kept], db.labels[kept], **(index_options or {})),
                                  **(index_options or {}))
        m = {"triplet_acc": triplet_accuracy_from_index(db.embeddings, trip), "num_triplets": int(len(trip))}
        m.update(retrieval_metrics(kept_db, rerank.queries(kept_db, db.embeddings[held]), db.labels[held], ks=ks))
        m["queries_without_match"] = queries_without_match(db.labels[held], db.labels[kept])
        m.update(score_at_top(db.embeddings, trip))
        m["rerank"] = rerank.name
        if search is not None:
            m["rerank_search"] = search
        metrics["tune"] = m
    if val is not None:
        trip = triplets["val"]
        m = {"triplet_acc": triplet_accuracy_from_index(val.embeddings, trip), "num_triplets": int(len(trip))}
        val_db = rerank.database(db, **(index_options or {}))
        m.update(retrieval_metrics(val_db, rerank.queries(val_db, val.embeddings), val.labels, ks=ks))
        m["queries_without_match"] = queries_without_match(val.labels, db.labels)
        m.update(score_at_top(val.embeddings, trip))
        m["rerank"] = rerank.name
        metrics["val"] = m
    return metrics


def semantic_evaluation(db: EmbeddingIndex, similarity: np.ndarray, *, kept: np.ndarray, held: np.ndarray,
                        ks=(1, 10, 30), num_triplets: int = 10000, seed: int = 0,
                        val: EmbeddingIndex | None = None, index_options: dict | None = None) -> dict[str, dict]:
    """The WordNet-graded metrics (`retrieval.semantic.semantic_retrieval_metrics`) of the
    ``tune`` split (held-out images against the images trained on, when `held` is non-empty) and
    the ``val`` split (against the whole training database, with `val`), on the embeddings as
    they are (no re-ranking). `similarity` is the (C, C) Wu–Palmer matrix of the classes."""
    from ranking_lib.retrieval.semantic import semantic_retrieval_metrics

    out: dict[str, dict] = {}
    if len(held):
        kept_db = EmbeddingIndex(db.embeddings[kept], db.labels[kept], **(index_options or {}))
        out["tune"] = semantic_retrieval_metrics(kept_db, db.embeddings[held], db.labels[held], similarity,
                                                 ks=ks, num_triplets=num_triplets, seed=seed + 2)
    if val is not None:
        out["val"] = semantic_retrieval_metrics(db, val.embeddings, val.labels, similarity, ks=ks,
                                                num_triplets=num_triplets, seed=seed + 1)
    return out
