"""The evaluation protocol and the query API as pure functions, on hand-computed cases."""

import numpy as np
import pytest

from ranking_lib.core.errors import RankingError
from ranking_lib.retrieval.index import EmbeddingIndex
from ranking_lib.retrieval.protocol import evaluate_embeddings, queries_without_match, train_query_ids
from ranking_lib.retrieval.query import pick_query_examples, query_split, query_vector

# two classes on a line: class 0 near 0, class 1 near 1
DB = EmbeddingIndex(np.array([[0, 0], [0.1, 0], [1, 0], [1.1, 0]], np.float32), np.array([0, 0, 1, 1]),
                    ["a0", "a1", "b0", "b1"])
VAL = EmbeddingIndex(np.array([[0.05, 0], [0.06, 0], [1.05, 0]], np.float32), np.array([0, 0, 1]), ["v0", "v1", "v2"])


def test_protocol_by_hand():
    trip = {"train": np.array([[0, 1, 2], [0, 2, 1]]), "tune": np.array([[1, 0, 3]]), "val": np.array([[0, 1, 2], [2, 0, 1]])}
    m = evaluate_embeddings(DB, trip, kept=np.array([0, 2]), held=np.array([1, 3]), ks=(1, 2),
                            train_eval_queries=10, val=VAL)
    # train: queries 0 and 2 (the kept images), each without itself: nearest is its classmate, then the other class
    assert m["train"]["triplet_acc"] == 50.0 and m["train"]["num_queries"] == 2
    assert m["train"]["precision@1"] == 100.0 and m["train"]["precision@2"] == 50.0
    # tune: held-out 1 and 3 against the kept images {0, 2} only
    assert m["tune"]["num_queries"] == 2 and m["tune"]["precision@1"] == 100.0 and m["tune"]["precision@2"] == 50.0
    assert m["tune"]["triplet_acc"] == 100.0
    # val: against all four training images; (2, 0, 1) is ranked wrong (D(v2, v0) > D(v2, v1) is false: 1.0 vs 0.99)
    assert m["val"]["num_queries"] == 3 and m["val"]["precision@2"] == 100.0
    assert m["val"]["triplet_acc"] == 50.0
    assert m["val"]["score_at_top_30_k"] == 2  # three val images: K is the split's size minus one


def test_protocol_leaves_out_what_is_not_asked():
    m = evaluate_embeddings(DB, {"train": np.array([[0, 1, 2]])}, kept=np.arange(4), held=np.array([], int), ks=(1,))
    assert set(m) == {"train"}


def test_train_queries_are_seeded_and_kept_only():
    kept = np.array([0, 2, 5, 7, 9])
    a, b = train_query_ids(kept, 3, seed=1), train_query_ids(kept, 3, seed=1)
    assert np.array_equal(a, b) and set(a) <= set(kept) and len(a) == 3 and np.all(np.diff(a) > 0)
    assert np.array_equal(train_query_ids(kept, 99, seed=0), kept)


def test_query_split_top_and_bottom_by_hand():
    (r,) = query_split(DB, VAL, [2], k=2, class_names=["zero", "one"])
    assert r.query_path == "v2" and r.query_class == "one"
    assert list(r.top_indices) == [2, 3] and list(r.bottom_indices) == [0, 1]
    np.testing.assert_allclose(r.top_distances, [0.05, 0.05], atol=1e-5)
    np.testing.assert_allclose(r.bottom_distances, [1.05, 0.95], atol=1e-5)
    with pytest.raises(RankingError, match="out of range"):
        query_split(DB, VAL, [3], k=2, class_names=["zero", "one"])


def test_query_vector_and_examples():
    r = query_vector(DB, np.array([0.0, 0.0], np.float32), 1, "x.jpg")
    assert r.query_index is None and list(r.top_indices) == [0] and list(r.bottom_indices) == [3]
    picks = pick_query_examples(np.array([0, 0, 1, 1, 2]), 3, seed=0)
    assert sorted(np.array([0, 0, 1, 1, 2])[picks]) == [0, 1, 2]
    with pytest.raises(RankingError, match="different classes"):
        pick_query_examples(np.array([0, 1]), 3, seed=0)


def test_queries_without_match_counts_classes_missing_from_the_database():
    assert queries_without_match(np.array([0, 1, 2, 2, 3]), np.array([0, 1, 1])) == 3
    assert queries_without_match(np.array([0, 1]), np.array([1, 0])) == 0
