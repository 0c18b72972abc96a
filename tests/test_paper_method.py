"""The paper's own method as options (Wang et al. 2014): relevance-weighted sampling with in-class
negatives (§4), online reservoir buffers (§4, Fig. 4) and the multiscale network (§3)."""

import numpy as np
import pytest
import torch
from conftest import SMALL_CLASSES

from ranking_lib import workflow
from ranking_lib.training.checkpoint import load_model_state, read_checkpoint
from ranking_lib.core.config import RunConfig
from ranking_lib.core.errors import CheckpointError, RankingError
from ranking_lib.models.inference import ModelInputs, embed_images
from ranking_lib.models.model import EmbeddingNet
from ranking_lib.triplets.online import OnlineTriplets, fill_buffers, reservoir_keys
from ranking_lib.triplets.relevance import RelevanceScores
from ranking_lib.triplets.samplers import RelevanceTripletSampler


def _toy(num_classes=4, per_class=30, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    centers = rng.normal(size=(num_classes, dim)) * 2
    feats = np.abs(centers[labels] + rng.normal(size=(len(labels), dim)))  # non-negative like pooled ReLU features
    return labels, feats.astype(np.float32)


# ---- relevance-weighted sampling ---------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_relevance_sampler_constraints(fraction):
    labels, feats = _toy()
    s = RelevanceTripletSampler(labels, feats, out_of_class_fraction=fraction, tp=0.9, tr=0.05, seed=3)
    t = s.sample(4000)
    q, p, n = t.T
    assert (labels[q] == labels[p]).all()
    assert (q != p).all() and (q != n).all() and (p != n).all()
    in_class = labels[n] == labels[q]
    rel = RelevanceScores(feats, labels)
    rqp = np.einsum("ij,ij->i", rel.features[q], rel.features[p])
    rqn = np.einsum("ij,ij->i", rel.features[q], rel.features[n])
    assert (rqp[in_class] - rqn[in_class] >= 0.05 - 1e-9).all()  # the T_r margin
    share_out = 1 - in_class.mean()
    assert abs(share_out - fraction) < 0.04 + s.in_class_fallbacks / len(t), (share_out, fraction)
    assert np.array_equal(t, RelevanceTripletSampler(labels, feats, out_of_class_fraction=fraction, tp=0.9, tr=0.05, seed=3).sample(4000))
    assert not np.array_equal(t, RelevanceTripletSampler(labels, feats, out_of_class_fraction=fraction, tp=0.9, tr=0.05, seed=4).sample(4000))


def test_relevance_sampler_frequencies_follow_the_paper():
    """Queries proportional to r_i; a query's positives proportional to min(T_p, r_i,i+)."""
    labels, feats = _toy(num_classes=2, per_class=6, dim=4, seed=1)
    s = RelevanceTripletSampler(labels, feats, out_of_class_fraction=1.0, tp=0.9, tr=0.0, seed=0)
    t = s.sample(200_000)
    want_q = s.relevance.total / s.relevance.total.sum()
    got_q = np.bincount(t[:, 0], minlength=len(labels)) / len(t)
    assert np.abs(got_q - want_q).max() < 0.005
    cand, prob = s.positive_probabilities(0)
    rows = t[t[:, 0] == 0]
    got = np.array([(rows[:, 1] == c).mean() for c in cand])
    assert np.abs(got - prob).max() < 0.02, (got, prob)
    r = s.relevance.rows(np.array([0]), cand)[0]
    capped = np.minimum(r, 0.9) * (cand != 0)
    assert np.allclose(prob, capped / capped.sum())
    assert (r[cand != 0] > 0.9).any() and (r[cand != 0] < 0.9).any()  # the case exercises the cap


def test_relevance_sampler_bad_input_is_one_line():
    labels, feats = _toy()
    with pytest.raises(RankingError, match="out_of_class_fraction"):
        RelevanceTripletSampler(labels, feats, out_of_class_fraction=1.5)
    with pytest.raises(RankingError, match="golden features"):
        RelevanceTripletSampler(labels, feats[:-1])
    with pytest.raises(RankingError, match="need sampler=relevance"):
        RunConfig(sampler="uniform", out_of_class_fraction=0.2)


def test_in_class_negatives_fall_back_only_when_none_exists():
    # class 0: three identical images (no relevance margin possible) -> every in-class draw falls back
    labels = np.array([0, 0, 0, 1, 1, 1])
    feats = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0.2, 1], [0.9, 1]], dtype=np.float32)
    s = RelevanceTripletSampler(labels, feats, out_of_class_fraction=0.0, tp=1.0, tr=0.05, seed=0)
    t = s.sample(300)
    from_zero = labels[t[:, 0]] == 0
    assert (labels[t[from_zero, 2]] == 1).all()  # out-of-class, counted
    assert s.in_class_fallbacks >= from_zero.sum()


