import numpy as np
import pytest

from ranking_lib.core.errors import RankingError
from ranking_lib.retrieval.faiss_index import faiss_available
from ranking_lib.retrieval.index import EmbeddingIndex

EXACT = ["torch"] + (["faiss"] if faiss_available() else [])
needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss not installed")


def _data(n=300, d=12, q=25, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    queries = rng.normal(size=(q, d)).astype(np.float32)
    labels = rng.integers(0, 5, size=n)
    return x, labels, queries


def _reference(x, queries, k, far=False, exclude=None):
    d = np.linalg.norm(x[None, :, :].astype(np.float64) - queries[:, None, :], axis=2)
    if exclude is not None:
        d[np.arange(len(queries)), exclude] = -np.inf if far else np.inf
    order = np.argsort(-d if far else d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


@pytest.mark.parametrize("backend", EXACT)
def test_topk_matches_bruteforce_batch_and_single(backend):
    x, labels, q = _data()
    index = EmbeddingIndex(x, labels, backend=backend)
    assert index.backend == backend and len(index) == 300 and index.dim == 12
    idx, dist = index.topk(q, 10)
    ref_idx, ref_dist = _reference(x, q, 10)
    assert idx.dtype == np.int64 and dist.dtype == np.float32 and idx.shape == (25, 10)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(dist, axis=1) >= 0)

    i1, d1 = index.topk(q[3], 10)
    assert i1.shape == (10,) and d1.shape == (10,)
    np.testing.assert_array_equal(i1, ref_idx[3])
    np.testing.assert_allclose(d1, ref_dist[3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", EXACT)
def test_bottomk_matches_bruteforce(backend):
    x, labels, q = _data(seed=1)
    index = EmbeddingIndex(x, labels, backend=backend)
    idx, dist = index.bottomk(q, 7)
    ref_idx, ref_dist = _reference(x, q, 7, far=True)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(dist, axis=1) <= 0)
    i1, _ = index.bottomk(q[0], 7)
    np.testing.assert_array_equal(i1, ref_idx[0])


@pytest.mark.parametrize("backend", EXACT)
def test_chunked_equals_one_shot(backend):
    x, labels, q = _data(q=40, seed=2)
    big = EmbeddingIndex(x, labels, backend=backend, chunk_size=4096)
    small = EmbeddingIndex(x, labels, backend=backend, chunk_size=7)
    for method in ("topk", "bottomk"):
        a_i, a_d = getattr(big, method)(q, 9)
        b_i, b_d = getattr(small, method)(q, 9)
        np.testing.assert_array_equal(a_i, b_i)
        np.testing.assert_array_equal(a_d, b_d)


@pytest.mark.parametrize("backend", EXACT)
def test_exclude_drops_self(backend):
    x, labels, _ = _data(n=120, seed=3)
    ids = np.array([0, 5, 17, 119])
    index = EmbeddingIndex(x, labels, backend=backend, chunk_size=3)
    idx, dist = index.topk(x[ids], 6, exclude=ids)
    assert not np.any(idx == ids[:, None])
    ref_idx, ref_dist = _reference(x, x[ids], 6, exclude=ids)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-5)
    # without exclusion the query itself comes first at distance 0
    idx0, dist0 = index.topk(x[ids], 1)
    np.testing.assert_array_equal(idx0[:, 0], ids)
    np.testing.assert_allclose(dist0[:, 0], 0.0, atol=1e-6)
    # k = N - 1 is allowed with exclude and returns everything but self
    full, _ = index.topk(x[ids], 119, exclude=ids)
    for row, i in zip(full, ids):
        assert sorted(row.tolist()) == [j for j in range(120) if j != i]
    far, _ = index.bottomk(x[ids], 119, exclude=ids)
    assert not np.any(far == ids[:, None])


def test_ties_go_to_lower_index():
    x = np.array(
        [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [3.0, 0.0]], dtype=np.float32
    )
    index = EmbeddingIndex(x, np.zeros(5, dtype=np.int64), backend="torch")
    idx, dist = index.topk(np.zeros(2, dtype=np.float32), 3)
    np.testing.assert_array_equal(idx, [0, 1, 2])
    np.testing.assert_allclose(dist, [1.0, 1.0, 1.0])
    idx, _ = index.bottomk(np.zeros(2, dtype=np.float32), 2)
    np.testing.assert_array_equal(idx, [4, 0])


@pytest.mark.parametrize("backend", EXACT)
def test_bad_k_and_dims(backend):
    x, labels, q = _data(n=50)
    index = EmbeddingIndex(x, labels, backend=backend)
    with pytest.raises(RankingError, match=r"k=51 must be between 1 and 50"):
        index.topk(q, 51)
    with pytest.raises(RankingError, match=r"k=0 must be between 1 and 50"):
        index.topk(q, 0)
    with pytest.raises(RankingError, match=r"k=50 must be between 1 and 49"):
        index.topk(x[:2], 50, exclude=np.array([0, 1]))
    with pytest.raises(RankingError, match=r"k=51 must be between 1 and 50"):
        index.bottomk(q, 51)
    with pytest.raises(
        RankingError, match=r"query dimension 11 does not match the index dimension 12"
    ):
        index.topk(q[:, :11], 3)


def test_constructor_validation():
    x, labels, _ = _data(n=20)
    with pytest.raises(RankingError, match=r"has 20 embeddings but 19 labels"):
        EmbeddingIndex(x, labels[:19])
    with pytest.raises(RankingError, match=r"2-D"):
        EmbeddingIndex(x[0], labels[:1])
    bad = x.copy()
    bad[4, 2] = np.nan
    with pytest.raises(RankingError, match=r"NaN or Inf.*row 4"):
        EmbeddingIndex(bad, labels)
    with pytest.raises(
        RankingError, match=r"^search_backend must be one of auto, torch, .*faiss-hnsw \(got 'annoy'\)$"
    ):
        EmbeddingIndex(x, labels, backend="annoy")
    with pytest.raises(RankingError, match=r"20 embeddings but 3 paths"):
        EmbeddingIndex(x, labels, paths=["a", "b", "c"])


def test_save_load_round_trip(tmp_path):
    x, labels, q = _data(n=30)
    paths = [f"train/n0/images/img_{i}.JPEG" for i in range(30)]
    index = EmbeddingIndex(x, labels, paths=paths, backend="torch")
    target = tmp_path / "sub" / "emb.npz"
    index.save(target)
    assert target.is_file() and [p.name for p in target.parent.iterdir()] == ["emb.npz"]
    with np.load(target) as z:
        assert set(z.files) == {"embeddings", "labels", "paths"}
        assert z["embeddings"].dtype == np.float32 and z["labels"].dtype == np.int64
    back = EmbeddingIndex.load(target, backend="torch")
    np.testing.assert_array_equal(back.embeddings, x)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.paths == paths
    np.testing.assert_array_equal(back.topk(q, 4)[0], index.topk(q, 4)[0])
    # no paths -> None survives the round trip
    EmbeddingIndex(x, labels).save(tmp_path / "nopaths.npz")
    assert EmbeddingIndex.load(tmp_path / "nopaths.npz").paths is None


def test_load_errors(tmp_path):
    x, labels, _ = _data(n=10)
    missing_key = tmp_path / "nolabels.npz"
    np.savez(missing_key, embeddings=x, paths=np.array([], dtype=str))
    with pytest.raises(RankingError, match=r"nolabels\.npz lacks key\(s\) labels"):
        EmbeddingIndex.load(missing_key)
    mismatch = tmp_path / "mismatch.npz"
    np.savez(mismatch, embeddings=x, labels=labels[:9], paths=np.array([], dtype=str))
    with pytest.raises(
        RankingError, match=r"mismatch\.npz.*10 embeddings but 9 labels"
    ):
        EmbeddingIndex.load(mismatch)
    with pytest.raises(RankingError, match=r"absent\.npz does not exist"):
        EmbeddingIndex.load(tmp_path / "absent.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(RankingError, match=r"garbage\.npz"):
        EmbeddingIndex.load(garbage)


def _clustered(n, d, clusters, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d)).astype(np.float32) * 4
    assign = rng.integers(0, clusters, size=n)
    return (centers[assign] + rng.normal(size=(n, d)).astype(np.float32)), assign


@needs_faiss
@pytest.mark.parametrize("backend", ["faiss-hnsw", "faiss-ivf", "faiss-ivfpq"])
def test_approximate_recall(backend):
    x, labels = _clustered(4000, 32, 20, seed=4)
    # queries: database points perturbed by small noise (so the exact top-10 is well defined)
    q = (
        x[:200]
        + np.random.default_rng(5).normal(size=(200, 32)).astype(np.float32) * 0.1
    )
    exact, _ = EmbeddingIndex(x, labels, backend="torch").topk(q, 10)
    approx_index = EmbeddingIndex(x, labels, backend=backend)
    approx, dist = approx_index.topk(q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall > 0.9
    # returned distances are exact for the returned ids
    ref = np.linalg.norm(x[approx].astype(np.float64) - q[:, None, :], axis=2)
    np.testing.assert_allclose(dist, ref, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(dist, axis=1) >= 0)


@needs_faiss
def test_auto_backend_and_faiss_agree_with_torch():
    x, labels, q = _data(n=2000, d=64, q=100, seed=6)
    t_i, t_d = EmbeddingIndex(x, labels, backend="torch").topk(q, 20)
    f_i, f_d = EmbeddingIndex(x, labels, backend="faiss").topk(q, 20)
    np.testing.assert_array_equal(np.sort(t_i, axis=1), np.sort(f_i, axis=1))
    np.testing.assert_allclose(t_d, f_d, rtol=1e-6)
    assert EmbeddingIndex(x, labels).backend in ("torch", "faiss")


@needs_faiss
def test_ivfpq_codes_and_refine():
    """IVF-PQ stores pq_m-byte codes; with every list probed and every vector a candidate
    (refine x k >= N) the exact re-rank makes it exact; fewer candidates lose recall."""
    x, labels = _clustered(3000, 32, 10, seed=7)
    q = np.random.default_rng(8).normal(size=(50, 32)).astype(np.float32) * 4
    exact_i, exact_d = EmbeddingIndex(x, labels, backend="torch").topk(q, 10)
    full = EmbeddingIndex(x, labels, backend="faiss-ivfpq", nlist=16, nprobe=16, pq_m=4, refine=300)
    i, d = full.topk(q, 10)
    np.testing.assert_array_equal(i, exact_i)
    np.testing.assert_allclose(d, exact_d, rtol=1e-6)
    assert full.faiss_index.pq.M == 4 and full.faiss_index.code_size == 4 and full.faiss_index.nprobe == 16
    one = EmbeddingIndex(x, labels, backend="faiss-ivfpq", nlist=16, nprobe=16, pq_m=4, refine=1)
    i1, _ = one.topk(q, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i1, exact_i)]) < 1.0


