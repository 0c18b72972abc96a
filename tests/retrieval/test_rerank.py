"""Query expansion and database-side augmentation on hand-computed cases."""

import numpy as np
import pytest

from ranking_lib.core.config import RunConfig
from ranking_lib.core.errors import RankingError
from ranking_lib.retrieval.index import EmbeddingIndex
from ranking_lib.retrieval.protocol import evaluate_embeddings
from ranking_lib.retrieval.rerank import Reranker

DB = EmbeddingIndex(np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32), np.array([0, 0, 1]), ["a", "b", "c"])


def test_aqe_averages_the_query_with_its_neighbours():
    q = np.array([[0.6, 0.8]], np.float32)  # nearest database vector: b = (0.8, 0.6)
    np.testing.assert_allclose(Reranker("aqe", k=1).queries(DB, q), [[2 ** -0.5, 2 ** -0.5]], atol=1e-6)
    assert Reranker("dba", k=1).queries(DB, q) is not None  # dba alone leaves queries as they are
    np.testing.assert_array_equal(Reranker("dba", k=1).queries(DB, q), q)


def test_alpha_weights_by_cosine_power():
    q = np.array([[0.6, 0.8]], np.float32)
    # k=2: neighbours b (cos 0.96) and c (cos 0.8); alpha=1: q + 0.96 b + 0.8 c, normalised
    want = q[0] + 0.96 * np.array([0.8, 0.6]) + 0.8 * np.array([0, 1])
    np.testing.assert_allclose(Reranker("aqe", k=2, alpha=1.0).queries(DB, q)[0], want / np.linalg.norm(want), atol=1e-5)


def test_dba_uses_other_database_vectors_only():
    z = Reranker("dba", k=1).database(DB).embeddings
    ab = np.array([0.9, 0.3]) / np.linalg.norm([0.9, 0.3])  # a and b are each other's nearest
    np.testing.assert_allclose(z[0], ab, atol=1e-6)
    np.testing.assert_allclose(z[1], ab, atol=1e-6)
    np.testing.assert_allclose(z[2], np.array([0.4, 0.8]) / np.linalg.norm([0.4, 0.8]), atol=1e-6)  # c with b
    assert Reranker("aqe").database(DB) is DB


def test_protocol_reranks_val_queries_only():
    val = EmbeddingIndex(np.array([[0.6, 0.8], [0.1, 0.995]], np.float32), np.array([0, 1]))
    trip = {"train": np.array([[0, 1, 2]]), "val": np.array([[0, 0, 1]])}
    plain = evaluate_embeddings(DB, trip, kept=np.arange(3), held=np.array([], int), ks=(1,), val=val)
    qe = evaluate_embeddings(DB, trip, kept=np.arange(3), held=np.array([], int), ks=(1,), val=val,
                             rerank=Reranker("aqe", k=1))
    assert plain["train"] == qe["train"]
    assert plain["val"]["precision@1"] == 100.0  # (0.6, 0.8) is nearest b; (0.1, 0.995) nearest c
    assert qe["val"]["precision@1"] == 100.0


@pytest.mark.parametrize("kwargs, match", [({"method": "qe"}, "rerank must be one of"), ({"k": 0}, "rerank_k"),
                                           ({"alpha": -1.0}, "rerank_alpha")])
def test_bad_values_are_one_line_errors(kwargs, match):
    with pytest.raises(RankingError, match=match):
        Reranker(**kwargs)


def test_config_fields():
    assert RunConfig().rerank == "none"
    from ranking_lib.choices import check_choices

    with pytest.raises(RankingError, match=r"^rerank must be one of none, aqe, dba, dba\+aqe, auto \(got 'bogus'\)$"):
        check_choices(RunConfig(rerank="bogus"))
    with pytest.raises(RankingError, match="rerank_k"):
        RunConfig(rerank_k=0)


def _unit(deg):
    r = np.deg2rad(deg)
    return [np.cos(r), np.sin(r)]


