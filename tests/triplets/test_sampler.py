import numpy as np
import pytest

from ranking_lib.core.errors import RankingError
from ranking_lib.triplets.samplers import TripletSampler, load_triplets, save_triplets


def _labels(num_classes=200, per_class=500, seed=0):
    # shuffled and unequal class sizes, as a real split could be
    rng = np.random.default_rng(seed)
    sizes = rng.integers(per_class // 2, per_class + 1, size=num_classes)
    labels = np.repeat(np.arange(num_classes), sizes)
    return rng.permutation(labels)


def test_triplet_constraints_over_1e5_triplets():
    labels = _labels()
    t = TripletSampler(labels, seed=1).sample(100_000)
    assert t.shape == (100_000, 3) and t.dtype == np.int64
    q, p, n = t.T
    assert (labels[q] == labels[p]).all(), "positive must share the query's class"
    assert (q != p).all(), "positive must not be the query itself"
    assert (labels[q] != labels[n]).all(), "negative must come from another class"
    assert t.min() >= 0 and t.max() < len(labels)


def test_same_seed_same_triplets_other_seed_differs():
    labels = _labels()
    a = TripletSampler(labels, seed=7).sample(5000)
    b = TripletSampler(labels, seed=7).sample(5000)
    c = TripletSampler(labels, seed=8).sample(5000)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_queries_uniform_over_images_so_classes_balanced_by_size():
    labels = np.repeat(np.arange(50), 100)
    t = TripletSampler(labels, seed=0).sample(100_000)
    counts = np.bincount(labels[t[:, 0]], minlength=50)
    expected = 100_000 / 50
    # binomial sd ~ 44; 5 sd tolerance
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)
    neg_counts = np.bincount(labels[t[:, 2]], minlength=50)
    assert np.abs(neg_counts - expected).max() < 5 * np.sqrt(expected)


def test_positive_uniform_within_class():
    labels = np.array([0] * 4 + [1] * 6)
    t = TripletSampler(labels, seed=0).sample(60_000)
    sel = t[t[:, 0] == 0]
    counts = np.bincount(sel[:, 1], minlength=10)[:4]
    assert counts[0] == 0  # never itself
    assert np.allclose(counts[1:] / counts[1:].sum(), 1 / 3, atol=0.02)


def test_bad_labels():
    with pytest.raises(RankingError, match="at least 2 classes"):
        TripletSampler(np.zeros(10, dtype=int))
    with pytest.raises(RankingError, match=r"^class label 1 has 1 image\(s\): no positive"):
        TripletSampler(np.array([0, 0, 1]))
    with pytest.raises(RankingError, match=r"^class n02 \(label 1\) of the val split has 1 image\(s\).*1 more"):
        TripletSampler(np.array([0, 0, 1, 2]), class_ids=["n01", "n02", "n03"], split="val")
    with pytest.raises(RankingError, match="num_triplets"):
        TripletSampler(np.array([0, 0, 1, 1])).sample(0)


def test_save_load_round_trip_and_mismatch(tmp_path):
    t = TripletSampler(_labels(10, 20), seed=3).sample(100)
    path = save_triplets(tmp_path / "t.npy", t, {"seed": 3})
    np.testing.assert_array_equal(load_triplets(path), t)
    with pytest.raises(RankingError, match="sampled for other data"):
        load_triplets(path, num_images=int(t.max()))
    with pytest.raises(RankingError, match="not found"):
        load_triplets(tmp_path / "missing.npy")


def test_damaged_or_edited_triplets_are_refused(tmp_path):
    t = TripletSampler(_labels(10, 20), seed=3).sample(100)
    path = save_triplets(tmp_path / "t.npy", t)
    edited = t.copy()
    edited[5, 2] = edited[5, 1]  # a negative replaced by the positive: still in range, still (N, 3)
    np.save(path, edited)
    with pytest.raises(RankingError, match="damaged or was modified"):
        load_triplets(path, num_images=200)
    path.with_suffix(".json").unlink()
    with pytest.raises(RankingError, match="no readable sidecar"):
        load_triplets(path)
    np.save(path, t.astype(np.float64))
    with pytest.raises(RankingError, match=r"expected \(N, 3\) integers"):
        load_triplets(path)


def test_empty_triplet_file_with_a_valid_sidecar_is_one_line(tmp_path):
    path = save_triplets(tmp_path / "t.npy", np.zeros((0, 3), np.int64), {"seed": 0})
    with pytest.raises(RankingError, match=r"holds no triplets \(shape \(0, 3\)\).*re-run 'sample'"):
        load_triplets(path, num_images=10)


def test_triplets_sampled_with_other_settings_are_refused_naming_the_first(tmp_path):
    t = TripletSampler(_labels(10, 20), seed=3).sample(50)
    path = save_triplets(tmp_path / "t.npy", t, {"seed": 3, "holdout_per_class": 0})
    assert np.array_equal(load_triplets(path, 200, expect={"seed": 3, "holdout_per_class": 0, "sampler": "uniform"}), t)
    with pytest.raises(RankingError, match=r"t.npy was sampled with seed=3, but the run's config says seed=5"):
        load_triplets(path, 200, expect={"seed": 5})
    with pytest.raises(RankingError, match=r"sampler='uniform', but the run's config says sampler='relevance'"):
        load_triplets(path, 200, expect={"seed": 3, "sampler": "relevance"})
    assert len(load_triplets(path, 200, expect={"relevance_tp": 0.6})) == 50  # a setting it does not record