def test_index_defaults_and_bad_parameters():
    from ranking_lib.retrieval.faiss_index import default_nlist, default_pq_m

    assert [default_pq_m(d) for d in (128, 200, 1280, 7, 2)] == [32, 50, 320, 1, 1]
    assert default_nlist(1_000_000) == 4000 and default_nlist(100) == 2
    x, labels, _ = _data(n=50, d=12)
    for kwargs, msg in (({"nprobe": 0}, "nprobe must be >= 1"), ({"hnsw_m": 1}, "hnsw_m must be >= 2"),
                        ({"refine": 0}, "refine must be >= 1"), ({"nlist": 0}, "nlist must be >= 1")):
        with pytest.raises(RankingError, match=msg):
            EmbeddingIndex(x, labels, backend="torch", **kwargs)
    if faiss_available():
        with pytest.raises(RankingError, match="pq_m=5 must divide the embedding size 12"):
            EmbeddingIndex(x, labels, backend="faiss-ivfpq", pq_m=5)


@needs_faiss
def test_factory_strings():
    from ranking_lib.retrieval.faiss_index import factory_string

    assert factory_string("faiss-ivf", 10_000, 128, nlist=100) == "IVF100,Flat"
    assert factory_string("faiss-ivfpq", 10_000, 128, nlist=100, refine=1) == "IVF100,PQ32x8"
    assert factory_string("faiss-ivfpq", 10_000, 128, nlist=100, pq_m=16, refine=4) == "IVF100,PQ16x8,Refine(Flat)"
    assert factory_string("faiss-ivfpq", 100, 12, refine=1) == "IVF2,PQ3x6"  # fewer bits below 256 vectors
    assert factory_string("faiss-hnsw", 10, 4, hnsw_m=16) == "HNSW16,Flat"