# ---- online buffers ----------------------------------------------------------------------
class Reservoir:
    """One class buffer, filled one image at a time (A-Res: keep the `capacity` largest keys):
    the reference the vectorised `fill_buffers` is checked against."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: list[int] = []
        self.keys: list[float] = []

    def offer(self, item: int, key: float) -> None:
        if len(self.items) < self.capacity:
            self.items.append(item)
            self.keys.append(key)
            return
        low = int(np.argmin(self.keys))
        if key > self.keys[low]:
            self.items[low], self.keys[low] = item, key


def test_reservoir_one_by_one_equals_the_vectorised_fill():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=400)
    stream = rng.permutation(400)[:300]
    keys = reservoir_keys(rng.random(300), rng.random(300) + 0.1)
    pools = fill_buffers(stream, keys, labels, 5, capacity=7)
    for c in range(5):
        r = Reservoir(7)
        for item, key in zip(stream, keys):
            if labels[item] == c:
                r.offer(int(item), float(key))
        assert sorted(r.items) == pools[c].tolist()
        assert len(r.items) == min(7, int((labels[stream] == c).sum()))


def test_reservoir_keys_sample_in_proportion_to_weight():
    """Capacity 1, weights 1 and 9: the heavy image is kept with probability 9/10."""
    rng = np.random.default_rng(1)
    u = rng.random((20_000, 2))
    keys = reservoir_keys(u, np.array([1.0, 9.0]))
    kept_heavy = (keys[:, 1] > keys[:, 0]).mean()
    assert abs(kept_heavy - 0.9) < 0.01


def test_online_batches_are_seeded_by_step_and_respect_classes():
    labels, feats = _toy(num_classes=5, per_class=40)
    src = OnlineTriplets(labels, batch_size=32, buffer_size=8, refresh_steps=3, features=feats,
                         out_of_class_fraction=0.3, tp=0.9, tr=0.02, seed=0)
    again = OnlineTriplets(labels, batch_size=32, buffer_size=8, refresh_steps=3, features=feats,
                           out_of_class_fraction=0.3, tp=0.9, tr=0.02, seed=0)
    for step in (0, 1, 5, 40):
        t = src.batch(step)
        assert np.array_equal(t, again.batch(step))
        q, p, n = t.T
        assert (labels[q] == labels[p]).all() and (q != p).all() and (q != n).all()
        pools = np.concatenate(src.buffers(step // 3))
        assert np.isin(t, pools).all()  # everything comes out of the round's buffers
        assert all(len(b) <= 8 for b in src.buffers(step // 3))
    assert not np.array_equal(src.batch(0), src.batch(1))
    assert not np.array_equal(np.concatenate(src.buffers(0)), np.concatenate(src.buffers(1)))  # the stream moves on
    with pytest.raises(RankingError, match="need relevance features"):
        OnlineTriplets(labels, batch_size=4, out_of_class_fraction=0.5)


def test_online_index_maps_back_to_the_split():
    labels, _ = _toy(num_classes=3, per_class=10)
    index = np.arange(len(labels)) * 2 + 1
    t = OnlineTriplets(labels, batch_size=16, buffer_size=4, index=index).batch(0)
    assert np.isin(t, index).all()


# ---- multiscale network ------------------------------------------------------------------
def test_multiscale_shapes_norms_and_gradients_reach_every_path():
    torch.manual_seed(0)
    net = EmbeddingNet("efficientnet_lite0", embedding_dim=32, pretrained=False, input_size=64, architecture="multiscale",
                       freeze_stages=0, channels_last=False)
    assert len(net.paths) == 2 and [p.factor for p in net.paths] == [4, 8]
    assert net.head.in_features == net.backbone.feature_dim + 2 * 4 * 4 * 96
    imgs = torch.randint(0, 256, (6, 64, 64, 3), dtype=torch.uint8)
    z = net.train()(imgs)
    assert z.shape == (6, 32)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(6))
    (z[:, 0] * torch.arange(6.0)).sum().backward()
    for name, p in [("path 4:1", net.paths[0].conv.weight), ("path 8:1", net.paths[1].conv.weight),
                    ("backbone last stage", next(net.backbone.stages[-1].parameters())),
                    ("head", net.head.weight)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert net.architecture()["architecture"] == "multiscale"


def test_multiscale_from_stage_features_needs_and_uses_the_images(sample_dir, sample_cache_dir):
    cfg = RunConfig(data_dir=str(sample_dir), cache_dir=str(sample_cache_dir), run_dir="unused", input_size=64,
                    embedding_dim=16, freeze_stages=7, cache_stage_features=True, architecture="multiscale")
    caches = workflow.load_caches(cfg, progress=False)
    net = workflow.build_model(**workflow.model_kwargs(cfg)).eval()
    inputs = workflow.model_inputs(net, caches["val"], workflow.feature_options(cfg), progress=False)
    assert inputs.kind == "stage_features" and inputs.images is not None
    z_stage = embed_images(net, ModelInputs(inputs.array[:8], "stage_features", inputs.images[:8]), progress=False)
    z_full = embed_images(net, np.array(caches["val"].images[:8]), progress=False)
    np.testing.assert_allclose(z_stage, z_full, atol=2e-2)  # float16 storage of the maps
    with pytest.raises(RankingError, match="needs the images"):
        embed_images(net, ModelInputs(inputs.array[:8], "stage_features"), progress=False)


# ---- end to end on the demo-sized sample --------------------------------------------------
def _cfg(sample_dir, cache_dir, run_dir, **kw):
    base = dict(data_dir=str(sample_dir), max_classes=SMALL_CLASSES, cache_dir=str(cache_dir), run_dir=str(run_dir),
                input_size=64, embedding_dim=16, batch_size=8, steps=6, lr=1e-3, optimizer="adamw",
                num_triplets=200, val_triplets=200, gap=0.2, freeze_stages=7, cache_stage_features=True,
                miner="batch_hard", train_eval_queries=100, checkpoint_every=3, near_dup_queries=20,
                seed=0)
    base.update(kw)
    return RunConfig(**base)


def _all(cfg):
    workflow.prepare(cfg, progress=False)
    workflow.sample(cfg)
    workflow.train(cfg, progress=False)
    workflow.embed(cfg, "trained", progress=False)
    return workflow.evaluate(cfg, "trained")


def test_multiscale_with_relevance_sampling_end_to_end(sample_dir, small_cache_dir, tmp_path):
    cfg = _cfg(sample_dir, small_cache_dir, tmp_path / "run", architecture="multiscale",
               out_of_class_fraction=0.2, holdout_per_class=5)
    m = _all(cfg)
    assert {"train", "tune", "val"} <= set(m)
    import json
    side = json.loads((tmp_path / "run" / "triplets_train.json").read_text())
    assert side["sampler"] == "relevance" and side["in_class_negatives"] > 0.6 * side["num_triplets"]
    # a single-scale network refuses the multiscale checkpoint in one line
    single = workflow.build_model(**workflow.model_kwargs(cfg.replace(architecture="single")))
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError, match="architecture='multiscale'"):
        load_model_state(single, read_checkpoint(path), path)


def test_online_training_resumes_exactly(sample_dir, small_cache_dir, tmp_path):
    cfg = _cfg(sample_dir, small_cache_dir, tmp_path / "straight", triplet_source="online",
               out_of_class_fraction=0.5, buffer_size=4, buffer_refresh_steps=2)
    _all(cfg)
    cut = cfg.replace(run_dir=str(tmp_path / "cut"))
    workflow.prepare(cut, progress=False)
    workflow.sample(cut)
    workflow.train(cut, progress=False, stop_at=3)
    workflow.train(cut, progress=False)  # resumes at step 3
    a = read_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = read_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # another source (other buffer settings) is refused on resume
    with pytest.raises(CheckpointError, match="buffer_size"):
        workflow.train(cut.replace(buffer_size=5, steps=8), progress=False)
