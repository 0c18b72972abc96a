"""Instance triplets (triplets.instance) and the views that make their positives (training.views):
a view differs from its source, an instance triplet's positive is the query's own view, the
cached views are the frozen stages of those views, and a run with views resumes exactly."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_CLASSES

from ranking_lib import workflow
from ranking_lib.core.config import RunConfig
from ranking_lib.core.errors import RankingError
from ranking_lib.models.model import build_model
from ranking_lib.run_settings import feature_options, make_trainer, model_kwargs
from ranking_lib.models.stage_cache import compute_stage_features
from ranking_lib.training.checkpoint import read_checkpoint
from ranking_lib.triplets.presampled import PresampledTriplets
from ranking_lib.training.views import (
    NUM_PARAMS,
    TrainingViews,
    ViewImages,
    apply_views,
    load_or_build_view_features,
    step_view_params,
    view_params,
)
from ranking_lib.triplets.instance import InstanceTriplets


def _images(n=6, seed=0):
    """Smooth random images (a few blobs of colour), as photos are: blur and block quantisation
    change them little, so a view that differs does so by more than rounding."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 3, 8, 8)).astype(np.float32)
    big = torch.nn.functional.interpolate(torch.from_numpy(small), size=(64, 64), mode="bicubic", align_corners=False)
    return big.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def test_a_view_differs_from_its_source_and_is_seeded():
    x = _images()
    p = view_params(0, 0, len(x))
    a = apply_views(x, p)
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, apply_views(x, p))  # the same parameters, the same view
    diff = (a.float() - x.float()).abs().mean(dim=(1, 2, 3))
    assert (diff > 3).all(), diff  # every view is changed, not rounding noise
    assert not torch.equal(a, apply_views(x, view_params(0, 1, len(x))))  # another view, another image
    # each step of one change is really there: identity parameters keep the image (up to interpolation)
    ident = np.tile([1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9, 0.0, 0.9, 0.0], (len(x), 1))
    assert (apply_views(x, ident).float() - x.float()).abs().max() <= 1
    for col, value in ((0, 0.0), (3, 1.0), (6, 0.0), (8, 0.0)):  # crop to 60 %, brighter, blur on, JPEG-like on
        one = ident.copy()
        one[:, col] = value
        if col == 6:
            one[:, 7] = 1.0  # sigma 1.5 px
        changed = (apply_views(x, one).float() - x.float()).abs().mean(dim=(1, 2, 3))
        assert (changed > 1).all(), (col, changed)
    # a prefix of the images keeps its views (parameters per image), live views are per step
    assert np.array_equal(view_params(3, 2, 4), view_params(3, 2, 9)[:4])
    assert not np.array_equal(step_view_params(0, 5, 4), step_view_params(0, 6, 4))
    lazy = ViewImages(x.numpy(), seed=0, view=0)
    assert len(lazy) == len(x) and np.array_equal(lazy[1:4], a[1:4].numpy())
    with pytest.raises(RankingError, match="view parameters"):
        apply_views(x, np.zeros((2, NUM_PARAMS)))


def _source(labels, pool, batch=16, seed=0):
    """Pre-sampled class triplets over the images of `pool` (as a run's, without its held-out images)."""
    rng = np.random.default_rng(1)
    q = rng.choice(pool, 200)
    pos = np.array([rng.choice(pool[(labels[pool] == labels[i]) & (pool != i)]) for i in q])
    neg = np.array([rng.choice(pool[labels[pool] != labels[i]]) for i in q])
    return PresampledTriplets(np.stack([q, pos, neg], 1), batch, seed)


def test_instance_triplets_positive_is_the_query_and_negative_its_class():
    labels = np.repeat(np.arange(4), 10)
    held = np.array([0, 10, 20, 30])  # held out: never a negative
    kept = np.setdiff1d(np.arange(40), held)
    src = _source(labels, kept)
    inst = InstanceTriplets(src, labels, 0.5, num_views=3, seed=7, candidates=kept)
    for step in range(20):
        t, plain = inst.batch(step), src.batch(step)
        rows, views = inst.instance_rows(step)
        assert rows.sum() == 8  # round(0.5 * 16)
        assert np.array_equal(t[~rows], plain[~rows])  # class rows are the source's
        assert np.array_equal(t[:, 0], plain[:, 0])  # the same queries
        assert np.array_equal(t[rows, 1], t[rows, 0])  # the positive slot: the query's own image (its view)
        neg = t[rows, 2]
        assert np.array_equal(labels[neg], labels[t[rows, 0]]) and (neg != t[rows, 0]).all()
        assert not np.isin(neg, held).any()
        assert ((views[rows] >= 0) & (views[rows] < 3)).all() and (views[~rows] == -1).all()
    assert np.array_equal(inst.batch(3), InstanceTriplets(src, labels, 0.5, num_views=3, seed=7, candidates=kept).batch(3))  # seeded
    assert inst.sha256 != src.sha256 != InstanceTriplets(src, labels, 0.25, num_views=3, seed=7, candidates=kept).sha256
    with pytest.raises(RankingError, match="instance_fraction"):
        InstanceTriplets(src, labels, 0.0)