@needs_faiss
@pytest.mark.parametrize("backend,refine", [("faiss-ivf", 4), ("faiss-hnsw", 4), ("faiss-ivfpq", 4), ("faiss-ivfpq", 1)])
def test_approximate_backends_keep_no_float_copy(tmp_path, backend, refine):
    """Approximate backends hold the vectors once inside FAISS (or, IVF-PQ without refine, not at
    all); `embeddings` reconstructs them exactly, or reads the file the index came from."""
    x, labels = _clustered(2000, 32, 10, seed=9)
    q = x[:20] + 0.01
    opts = dict(backend=backend, nlist=8, nprobe=8, pq_m=8, refine=refine)
    index = EmbeddingIndex(x, labels, **opts)
    kept = EmbeddingIndex(x, labels, keep_vectors=True, **opts)
    assert not index.keeps_vectors and kept.keeps_vectors
    assert kept.nbytes() - index.nbytes() == x.nbytes
    if backend == "faiss-ivfpq" and refine == 1:
        assert index.nbytes() < x.nbytes / 2  # 8-byte codes + 8-byte ids, not 128 bytes of floats
        with pytest.raises(RankingError, match="keeps only PQ codes"):
            index.embeddings
        kept.save(tmp_path / "x.npz")
        index = EmbeddingIndex.load(tmp_path / "x.npz", **opts)
    np.testing.assert_array_equal(index.embeddings, x)
    np.testing.assert_array_equal(index.bottomk(q, 5)[0], kept.bottomk(q, 5)[0])
    i, d = index.topk(q, 5)
    np.testing.assert_array_equal(np.sort(i, axis=1), np.sort(kept.topk(q, 5)[0], axis=1))
    if not (backend == "faiss-ivfpq" and refine == 1):  # exact distances of the returned ids
        np.testing.assert_allclose(d, np.linalg.norm(x[i] - q[:, None], axis=2), rtol=1e-5, atol=1e-5)
