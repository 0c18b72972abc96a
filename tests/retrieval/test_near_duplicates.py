"""Near-duplicate retrieval (ranking_lib.retrieval.near_duplicates): the transforms of both
families, seeded and changing, and the recall on hand-computed cases."""

import numpy as np
import pytest

from ranking_lib.core.errors import RankingError
from ranking_lib.retrieval.near_duplicates import (
    FAMILIES,
    HELD_OUT_TRANSFORMS,
    TRANSFORMS,
    near_duplicate_recall,
    transform_images,
)


def test_transforms_seeded_and_changing():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    for name in TRANSFORMS:
        a = transform_images(imgs, name, seed=1)
        assert a.shape == imgs.shape and a.dtype == np.uint8
        assert np.array_equal(a, transform_images(imgs, name, seed=1))
        assert not np.array_equal(a, imgs)
    # parameters are seeded per position: the first two images of a shorter batch get the same copies
    assert np.array_equal(transform_images(imgs, "crop", 1)[:2], transform_images(imgs[:2], "crop", 1))
    with pytest.raises(RankingError, match="unknown transform"):
        transform_images(imgs, "swirl")


def test_held_out_transforms_seeded_changing_and_apart_from_the_standard_ones():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    imgs[1] = np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None]  # a smooth ramp too
    assert set(HELD_OUT_TRANSFORMS).isdisjoint(TRANSFORMS)
    assert FAMILIES == {"standard": tuple(TRANSFORMS), "held_out": tuple(HELD_OUT_TRANSFORMS)}
    for name in HELD_OUT_TRANSFORMS:
        a = transform_images(imgs, name, seed=1)
        assert a.shape == imgs.shape and a.dtype == np.uint8
        assert np.array_equal(a, transform_images(imgs, name, seed=1)), name
        assert not np.array_equal(a, transform_images(imgs, name, seed=2)), name
        for i in range(len(imgs)):
            assert np.abs(a[i].astype(int) - imgs[i]).mean() > 2, (name, i)  # every copy is changed
    # the ramp's gamma copy is a monotone curve of it: same order of values, other values
    g = transform_images(imgs[1:2], "gamma", seed=1)[0, 0, :, 0].astype(int)
    assert np.all(np.diff(g) >= 0) and not np.array_equal(g, imgs[1, 0, :, 0])
    # an occluded copy is the original outside one flat rectangle
    o = transform_images(imgs, "occlude", seed=1)[0]
    changed = (o != imgs[0]).any(axis=2)
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    box = o[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    assert (box == box[0, 0]).all() and 0.1 < box.shape[0] * box.shape[1] / 64 ** 2 < 0.3


def test_near_duplicate_recall_reports_both_families_apart():
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)

    def embed(x):  # the exact pixels: only an untouched copy would be found first
        return x.reshape(len(x), -1).astype(np.float32)

    m = near_duplicate_recall(embed, imgs, np.zeros((0, 16 * 16 * 3)), ks=(1, 10), seed=0,
                              transforms=("jitter", "gamma", "occlude"))
    assert m["near_dup_recall@1"] == m["near_dup_recall@1_jitter"]  # the standard family: jitter alone
    assert m["near_dup_held_out_recall@10"] == 100.0  # 4 originals: all within 10
    assert m["near_dup_held_out_recall@1"] == pytest.approx((m["near_dup_recall@1_gamma"]
                                                            + m["near_dup_recall@1_occlude"]) / 2)
    only_standard = near_duplicate_recall(embed, imgs, np.zeros((0, 768)), ks=(1,), transforms=("blur",))
    assert "near_dup_held_out_recall@1" not in only_standard and "near_dup_recall@1" in only_standard
    with pytest.raises(RankingError, match="near-duplicate transforms"):
        near_duplicate_recall(embed, imgs, np.zeros((0, 768)), transforms=("swirl",))


def test_near_duplicate_recall_by_hand():
    imgs = np.zeros((3, 8, 8, 3), np.uint8)
    imgs[:, :, :, 0] = np.array([0, 100, 200])[:, None, None]  # three images, red 0 / 100 / 200

    def embed(x):  # mean red channel: copies of image i stay near image i ...
        return x[..., 0].reshape(len(x), -1).mean(1, keepdims=True).astype(np.float32)

    # ... unless colour jitter moves a copy nearer another item (a database item sits at 99)
    m = near_duplicate_recall(embed, imgs, np.array([[99.0], [500.0]]), ks=(1, 10), seed=0,
                              transforms=("jitter",))
    assert m["near_dup_queries"] == 3 and m["near_dup_database"] == 5
    assert m["near_dup_recall@10_jitter"] == 100.0  # all 5 items are within 10
    z = embed(transform_images(imgs, "jitter", 0))[:, 0]
    # by hand: a hit at 1 when the copy is nearer its original than any other item
    items = np.array([99.0, 500.0, 0.0, 100.0, 200.0])
    hits = [np.argmin(np.abs(items - v)) == 2 + i for i, v in enumerate(z)]
    assert m["near_dup_recall@1"] == pytest.approx(100 * np.mean(hits))
    assert 0 < m["near_dup_recall@1"] < 100  # this seed's red-100 copy darkens past 99.5: a miss
    # an embedding that ignores the image finds nothing but the first item
    m = near_duplicate_recall(lambda x: np.zeros((len(x), 1), np.float32), imgs, np.zeros((4, 1)), ks=(1,),
                              transforms=("jpeg",))
    assert m["near_dup_recall@1"] == 0.0