def test_instance_triplets_over_online_buffers():
    from ranking_lib.triplets.online import OnlineTriplets

    labels = np.repeat(np.arange(5), 12)
    kept = np.flatnonzero(np.arange(60) % 12 != 0)  # one image per class held out
    online = OnlineTriplets(labels[kept], batch_size=10, buffer_size=4, refresh_steps=3, seed=2, index=kept)
    inst = InstanceTriplets(online, labels, 0.3, seed=2, candidates=kept)
    for step in range(8):
        t, rows = inst.batch(step), inst.instance_rows(step)[0]
        assert rows.sum() == 3 and np.array_equal(t[~rows], online.batch(step)[~rows])
        assert np.array_equal(t[rows, 1], t[rows, 0]) and (labels[t[rows, 2]] == labels[t[rows, 0]]).all()
        assert np.isin(t, kept).all()


def test_training_views_put_the_querys_view_in_the_positive_slot():
    x = _images(9)  # 3 triplets: queries 0-2, positives 3-5, negatives 6-8
    rows = np.array([True, False, True])
    out, im = TrainingViews(seed=4).positives(x, None, np.array([10, 11, 12]), rows, views=np.full(3, -1), step=5)
    assert im is None
    live = apply_views(x[[0, 2]], step_view_params(4, 5, 2))
    assert torch.equal(out[3], live[0]) and torch.equal(out[5], live[1])
    assert not torch.equal(out[3], x[0])  # a view, not the query itself
    keep = [0, 1, 2, 4, 6, 7, 8]
    assert torch.equal(out[keep], x[keep])
    # cached: the positive reads the stage features of view k of the query's image
    feats = np.random.default_rng(0).standard_normal((20, 2, 4, 3, 3)).astype(np.float16)
    fx = torch.zeros(9, 4, 3, 3, dtype=torch.float16)
    out, _ = TrainingViews(0, feats).positives(fx, None, np.array([10, 11, 12]), rows, views=np.array([1, -1, 0]), step=0)
    assert np.array_equal(out[3].numpy(), feats[10, 1]) and np.array_equal(out[5].numpy(), feats[12, 0])
    assert not out[4].any()


def _cfg(sample_dir, cache_dir, run_dir, **kw):
    base = dict(data_dir=str(sample_dir), cache_dir=str(cache_dir), run_dir=str(run_dir), input_size=64,
                embedding_dim=16, batch_size=8, steps=8, lr=0.01, num_triplets=96, val_triplets=50, gap=0.5,
                checkpoint_every=4, log_every=2, seed=0, max_classes=SMALL_CLASSES, holdout_per_class=5,
                instance_fraction=0.5)
    base.update(kw)
    return RunConfig(**base)


@pytest.mark.parametrize("stage", [False, True], ids=["live-views", "cached-views"])
def test_a_run_with_views_resumes_exactly(sample_dir, small_cache_dir, tmp_path, stage):
    kw = dict(freeze_stages=7, cache_stage_features=True, views_per_image=2) if stage else {}
    a = _cfg(sample_dir, small_cache_dir, tmp_path / "a", miner="batch_hard", **kw)
    b = _cfg(sample_dir, small_cache_dir, tmp_path / "b", miner="batch_hard", **kw)
    for cfg in (a, b):
        workflow.prepare(cfg, progress=False)
        workflow.sample(cfg)
    workflow.train(a, progress=False)
    workflow.train(b, progress=False, stop_at=4)  # "interrupted" at step 4
    workflow.train(b, progress=False)
    sa = read_checkpoint(workflow.run_path(a, "checkpoints", "last.pt"))
    sb = read_checkpoint(workflow.run_path(b, "checkpoints", "last.pt"))
    assert sa["step"] == sb["step"] == 8
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    np.testing.assert_allclose(workflow.load_loss_log(a)["loss"], workflow.load_loss_log(b)["loss"])
    # the checkpoint names the instance source: a run without instance triplets is refused
    plain = RunConfig(**{**b.to_dict(), "instance_fraction": 0.0, "views_per_image": 0, "steps": 10})
    with pytest.raises(RankingError, match="instance_fraction"):
        workflow.train(plain, progress=False)


