"""The tuning split (held-out training images) and CPU bf16 autocast."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_scripts.make_demo_dataset import make_demo_dataset
from ranking_lib import cli, workflow
from ranking_lib.core import devices
from ranking_lib.core.errors import RankingError
from ranking_lib.data.holdout import holdout_split


def test_holdout_split_per_class_seeded_and_disjoint():
    labels = np.repeat(np.arange(5), 10)
    kept, held = holdout_split(labels, 3, seed=1)
    assert len(held) == 15 and np.bincount(labels[held]).tolist() == [3] * 5
    assert np.intersect1d(kept, held).size == 0 and len(kept) + len(held) == 50
    again, _ = holdout_split(labels, 3, seed=1)
    other, held2 = holdout_split(labels, 3, seed=2)
    assert np.array_equal(kept, again) and not np.array_equal(held, held2)
    assert holdout_split(labels, 0)[1].size == 0
    labels[:8] = 1  # class 0 keeps 2 images, class 1 has 18
    holdout_split(labels, 0)
    with pytest.raises(RankingError, match="class n0 has 2 training images: holding out 1 would leave fewer than 2"):
        holdout_split(labels, 1, class_ids=[f"n{i}" for i in range(5)])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("holdout")
    return make_demo_dataset(root / "data", num_classes=4, train_per_class=20, val_per_class=5, seed=2), root


def _flags(data, run, *extra):
    return ["--data-dir", str(data), "--run-dir", str(run), "--input-size", "32", "--embedding-dim", "8",
            "--steps", "3", "--batch-size", "4", "--num-triplets", "64", "--val-triplets", "40",
            "--train-eval-queries", "20", "--quiet", *extra]


def test_held_out_images_never_train_and_get_their_own_metrics(demo):
    data, root = demo
    run = root / "tune"
    assert cli.main(["all", *_flags(data, run, "--holdout-per-class", "5", "--no-evaluate-val")]) == 0
    caches = workflow.load_caches(workflow.RunConfig.load(run / "config.json"), progress=False)
    kept, held = holdout_split(caches["train"].labels, 5, 0)
    train_t, tune_t = np.load(run / "triplets_train.npy"), np.load(run / "triplets_tune.npy")
    assert not np.isin(train_t, held).any()  # no held-out image in any training triplet
    assert np.isin(tune_t, held).all()  # tune triplets are made of held-out images only
    m = json.loads((run / "metrics_trained.json").read_text())
    assert set(m) - {"semantic"} == {"model", "config", "train", "tune"}  # val not looked at
    assert "val" not in m.get("semantic", {})
    assert not (run / "embeddings_trained_val.npz").exists()  # not even embedded
    assert m["tune"]["num_queries"] == 20
    # the tune numbers are the held-out images ranked against the kept ones
    from ranking_lib.retrieval.index import EmbeddingIndex
    from ranking_lib.retrieval.metrics import retrieval_metrics

    z = np.load(run / "embeddings_trained_train.npz")
    ref = retrieval_metrics(EmbeddingIndex(z["embeddings"][kept], z["labels"][kept]), z["embeddings"][held],
                            z["labels"][held], ks=(1, 10, 30))
    assert m["tune"]["precision@30"] == pytest.approx(ref["precision@30"])


def test_holdout_is_part_of_the_run_shape(demo, capsys):
    data, root = demo
    run = root / "shape"
    assert cli.main(["all", *_flags(data, run)]) == 0
    capsys.readouterr()
    # sampling other triplets over a trained run is refused unless asked for
    assert cli.main(["sample", *_flags(data, run, "--holdout-per-class", "5")]) == 2
    assert "holdout_per_class=0" in capsys.readouterr().err
    assert cli.main(["sample", *_flags(data, run, "--holdout-per-class", "5", "--replace-triplets")]) == 0
    capsys.readouterr()
    assert cli.main(["train", *_flags(data, run, "--holdout-per-class", "5")]) == 2
    assert "holdout_per_class=0 (now 5)" in capsys.readouterr().err


def test_bf16_only_where_the_cpu_has_it(monkeypatch):
    devices.cpu_has_bf16.cache_clear()
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    assert not devices.uses_bf16("cpu", True, True)  # emulated bf16 is slower: fp32 kept
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    assert devices.uses_bf16("cpu", True, True) and not devices.uses_bf16("cpu", True, False)
    with devices.autocast("cpu", True, True):
        y = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert y.dtype == torch.bfloat16
    with devices.autocast("cpu", True, False):
        assert torch.nn.Linear(4, 4)(torch.ones(2, 4)).dtype == torch.float32


def test_bf16_run_trains_and_keeps_its_stage_features_apart(demo, monkeypatch):
    """A bf16 run (on this CPU if it has bf16, else fp32 by the rule above) ends finite, and
    frozen-stage outputs computed in bf16 get their own cache file."""
    data, root = demo
    for flag in ("--no-bf16-cpu", "--bf16-cpu"):
        run = root / f"bf16{flag}"
        assert cli.main(["all", *_flags(data, run, "--freeze-stages", "7", "--cache-stage-features", flag)]) == 0
        m = json.loads((run / "metrics_trained.json").read_text())
        assert np.isfinite(m["val"]["precision@1"])
    cache_dir = data / ".ranking_cache"
    n_files = len(list(cache_dir.glob("stage_train_*.npy")))
    assert n_files == (2 if devices.cpu_has_bf16() else 1)
