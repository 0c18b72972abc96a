"""Training and embedding from cached outputs of the frozen stages."""

import json
from pathlib import Path

import numpy as np
import torch
from conftest import SMALL_CLASSES

from ranking_lib import workflow
from ranking_lib.core.config import RunConfig
from ranking_lib.models.inference import embed_images
from ranking_lib.retrieval.metrics import triplet_accuracy_from_index
from ranking_lib.models.model import build_model
from ranking_lib.run_settings import model_kwargs
from ranking_lib.models.stage_cache import compute_stage_features, load_or_build_stage_features


def _cfg(sample_dir, cache_dir, run_dir, **kw):
    base = dict(data_dir=str(sample_dir), cache_dir=str(cache_dir), run_dir=str(run_dir),
                input_size=64, embedding_dim=16, batch_size=16, steps=20, lr=1e-3, optimizer="adamw",
                num_triplets=320, val_triplets=500, gap=0.2, freeze_stages=7, cache_stage_features=True,
                miner="none", train_eval_queries=200, near_dup_queries=20, seed=0)
    base.update(kw)
    return RunConfig(**base)


def test_stage_features_match_the_full_forward_pass(sample_dir, sample_cache_dir):
    cfg = _cfg(sample_dir, sample_cache_dir, "unused")
    caches = workflow.load_caches(cfg, progress=False)
    net = build_model(**model_kwargs(cfg)).eval()
    feats = load_or_build_stage_features(net, caches["val"], pretrained=cfg.pretrained, progress=False)
    assert feats.dtype == np.float16 and feats.shape[0] == len(caches["val"])
    again = load_or_build_stage_features(net, caches["val"], pretrained=cfg.pretrained, progress=False)
    assert again.filename == feats.filename  # reused, not rebuilt
    in_memory = compute_stage_features(net, caches["val"].images[:8], progress=False)  # allocates its output
    assert isinstance(in_memory, np.ndarray) and np.array_equal(in_memory, feats[:8])
    imgs = torch.from_numpy(np.array(caches["val"].images[:8]))
    with torch.no_grad():
        full = net(imgs)
        from_stage = net.embed_features(net.features_from_stage(torch.from_numpy(np.array(feats[:8]))))
    torch.testing.assert_close(from_stage, full, atol=2e-2, rtol=0)  # float16 storage of the maps


def test_train_from_stage_features_improves_and_embeds(sample_dir, small_cache_dir, tmp_path):
    cfg = _cfg(sample_dir, small_cache_dir, tmp_path / "run", steps=40, lr=3e-3, num_triplets=640,
               max_classes=SMALL_CLASSES)
    workflow.prepare(cfg, progress=False)
    workflow.sample(cfg)
    workflow.train(cfg, progress=False)
    for model in ("trained", "baseline"):
        workflow.embed(cfg, model, progress=False)
        workflow.evaluate(cfg, model)
    log = workflow.load_loss_log(cfg)
    assert log["loss"][-10:].mean() < 0.9 * log["loss"][:10].mean()
    trained = json.loads(Path(cfg.run_dir, "metrics_trained.json").read_text())
    # the frozen stages are untouched: their weights equal the pretrained ones
    net, pre = workflow.load_model(cfg, "trained"), build_model(**model_kwargs(cfg))
    for (n, a), (_, b) in zip(net.backbone.stages[0].named_parameters(), pre.backbone.stages[0].named_parameters()):
        assert torch.equal(a, b), n
    # ranks more val triplets right than the same network before training (same seed, same head init)
    caches = workflow.load_caches(cfg, progress=False)
    start = workflow.initial_model(cfg, caches["val"].wnids)
    z0 = embed_images(start, workflow.stage_inputs(start, caches["val"], workflow.feature_options(cfg), progress=False), progress=False)
    before = triplet_accuracy_from_index(z0, workflow.load_run_triplets(cfg, "val", len(caches["val"])))
    assert trained["val"]["triplet_acc"] > before + 2, (before, trained["val"]["triplet_acc"])


