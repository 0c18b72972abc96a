"""Online negative mining inside a batch (the paper's 'online triplet sampling' idea)."""

from __future__ import annotations

import torch

from ranking_lib.core.registry import Registry


def batch_hard_negatives(
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    candidates: torch.Tensor,
    candidate_labels: torch.Tensor,
    squared: bool = False,
) -> torch.Tensor:
    """For each query, the index of the closest candidate of another class.

    Every image in a triplet batch (queries, positives and negatives) is a candidate, so a
    batch of B triplets offers ~3B negatives per query instead of one. Returns an index into
    `candidates` for each query. A query with no out-of-class candidate keeps index -1.
    """
    with torch.no_grad():
        d = torch.cdist(queries.float(), candidates.float())
        if squared:
            d = d.pow(2)
        same = query_labels[:, None] == candidate_labels[None, :]
        d = d.masked_fill(same, float("inf"))
        idx = d.argmin(dim=1)
        idx[torch.isinf(d.min(dim=1).values)] = -1
    return idx


MINERS: Registry = Registry("miner")
"""Miner name -> ``(queries, query_labels, candidates, candidate_labels, squared) -> indices``, or
None for the pre-sampled triplets as they are (the config field ``miner``)."""
MINERS.add("none", None)
MINERS.add("batch_hard", batch_hard_negatives)
