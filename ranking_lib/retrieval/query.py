"""Queries against a database index: top-k and bottom-k by Euclidean distance."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ranking_lib.core.errors import RankingError
from ranking_lib.retrieval.index import EmbeddingIndex


@dataclass
class QueryResult:
    query_index: int | None
    query_path: str
    query_label: int | None
    query_class: str | None
    top_indices: np.ndarray
    top_distances: np.ndarray
    top_labels: np.ndarray
    bottom_indices: np.ndarray
    bottom_distances: np.ndarray
    bottom_labels: np.ndarray

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}


def pick_query_examples(labels: np.ndarray, n: int, seed: int) -> list[int]:
    """`n` indices of `labels` from `n` different classes, chosen with `seed`."""
    classes = np.unique(labels)
    if n < 1 or n > len(classes):
        raise RankingError(f"asked for {n} query examples from different classes; val has {len(classes)} classes (use 1..{len(classes)})")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(classes, size=n, replace=False)
    return [int(rng.choice(np.flatnonzero(labels == c))) for c in chosen]


def query_split(db: EmbeddingIndex, queries: EmbeddingIndex, indices: list[int], k: int,
                class_names: list[str]) -> list[QueryResult]:
    """Top-k and bottom-k of `db` for the images `indices` of the split `queries`."""
    bad = [i for i in indices if not 0 <= i < len(queries)]
    if bad:
        raise RankingError(f"val index {bad[0]} out of range (val has {len(queries)} images)")
    q = queries.embeddings[np.asarray(indices, dtype=np.int64)]
    ti, td = db.topk(q, k)
    bi, bd = db.bottomk(q, k)
    return [QueryResult(int(v), queries.paths[v], int(queries.labels[v]), class_names[int(queries.labels[v])],
                        ti[j], td[j], db.labels[ti[j]], bi[j], bd[j], db.labels[bi[j]])
            for j, v in enumerate(indices)]


def query_vector(db: EmbeddingIndex, z: np.ndarray, k: int, path: str) -> QueryResult:
    """Top-k and bottom-k of `db` for one embedding `z` (an image outside the dataset)."""
    ti, td = db.topk(z, k)
    bi, bd = db.bottomk(z, k)
    return QueryResult(None, str(path), None, None, ti, td, db.labels[ti], bi, bd, db.labels[bi])
