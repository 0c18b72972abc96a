import numpy as np
import pytest
import torch

from ranking_lib.core.errors import RankingError
from ranking_lib.retrieval.index import EmbeddingIndex
from ranking_lib.retrieval.metrics import (
    any_hit_at_k,
    knn_accuracy,
    map_at_r,
    precision_at_k,
    retrieval_metrics,
    triplet_accuracy,
    triplet_accuracy_from_index,
)

# three queries with labels 0, 1, 2; rows are neighbour labels from nearest to farthest
NEIGHBOURS = np.array(
    [
        [0, 1, 0, 0],  # query 0 (label 0)
        [2, 1, 1, 0],  # query 1 (label 1)
        [0, 1, 1, 1],  # query 2 (label 2): never a hit
    ]
)
QUERIES = np.array([0, 1, 2])


def test_precision_at_k_by_hand():
    assert precision_at_k(NEIGHBOURS, QUERIES, 1) == pytest.approx(100 * (1 + 0 + 0) / 3)
    assert precision_at_k(NEIGHBOURS, QUERIES, 3) == pytest.approx(
        100 * (2 / 3 + 2 / 3 + 0) / 3
    )
    assert precision_at_k(NEIGHBOURS, QUERIES, 4) == pytest.approx(
        100 * (3 / 4 + 2 / 4 + 0) / 3
    )
    assert isinstance(precision_at_k(NEIGHBOURS, QUERIES, 1), float)
    with pytest.raises(RankingError, match=r"k=5 must be between 1 and 4"):
        precision_at_k(NEIGHBOURS, QUERIES, 5)
    with pytest.raises(RankingError, match=r"query_labels"):
        precision_at_k(NEIGHBOURS, QUERIES[:2], 1)


def test_any_hit_by_hand():
    assert any_hit_at_k(NEIGHBOURS, QUERIES, 1) == pytest.approx(100 / 3)
    assert any_hit_at_k(NEIGHBOURS, QUERIES, 2) == pytest.approx(200 / 3)
    assert any_hit_at_k(NEIGHBOURS, QUERIES, 4) == pytest.approx(200 / 3)


def test_knn_accuracy_by_hand():
    # k=1: predictions 0, 2, 0 -> only query 0 right
    assert knn_accuracy(NEIGHBOURS, QUERIES) == pytest.approx(100 / 3)
    # k=2: every row is a 1-1 tie -> nearest label wins: 0 (right), 2 (wrong), 0 (wrong)
    assert knn_accuracy(NEIGHBOURS, QUERIES, k=2) == pytest.approx(100 / 3)
    # k=3: majorities 0 (right), 1 (right), 1 (wrong)
    assert knn_accuracy(NEIGHBOURS, QUERIES, k=3) == pytest.approx(200 / 3)
    # tie 2-2 between labels 5 and 7 with 7 nearest -> 7
    assert knn_accuracy(np.array([[7, 5, 5, 7]]), np.array([7]), k=4) == 100.0
    assert knn_accuracy(np.array([[7, 5, 5, 7]]), np.array([5]), k=4) == 0.0


def test_map_at_r_by_hand():
    # R = 3, 2, 1
    # query 0: rel = [1, 0, 1] -> (P(1) + P(3)) / 3 = (1 + 2/3) / 3 = 5/9
    # query 1: rel = [0, 1]    -> P(2) / 2 = (1/2) / 2 = 1/4
    # query 2: rel = [0]       -> 0
    expected = 100 * (5 / 9 + 1 / 4 + 0) / 3
    assert map_at_r(NEIGHBOURS, QUERIES, np.array([3, 2, 1])) == pytest.approx(expected)
    # a scalar R = 2 for everyone: q0 rel [1,0] -> 1/2; q1 [0,1] -> 1/4; q2 -> 0
    assert map_at_r(NEIGHBOURS, QUERIES, 2) == pytest.approx(
        100 * (1 / 2 + 1 / 4 + 0) / 3
    )
    # perfect retrieval gives 100
    assert map_at_r(np.array([[4, 4, 9]]), np.array([4]), 2) == pytest.approx(100.0)
    # R = 0 queries are left out of the mean
    assert map_at_r(NEIGHBOURS, QUERIES, np.array([3, 2, 0])) == pytest.approx(
        100 * (5 / 9 + 1 / 4) / 2
    )
    with pytest.raises(RankingError, match=r"max\(R\)=5 neighbour columns"):
        map_at_r(NEIGHBOURS, QUERIES, np.array([5, 1, 1]))
    with pytest.raises(RankingError, match=r"all R = 0"):
        map_at_r(NEIGHBOURS, QUERIES, 0)


def test_triplet_accuracy_by_hand_with_tie():
    a = np.zeros((3, 2))
    p = np.array([[1.0, 0.0], [3.0, 0.0], [1.0, 0.0]])
    n = np.array(
        [[0.0, 2.0], [0.0, 1.0], [0.0, 1.0]]
    )  # right, wrong, tie (counts as wrong)
    assert triplet_accuracy(a, p, n) == pytest.approx(100 / 3)
    acc_t = triplet_accuracy(torch.zeros(3, 2), torch.tensor(p), torch.tensor(n))
    assert isinstance(acc_t, float) and acc_t == pytest.approx(100 / 3)
    emb = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
    triplets = np.array(
        [[0, 1, 2], [0, 3, 4], [0, 1, 4], [4, 0, 3]]
    )  # right, wrong, tie, right
    assert triplet_accuracy_from_index(emb, triplets) == pytest.approx(50.0)
    with pytest.raises(RankingError, match=r"same \(T, d\) shape"):
        triplet_accuracy(a, p[:2], n)
    with pytest.raises(RankingError, match=r"triplet indices must be in \[0, 4\]"):
        triplet_accuracy_from_index(emb, np.array([[0, 1, 5]]))