def test_the_trainer_feeds_the_querys_view_as_positive(sample_dir, small_cache_dir, tmp_path):
    from ranking_lib.data.holdout import holdout_split
    from ranking_lib.training.views import instance_training

    cfg = _cfg(sample_dir, small_cache_dir, tmp_path / "run", augment=False)
    workflow.prepare(cfg, progress=False)
    workflow.sample(cfg)
    cache = workflow.load_caches(cfg, progress=False)["train"]
    net = build_model(**model_kwargs(cfg))
    kept, _ = holdout_split(cache.labels, cfg.holdout_per_class, cfg.seed, cache.wnids)
    source, views = instance_training(workflow.load_run_triplets(cfg, "train", len(cache)), net, cache,
                                      feature_options(cfg), instance_fraction=cfg.instance_fraction,
                                      views_per_image=cfg.views_per_image, batch_size=cfg.batch_size, seed=cfg.seed,
                                      candidates=kept, progress=False)
    trainer = make_trainer(cfg, net, cache.images, cache.labels, source, views=views)
    x, _, y = trainer._batch(3)
    t = source.batch(3)
    rows, _ = source.instance_rows(3)
    r = np.flatnonzero(rows)
    expect = apply_views(torch.from_numpy(np.array(cache.images[t[r, 0]])), step_view_params(cfg.seed, 3, len(r)))
    assert torch.equal(x[8 + torch.from_numpy(r)], expect)
    assert torch.equal(x[torch.from_numpy(r)], torch.from_numpy(np.array(cache.images[t[r, 0]])))  # queries untouched
    assert torch.equal(y[8 + torch.from_numpy(r)], y[torch.from_numpy(r)])


def test_cached_views_are_the_frozen_stages_of_the_views(sample_dir, small_cache_dir, monkeypatch, tmp_path):
    cfg = _cfg(sample_dir, small_cache_dir, str(tmp_path / "run"), freeze_stages=7, cache_stage_features=True, views_per_image=2)
    workflow.prepare(cfg, progress=False)
    cache = workflow.load_caches(cfg, progress=False)["train"]
    net = build_model(**model_kwargs(cfg)).eval()
    feats = load_or_build_view_features(net, cache, feature_options(cfg), views_per_image=cfg.views_per_image, seed=cfg.seed, progress=False)
    assert feats.dtype == np.float16 and feats.shape[:2] == (len(cache), 2)
    for k in (0, 1):
        direct = compute_stage_features(net, ViewImages(cache.images[:5], cfg.seed, k), progress=False)
        assert np.array_equal(direct, feats[:5, k])
    assert not np.array_equal(feats[:5, 0], feats[:5, 1])
    import ranking_lib.training.views as views_mod

    monkeypatch.setattr(views_mod, "compute_stage_features", lambda *a, **k: pytest.fail("rebuilt"))
    again = load_or_build_view_features(net, cache, feature_options(cfg), views_per_image=cfg.views_per_image, seed=cfg.seed,
                                        progress=False)  # reused, not rebuilt
    assert again.filename == feats.filename
    # prepare counts the views file and its sidecar as the current cache's own, not as strays
    from ranking_lib.models.stage_cache import stray_files

    views_file = Path(feats.filename)
    assert views_file.name.startswith("views_train_") and views_file.with_suffix(".json").is_file()
    strays = stray_files(views_file.parent, {"train": cache})
    assert views_file not in strays and views_file.with_suffix(".json") not in strays
    other = views_file.with_name(f"views_train_{cfg.backbone}_64px_k7_{'0' * 16}_x2_s0_v1.npy")  # another cache's
    other.write_bytes(b"")
    try:
        assert other in stray_files(views_file.parent, {"train": cache})
    finally:
        other.unlink()


def test_config_refuses_views_without_their_path():
    with pytest.raises(RankingError, match="need views_per_image >= 1"):
        RunConfig(instance_fraction=0.5, freeze_stages=2, cache_stage_features=True)
    with pytest.raises(RankingError, match="views_per_image=3 needs the stage cache"):
        RunConfig(views_per_image=3)
    with pytest.raises(RankingError, match="instance_fraction must be <= 1"):
        RunConfig(instance_fraction=1.5)
    with pytest.raises(RankingError, match="instance_fraction must be >= 0"):
        RunConfig(instance_fraction=-0.1)


def test_the_ablation_rows_of_instance_triplets_are_valid_runs_of_the_cpu_profile():
    from ranking_lib.core.settings import resolve
    from ranking_lib.reporting import ablation

    cached = resolve("cpu", {**ablation.ROWS["instance-0.5"][0], "data_dir": "unused"}).config
    assert cached.cache_stage_features and cached.views_per_image == 2 and cached.instance_fraction == 0.5
    live = resolve("cpu", {**ablation.ROWS["instance-0.5-live"][0], "data_dir": "unused"}).config
    assert not live.cache_stage_features and live.views_per_image == 0 and live.instance_fraction == 0.5
