"""Pairwise relevance inside a class, from a frozen "golden" feature (the paper's r_ij, §4).

The golden feature here is the frozen pretrained backbone's pooled features at the run's input
size (the `baseline` model's embedding), L2-normalised; r_ij is their cosine similarity, used
only for two images of the same class. r_i, the total relevance of image i, sums r_ij over the
other images j of its class. Rows are computed on demand (a class block is a small matrix
product), so no N x N matrix is ever held.
"""

from __future__ import annotations

import numpy as np

from ranking_lib.core.errors import RankingError


class RelevanceScores:
    """Relevance r_ij = cos(f_i, f_j) of golden features, and totals r_i, per class.

    Args:
        features: (N, D) golden features (L2-normalised here, in float32).
        labels: (N,) integer class labels.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        f = np.asarray(features, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        if f.ndim != 2 or len(f) != len(labels):
            raise RankingError(f"golden features must be (N, D) for {len(labels)} images, got {tuple(f.shape)}")
        if not np.isfinite(f).all():
            raise RankingError("golden features hold NaN or inf")
        norms = np.linalg.norm(f, axis=1, keepdims=True)
        if (norms == 0).any():
            raise RankingError(f"{int((norms == 0).sum())} golden feature vector(s) are all zero")
        self.features = f / norms
        self.labels = labels
        self.num_classes = int(labels.max()) + 1
        order = np.argsort(labels, kind="stable")
        self._members = np.split(order, np.cumsum(np.bincount(labels, minlength=self.num_classes))[:-1])
        total = np.zeros(len(labels), dtype=np.float64)
        for idx in self._members:
            if len(idx):
                block = self.features[idx] @ self.features[idx].T
                total[idx] = block.sum(axis=1) - np.diag(block)
        # totals weight the query draw: keep each image drawable
        self.total = np.maximum(total, 1e-6)

    def members(self, c: int) -> np.ndarray:
        """Indices of the images of class c."""
        return self._members[c]

    def class_of(self, i):
        return self.labels[i]

    def rows(self, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """r[q, j] for each query and candidate: (len(queries), len(candidates)) float64."""
        return (self.features[queries] @ self.features[candidates].T).astype(np.float64)