def test_auto_chooses_on_the_tuning_split_and_applies_it_to_val():
    # class 0 at 0, 2, 30 degrees, class 1 at 60, 62, 64; a class-1 image at 44 degrees is nearer
    # 30 (class 0) than 60, but the mean of its 3 nearest (30, 60, 62) lies nearer class 1
    emb = np.array([_unit(d) for d in (0, 2, 30, 60, 62, 64, 44)], np.float32)
    db = EmbeddingIndex(emb, np.array([0, 0, 0, 1, 1, 1, 1]))
    val = EmbeddingIndex(np.array([_unit(d) for d in (36, 1, 63)], np.float32), np.array([1, 0, 1]))
    trip = {"train": np.array([[0, 1, 3]]), "tune": np.array([[6, 5, 2]]), "val": np.array([[0, 2, 1]])}
    m = evaluate_embeddings(db, trip, kept=np.arange(6), held=np.array([6]), ks=(1,), val=val,
                            rerank=Reranker("auto"))
    assert m["tune"]["rerank_search"]["none"] == 0.0
    assert m["tune"]["precision@1"] == 100.0 and m["tune"]["rerank"] == m["val"]["rerank"] != "none"
    assert m["val"]["precision@1"] == 100.0  # plain search answers class 0 for the image at 36 degrees
    plain = evaluate_embeddings(db, trip, kept=np.arange(6), held=np.array([6]), ks=(1,), val=val)
    assert round(plain["val"]["precision@1"], 2) == 66.67 and plain["val"]["rerank"] == "none"


def test_auto_needs_a_tuning_split():
    with pytest.raises(RankingError, match="holdout_per_class"):
        evaluate_embeddings(DB, {"train": np.array([[0, 1, 2]])}, kept=np.arange(3), held=np.array([], int),
                            rerank=Reranker("auto"))
    with pytest.raises(RankingError, match="tuning split"):
        Reranker("auto").queries(DB, np.zeros((1, 2), np.float32))


def test_auto_shares_searches_but_scores_every_candidate_as_alone():
    # choose_rerank searches the queries once for all AQE candidates and builds each DBA database
    # once; every candidate's score must equal the candidate searched on its own
    from ranking_lib.retrieval.metrics import retrieval_metrics
    from ranking_lib.retrieval.protocol import choose_rerank
    from ranking_lib.retrieval.rerank import AUTO_CANDIDATES

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 8))
    labels = np.repeat(np.arange(6), 40)
    x = centres[labels] + 0.9 * rng.normal(size=(len(labels), 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    db = EmbeddingIndex(x[::2], labels[::2])
    q, ql = x[1::2], labels[1::2]
    best, scores = choose_rerank(db, q, ql, ks=(1, 10), index_options={})
    assert len(scores) == len(AUTO_CANDIDATES)
    for method, k, alpha in AUTO_CANDIDATES:
        r = Reranker(method, k, alpha)
        alone = r.database(db)
        want = retrieval_metrics(alone, r.queries(alone, q), ql, ks=(10,))["precision@10"]
        assert scores[r.name] == pytest.approx(want, abs=1e-9), r.name
    assert scores[best.name] == max(scores.values())
    assert len(set(scores.values())) > 1  # the candidates really differ on this data


def test_names_round_trip_and_bad_names_are_one_line_errors():
    from ranking_lib.retrieval.rerank import AUTO_CANDIDATES

    for method, k, alpha in AUTO_CANDIDATES:
        r = Reranker(method, k, alpha)
        assert Reranker.from_name(r.name).name == r.name
    for bad in ("", "pqe k=3", "aqe k=x", "aqe q=3"):
        with pytest.raises(RankingError, match="not a re-ranking name"):
            Reranker.from_name(bad)


def test_the_baseline_is_searched_with_the_trained_networks_choice(tmp_path):
    import json

    from ranking_lib import workflow

    cfg = RunConfig(run_dir=str(tmp_path), rerank="auto", holdout_per_class=5)
    assert workflow.run_reranker(cfg, "baseline").method == "auto"  # nothing chosen yet: its own choice
    (tmp_path / "metrics_trained.json").write_text(json.dumps({"config": {"rerank": "auto"},
                                                               "tune": {"rerank": "aqe k=20 alpha=3"}}))
    r = workflow.run_reranker(cfg, "baseline")
    assert (r.method, r.k, r.alpha) == ("aqe", 20, 3.0)
    assert workflow.run_reranker(cfg, "trained").method == "auto"
    assert workflow.run_reranker(cfg.replace(rerank="none"), "baseline").method == "none"