# 1-D database: positions and labels (label counts: 0 -> 3, 1 -> 3)
POS = np.array([0.0, 1.0, 3.0, 10.0, 11.5, 20.0], dtype=np.float32)[:, None]
LAB = np.array([0, 0, 1, 1, 1, 0])


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_retrieval_metrics_exclude_self_by_hand(backend):
    index = EmbeddingIndex(POS, LAB, backend=backend)
    # neighbours (self excluded), labels of the 2 nearest; R = 3 - 1 = 2 for every query:
    #   x=0    -> 1 (l0), 3 (l1)        : [0, 1]  query label 0
    #   x=1    -> 0 (l0), 3 (l1)        : [0, 1]  query label 0
    #   x=3    -> 1 (l0), 0 (l0)        : [0, 0]  query label 1
    #   x=10   -> 11.5 (l1), 3 (l1)     : [1, 1]  query label 1
    #   x=11.5 -> 10 (l1), then 3 (l1) and 20 (l0) tie at 8.5 -> lower index (3) first: [1, 1]
    #   x=20   -> 11.5 (l1), 10 (l1)    : [1, 1]  query label 0
    m = retrieval_metrics(index, POS, LAB, ks=(1, 2), exclude_self=True)
    assert m["num_queries"] == 6
    assert m["precision@1"] == pytest.approx(100 * 4 / 6)
    assert m["precision@2"] == pytest.approx(100 * (0.5 + 0.5 + 0 + 1 + 1 + 0) / 6)
    assert m["any_hit@2"] == pytest.approx(100 * 4 / 6)
    # R-precision: same-class share of the R = 2 nearest
    assert m["r_precision"] == pytest.approx(100 * (0.5 + 0.5 + 0 + 1 + 1 + 0) / 6)
    assert "knn1" not in m  # the nearest neighbour's class is precision@1
    # AP@2: [1,0] -> 1/2, [1,0] -> 1/2, 0, [1,1] -> 1, [1,1] -> 1, 0
    assert m["map@r"] == pytest.approx(100 * (0.5 + 0.5 + 0 + 1 + 1 + 0) / 6)
    # same numbers when a subset of database items is queried via query_ids, in tiny chunks
    sub = retrieval_metrics(
        index,
        POS[[3, 4]],
        LAB[[3, 4]],
        ks=(1, 2),
        exclude_self=True,
        query_ids=[3, 4],
        chunk_size=1,
    )
    assert (
        sub["precision@2"] == 100.0
        and sub["map@r"] == 100.0
        and sub["num_queries"] == 2
    )


def test_retrieval_metrics_external_queries_by_hand():
    index = EmbeddingIndex(POS, LAB, backend="torch")
    q = np.array([[2.4], [19.0]], dtype=np.float32)
    ql = np.array([1, 0])
    # x=2.4 (label 1): 3 (l1), 1 (l0), 0 (l0)  R=3 -> rel [1,0,0] -> AP 1/3
    # x=19  (label 0): 20 (l0), 11.5 (l1), 10 (l1)  R=3 -> rel [1,0,0] -> AP 1/3
    m = retrieval_metrics(index, q, ql, ks=(1, 3))
    assert m["precision@1"] == 100.0
    assert m["precision@3"] == pytest.approx(100 / 3)
    assert m["any_hit@3"] == 100.0
    assert m["map@r"] == pytest.approx(100 / 3)
    with pytest.raises(RankingError, match=r"exceed the 6 searchable"):
        retrieval_metrics(index, q, ql, ks=(1, 7))


def test_triplet_accuracy_from_index_chunking_matches_one_shot():
    import numpy as np

    from ranking_lib.retrieval.metrics import triplet_accuracy_from_index

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 4)).astype(np.float32)
    trip = rng.integers(0, 50, size=(1001, 3))
    one = triplet_accuracy_from_index(emb, trip, chunk_size=10_000)
    assert triplet_accuracy_from_index(emb, trip, chunk_size=7) == pytest.approx(one, abs=1e-9)
    a, p, n = (emb[trip[:, i]].astype(np.float64) for i in range(3))
    ref = 100 * np.mean(np.linalg.norm(a - p, axis=1) < np.linalg.norm(a - n, axis=1))
    assert one == pytest.approx(ref, abs=1e-9)


def test_score_at_top_k_by_hand():
    from ranking_lib.retrieval.metrics import score_at_top_k

    e = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
    t = np.array([[0, 1, 2],   # top-2 of 0 = {1, 2}; p in it; 1 < 3: correct
                  [0, 3, 1],   # n=1 in top-2; 6 > 1: wrong
                  [0, 3, 4],   # neither in top-2: not counted
                  [4, 3, 0],   # top-2 of 4 = {3, 2}; p in it; 4 < 10: correct
                  [2, 3, 1],   # top-2 of 2 = {1, 0} (0 and 3 tie at 3: lower index); n in it; 3 > 2: wrong
                  [4, 2, 1]])  # p=2 in top-2 of 4; 7 < 9: correct
    assert score_at_top_k(e, t, k=2) == {"score": 1, "counted": 5, "correct": 3, "wrong": 2, "k": 2}
    # top-1: {1} for 0 and 2, {3} for 4 -> triplets 1, 2, 4, 5 counted, 2 right and 2 wrong
    assert score_at_top_k(e, t, k=1)["score"] == 0 and score_at_top_k(e, t, k=1)["counted"] == 4
    with pytest.raises(RankingError, match="k must be in"):
        score_at_top_k(e, t, k=5)