def test_input_kind_is_stated_not_guessed():
    import pytest

    from ranking_lib.core.errors import RankingError
    from ranking_lib.models.inference import ModelInputs

    maps = np.zeros((2, 8, 4, 4), dtype=np.float16)
    with pytest.raises(RankingError, match="pass ModelInputs\\(array, 'stage_features'\\)"):
        ModelInputs.of(maps)
    assert ModelInputs(maps, "stage_features").from_stage
    assert ModelInputs.of(np.zeros((2, 64, 64, 3), dtype=np.uint8)).kind == "images"
    with pytest.raises(RankingError, match="images must be uint8"):
        ModelInputs(np.zeros((2, 64, 64, 3), dtype=np.float32))
    with pytest.raises(RankingError, match="stage features must be float16"):
        ModelInputs(np.zeros((2, 64, 64, 3), dtype=np.uint8), "stage_features")


def test_openvino_frozen_pass_equals_torch_and_has_its_own_file(sample_dir, sample_cache_dir, tmp_path):
    import pytest

    from ranking_lib.core.errors import RankingError
    from ranking_lib.models import runtimes
    from ranking_lib.models.stage_cache import stage_features_file

    cfg = _cfg(sample_dir, sample_cache_dir, "unused", input_size=96)
    with pytest.raises(RankingError, match="^frozen_runtime must be one of"):
        runtimes.resolve_runtime("onnx", "cpu", False)
    assert runtimes.resolve_runtime("torch", "cpu", False) == "torch"
    assert runtimes.resolve_runtime("auto", "cpu", True) == "torch"  # bf16: the measured torch numerics
    if not runtimes.openvino_available():
        assert runtimes.resolve_runtime("auto", "cpu", False) == "torch"
        with pytest.raises(RankingError, match="needs the openvino and onnx packages"):
            runtimes.resolve_runtime("openvino", "cpu", False)
        pytest.skip("OpenVINO or onnx not installed (pip install 'ranking-lib[fast]'): torch fallback checked")
    assert runtimes.resolve_runtime("auto", "cpu", False) == "openvino"
    caches = workflow.load_caches(cfg, progress=False)
    net = build_model(**model_kwargs(cfg)).eval()
    images = caches["val"].images[:24]
    ref = compute_stage_features(net, images, batch_size=10, progress=False)
    fast = compute_stage_features(net, images, batch_size=10, progress=False, runtime="openvino")
    a, b = ref.reshape(len(ref), -1).astype(np.float64), fast.reshape(len(fast), -1).astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.9999, cos.min()
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()  # float16 storage of both
    # the embeddings from either map agree
    with torch.no_grad():
        za = net.embed_features(net.features_from_stage(torch.from_numpy(ref.astype(np.float32))))
        zb = net.embed_features(net.features_from_stage(torch.from_numpy(fast.astype(np.float32))))
    assert torch.nn.functional.cosine_similarity(za, zb).min() > 0.9999
    # another runtime, another cache file (the torch key unchanged)
    c = caches["val"]
    assert stage_features_file(c, net, True) != stage_features_file(c, net, True, runtime="openvino")
    assert stage_features_file(c, net, True) == stage_features_file(c, net, True, runtime="torch")


def test_the_network_moves_to_its_device_outside_inference_mode(monkeypatch):
    """Seen on a GPU (multiscale network from stage features): a network moved to the GPU inside
    ``torch.inference_mode`` by the frozen-stage pass gets inference-tensor parameters, and its
    first training step fails. The CPU moves nothing, so this checks where the move happens."""
    cfg = RunConfig(pretrained=False, input_size=32, embedding_dim=8, freeze_stages=2, cache_stage_features=True)
    net = build_model(**model_kwargs(cfg))
    seen, to = [], net.to

    def recording_to(*args, **kwargs):
        seen.append(torch.is_inference_mode_enabled())
        return to(*args, **kwargs)

    monkeypatch.setattr(net, "to", recording_to)
    images = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    compute_stage_features(net, images, progress=False)
    embed_images(net, images, device="cpu", progress=False)
    assert len(seen) >= 2 and not any(seen), seen
    # the mechanism: parameters converted inside inference mode cannot take part in autograd
    lin = torch.nn.Linear(2, 2)
    with torch.inference_mode():
        lin.to(torch.float64)
    try:  # (a layer's weight is saved for the backward pass when its input needs a gradient)
        lin(torch.ones(1, 2, dtype=torch.float64, requires_grad=True)).sum().backward()
        raised = False
    except RuntimeError as e:
        raised = "Inference tensors" in str(e)
    assert raised
