"""Label-free re-ranking at query time: query expansion and database-side augmentation.

Both replace vectors by a weighted mean of themselves and their nearest database vectors, then
search again (Chum et al. 2007; Radenović et al. 2018, "α-QE" and "DBA"):

* ``aqe`` (average / α-weighted query expansion): a query q becomes
  ``q + Σ_j w_j x_j`` over its ``k`` nearest database vectors x_j, divided by ``1 + Σ_j w_j``;
* ``dba`` (database-side augmentation): every database vector becomes the same mean over its
  own ``k`` nearest *other* database vectors; computed once per database, then searched like
  the original;
* ``dba+aqe``: both, the query expanded over the augmented database;
* ``auto``: each of `AUTO_CANDIDATES` on the tuning split, the best by precision@K kept for val
  (`retrieval.protocol`); needs held-out images (``holdout_per_class``).

Weights: ``w_j = 1`` when ``alpha`` is 0 (plain averaging), else ``w_j = max(s_j, 0) ** alpha`` with
``s_j = 1 - d_j² / 2`` the cosine of unit vectors at Euclidean distance d_j. When the vectors
are L2-normalised (they are in every profile) the means are normalised again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ranking_lib.core.errors import RankingError
from ranking_lib.core.registry import Registry
from ranking_lib.retrieval.index import EmbeddingIndex

RERANKERS: Registry[str] = Registry("rerank")
"""Re-ranking name -> what it does (the config field ``rerank``)."""
RERANKERS.add("none", "plain search")
RERANKERS.add("aqe", "query expansion")
RERANKERS.add("dba", "database-side augmentation")
RERANKERS.add("dba+aqe", "both, the query expanded over the augmented database")
RERANKERS.add("auto", "the protocol tries AUTO_CANDIDATES on the tuning split and keeps the best")
METHODS = tuple(name for name in RERANKERS if name != "auto")
"""The methods a search runs directly (``auto`` is resolved by the protocol first)."""

AUTO_CANDIDATES = (
    ("none", 1, 0.0),
    *[("aqe", k, a) for k in (3, 5, 10, 20) for a in (0.0, 3.0)],
    ("dba", 5, 0.0),
    ("dba+aqe", 5, 0.0),
)
"""(method, k, alpha) tried by ``rerank: auto``."""


def _unit(x: np.ndarray) -> bool:
    n = np.linalg.norm(x[: min(len(x), 1000)], axis=1)
    return bool(len(n)) and bool(np.allclose(n, 1.0, atol=1e-3))


def _expand(vectors: np.ndarray, neighbours: np.ndarray, dist: np.ndarray, alpha: float, unit: bool) -> np.ndarray:
    """(vectors + Σ w x_neighbours) / (1 + Σ w), renormalised when `unit`."""
    w = np.ones_like(dist, dtype=np.float32) if alpha == 0 else np.maximum(1 - dist.astype(np.float32) ** 2 / 2, 0) ** alpha
    out = vectors.astype(np.float32) + np.einsum("qk,qkd->qd", w, neighbours.astype(np.float32))
    out /= (1 + w.sum(1, keepdims=True))
    if unit:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


@dataclass(frozen=True)
class Reranker:
    """Re-ranking of one method (``METHODS``) over ``k`` neighbours with weight exponent ``alpha``."""

    method: str = "none"
    k: int = 10
    alpha: float = 0.0
    chunk_size: int = 4096

    def __post_init__(self) -> None:
        RERANKERS.check(self.method)
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise RankingError(f"rerank_k must be a positive integer (got {self.k!r})")
        if not np.isfinite(self.alpha) or self.alpha < 0:
            raise RankingError(f"rerank_alpha must be >= 0 (got {self.alpha!r})")

    @property
    def active(self) -> bool:
        return self.method != "none"

    @property
    def name(self) -> str:
        """``none``, or e.g. ``aqe k=10`` / ``aqe k=10 alpha=3``."""
        if self.method in ("none", "auto"):
            return self.method
        return f"{self.method} k={self.k}" + (f" alpha={self.alpha:g}" if self.alpha else "")

    @classmethod
    def from_name(cls, name: str) -> "Reranker":
        """The inverse of `name`: ``none``, ``aqe k=20``, ``dba k=5 alpha=3`` ..."""
        bad = RankingError(f"not a re-ranking name: {name!r} (e.g. 'none', 'aqe k=20', 'dba k=5 alpha=3')")
        method, *rest = str(name).split() or [""]
        try:
            opts = dict(part.split("=", 1) for part in rest)
            k, alpha = int(opts.pop("k", 10)), float(opts.pop("alpha", 0.0))
        except ValueError:
            raise bad from None
        if opts or method not in METHODS:
            raise bad
        return cls(method, k, alpha)

    def _check_resolved(self) -> None:
        if self.method == "auto":
            raise RankingError("rerank 'auto' is chosen on the tuning split by the evaluation protocol; "
                               f"pass a method ({', '.join(METHODS)}) to search directly")

    def neighbours(self, db: EmbeddingIndex, q: np.ndarray, exclude: np.ndarray | None = None,
                   k: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(indices, distances) of the `k` (default ``self.k``) nearest database items of each
        query, in chunks; None when the database has none to give."""
        k = min(self.k if k is None else k, len(db) - (1 if exclude is not None else 0))
        if k < 1:
            return None
        parts = [db.topk(q[s:s + self.chunk_size], k, exclude=None if exclude is None else exclude[s:s + self.chunk_size])
                 for s in range(0, len(q), self.chunk_size)]
        return np.concatenate([i for i, _ in parts]), np.concatenate([d for _, d in parts])

    def expand(self, db: EmbeddingIndex, q: np.ndarray, found: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        """`q` averaged with its first ``k`` neighbours of `found` (`neighbours` with k >= ``self.k``:
        results are sorted, ties by index, so a longer list's head is the shorter list)."""
        if found is None:
            return q.astype(np.float32)
        idx, dist = found[0][:, :self.k], found[1][:, :self.k]
        unit = _unit(db.embeddings)
        out = np.empty((len(q), q.shape[1]), np.float32)
        for s in range(0, len(q), self.chunk_size):
            part = slice(s, s + self.chunk_size)
            out[part] = _expand(q[part], db.embeddings[idx[part]], dist[part], self.alpha, unit)
        return out

    def _neighbour_mean(self, db: EmbeddingIndex, q: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
        return self.expand(db, q, self.neighbours(db, q, exclude))

    def database(self, db: EmbeddingIndex, **index_options) -> EmbeddingIndex:
        """The database to search: `db` itself, or its augmented copy (``dba``, ``dba+aqe``)."""
        self._check_resolved()
        if not self.method.startswith("dba"):
            return db
        z = self._neighbour_mean(db, db.embeddings, exclude=np.arange(len(db)))
        return EmbeddingIndex(z, db.labels, list(db.paths) if db.paths is not None else None, **index_options)

    def queries(self, db: EmbeddingIndex, q: np.ndarray) -> np.ndarray:
        """The query vectors to search `db` (already the output of `database`) with."""
        self._check_resolved()
        q = np.asarray(q, np.float32)
        if not self.method.endswith("aqe"):
            return q
        return self._neighbour_mean(db, q, exclude=None)
