"""The ranking layer: triplet hinge loss of Deep Ranking (Wang et al., CVPR 2014)."""

from __future__ import annotations

import torch
from torch import nn

from ranking_lib.core.errors import RankingError


def pairwise_distance(a: torch.Tensor, b: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """Row-wise Euclidean distance ||a_i - b_i|| (or its square), computed in float32."""
    d2 = (a.float() - b.float()).pow(2).sum(dim=-1)
    if squared:
        return d2
    # the small epsilon keeps the gradient finite when a_i == b_i
    return torch.sqrt(d2 + 1e-12)


class RankingLoss(nn.Module):
    """l(q, p, n) = max(0, g + D(q, p) - D(q, n)), averaged over the batch.

    Args:
        gap: the margin g; must be > 0.
        squared: use D = squared Euclidean distance (the paper's formulation). The default
            is plain Euclidean distance, which keeps the gap on the scale of the distances
            shown at query time.
    """

    def __init__(self, gap: float = 1.0, squared: bool = False) -> None:
        super().__init__()
        if not gap > 0:
            raise RankingError(f"gap must be > 0 (got {gap})")
        self.gap = float(gap)
        self.squared = bool(squared)

    def forward(self, q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, extra: torch.Tensor | None = None
                ) -> torch.Tensor:
        """`extra`: a margin added to g per triplet (graded relevance, `GradedMargin`), or None."""
        if not (q.shape == p.shape == n.shape):
            raise RankingError(f"query/positive/negative shapes differ: {q.shape}, {p.shape}, {n.shape}")
        d_pos = pairwise_distance(q, p, self.squared)
        d_neg = pairwise_distance(q, n, self.squared)
        gap = self.gap if extra is None else self.gap + extra.to(d_pos.dtype)
        return torch.relu(gap + d_pos - d_neg).mean()

    def extra_repr(self) -> str:
        return f"gap={self.gap}, squared={self.squared}"


class WithinClassDistillation(nn.Module):
    """Relational distillation over the pairs of one class: with D_s the student's and D_t the
    teacher's Euclidean distances between two images of the same label in a batch, each divided
    by its mean over those pairs, the loss is the smooth-L1 distance between the two (Park et
    al.'s distance-wise RKD, restricted to within-class pairs). Scale-free, so the class may
    tighten; what it keeps is which images of a class are nearer each other. Zero when the batch
    holds no two images of one label."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if len(student) != len(teacher) or len(student) != len(labels):
            raise RankingError(f"student/teacher/labels lengths differ: {len(student)}, {len(teacher)}, {len(labels)}")
        same = labels[:, None] == labels[None, :]
        pairs = torch.triu(same, diagonal=1)
        if not bool(pairs.any()):
            return student.sum() * 0.0
        d_s = torch.cdist(student.float(), student.float())[pairs]
        with torch.no_grad():
            d_t = torch.cdist(teacher.float(), teacher.float())[pairs]
            d_t = d_t / d_t.mean().clamp_min(1e-12)
        d_s = d_s / d_s.mean().clamp_min(1e-12)
        return torch.nn.functional.smooth_l1_loss(d_s, d_t)


class GradedMargin:
    """Graded relevance in the margin, as the paper grades it: the gap of a triplet grows with how
    unlike the negative's class is to the query's, ``extra = weight * (1 - S[c_q, c_n])`` with `S`
    a class similarity in [0, 1] (Wu–Palmer in WordNet; 1 on the diagonal, so an in-class negative
    keeps the plain gap). Pairs of classes without a similarity (NaN) take the mean of the rest."""

    def __init__(self, similarity, weight: float, device: torch.device | str = "cpu") -> None:
        s = torch.as_tensor(similarity, dtype=torch.float32)
        if s.ndim != 2 or s.shape[0] != s.shape[1]:
            raise RankingError(f"a class similarity must be a square matrix (got shape {tuple(s.shape)})")
        known = s[~torch.isnan(s)]
        if not len(known):
            raise RankingError("the class similarity has no known value: a graded margin needs WordNet classes")
        self.similarity = torch.where(torch.isnan(s), known.mean(), s).clamp(0, 1).to(device)
        self.weight = float(weight)

    def to(self, device: torch.device | str) -> "GradedMargin":
        """Itself, its similarity on `device` (where the labels it is called with live)."""
        self.similarity = self.similarity.to(device)
        return self

    def __call__(self, query_labels: torch.Tensor, negative_labels: torch.Tensor) -> torch.Tensor:
        return self.weight * (1.0 - self.similarity[query_labels, negative_labels])
