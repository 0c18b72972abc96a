"""The project's P@1, R-precision and MAP@R against pytorch-metric-learning's AccuracyCalculator
(the reference definitions) on a small fixed set: queries apart from the database (val) and
queries that are database items (train, each excluded from its own result)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ranking_lib.retrieval.index import EmbeddingIndex
from ranking_lib.retrieval.metrics import r_precision, retrieval_metrics

ac = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")

KEYS = {"precision_at_1": "precision@1", "r_precision": "r_precision", "mean_average_precision_at_r": "map@r"}


def _data():
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(5, 6))
    db_labels = np.repeat(np.arange(5), [4, 7, 9, 12, 8])  # unequal R per class
    db = (centers[db_labels] + 0.9 * rng.normal(size=(len(db_labels), 6))).astype(np.float32)
    q_labels = rng.integers(0, 5, size=25)
    q = (centers[q_labels] + 0.9 * rng.normal(size=(25, 6))).astype(np.float32)
    return db, db_labels, q, q_labels


def _pml(query, query_labels, ref, ref_labels, ref_includes_query):
    calc = ac.AccuracyCalculator(include=tuple(KEYS), k="max_bin_count", device=torch.device("cpu"))
    got = calc.get_accuracy(torch.from_numpy(query), torch.from_numpy(query_labels),
                            torch.from_numpy(ref), torch.from_numpy(ref_labels), ref_includes_query)
    return {ours: 100.0 * float(got[theirs]) for theirs, ours in KEYS.items()}


def test_separate_queries_match_pytorch_metric_learning():
    db, dl, q, ql = _data()
    ours = retrieval_metrics(EmbeddingIndex(db, dl, backend="torch"), q, ql, ks=(1, 10))
    ref = _pml(q, ql, db, dl, False)
    for key, want in ref.items():
        assert ours[key] == pytest.approx(want, abs=1e-6), key
    assert ref["r_precision"] != pytest.approx(ref["precision@1"])  # the set tells the metrics apart


def test_queries_from_the_database_match_pytorch_metric_learning():
    db, dl, _, _ = _data()
    ours = retrieval_metrics(EmbeddingIndex(db, dl, backend="torch"), db, dl, ks=(1, 5), exclude_self=True)
    ref = _pml(db, dl, db, dl, True)
    for key, want in ref.items():
        assert ours[key] == pytest.approx(want, abs=1e-6), key


def test_r_precision_by_hand():
    # R = 2 for both: [same, other] -> 1/2; [same, same, other] with R = 3 -> 2/3
    assert r_precision(np.array([[1, 0, 1], [2, 2, 0]]), np.array([1, 2]), np.array([2, 3])) == pytest.approx(
        100 * (1 / 2 + 2 / 3) / 2)
