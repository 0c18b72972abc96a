"""torchrun: two gloo ranks on the CPU train and embed like one process (`ranking_lib.training.distributed`).

Equality is checked with SGD (momentum, Nesterov): its update is linear in the gradient, so the
only difference between two ranks and one process is the order of floating-point additions
in the gradient sum; tolerance 1e-5 on every weight. (Adam's update divides by the root of the
second moment, which turns rounding noise in near-zero gradients into full-size steps.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_CLASSES

from ranking_lib.training.checkpoint import read_checkpoint
from ranking_lib.training.distributed import DistContext

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _flags(sample_dir, cache_dir, run_dir, **kw):
    base = dict(data_dir=sample_dir, max_classes=SMALL_CLASSES, cache_dir=cache_dir, run_dir=run_dir, input_size=64, embedding_dim=16,
                batch_size=8, steps=4, lr=0.05, optimizer="sgd", num_triplets=200, val_triplets=200, gap=0.2,
                freeze_stages=7, miner="batch_hard", train_eval_queries=100, checkpoint_every=2, seed=0,
                device="cpu", backbone_lr_scale=1.0)
    base.update(kw)
    out = ["--cache-stage-features"]
    for k, v in base.items():
        out += ["--" + k.replace("_", "-"), str(v)]
    return out


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO), RANKING_PROGRESS="off")
    env.pop("RANKING_RUN_LOCK_TOKEN", None)
    return env


def _one(cmd, flags):
    r = subprocess.run([sys.executable, "-m", "ranking_lib", cmd, "--quiet", *flags], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def _torchrun(cmd, flags, nproc=2):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                        "-m", "ranking_lib", cmd, "--quiet", *flags], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    return r


def _weights(run_dir):
    return read_checkpoint(Path(run_dir) / "checkpoints" / "last.pt")["model"]


def _assert_same_weights(a, b, atol=1e-5):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    assert worst <= atol, worst


def test_shard_covers_every_item_once():
    for n in (0, 1, 7, 8, 13):
        for w in (1, 2, 3):
            parts = [DistContext(r, w).shard(n) for r in range(w)]
            assert [i for s in parts for i in range(n)[s]] == list(range(n))


@pytest.fixture(scope="module")
def prepared(sample_dir, small_cache_dir, tmp_path_factory):
    """Decoded cache and frozen-stage features built once, and triplets sampled once."""
    root = tmp_path_factory.mktemp("dist")
    flags = _flags(str(sample_dir), str(small_cache_dir), str(root / "template"))
    _one("prepare", flags)
    _one("sample", flags)
    _one("embed", flags + ["--model", "baseline"])  # builds the stage features once (rank 0 would too)
    return root


def _run_dir(prepared, name):
    """A run dir holding the shared template's triplets and config (the same triplets everywhere)."""
    import shutil

    d = prepared / name
    d.mkdir()
    for f in ("triplets_train.npy", "triplets_train.json", "triplets_val.npy", "triplets_val.json", "config.json"):
        shutil.copy(prepared / "template" / f, d / f)
    return d


def test_two_ranks_train_like_one_process_and_resume_across_world_sizes(sample_dir, small_cache_dir, prepared):
    f = lambda d, **kw: _flags(str(sample_dir), str(small_cache_dir), str(d), **kw)  # noqa: E731
    import shutil

    one, two = (_run_dir(prepared, n) for n in ("one", "two"))
    _one("train", f(one, steps=2))
    _torchrun("train", f(two, steps=2))
    mixed = shutil.copytree(two, prepared / "mixed")  # two ranks for the first 2 steps, then one process
    _one("train", f(one, steps=4))  # each resumes at step 2 (the run is extended, recorded)
    _torchrun("train", f(two, steps=4))
    _one("train", f(mixed, steps=4))
    _assert_same_weights(one, two)
    _assert_same_weights(one, mixed)
    assert read_checkpoint(two / "checkpoints" / "last.pt")["steps_history"] == [[0, 2], [2, 4]]
    # the global batch must split evenly
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        "-m", "ranking_lib", "train", "--quiet", *f(_run_dir(prepared, "odd"), batch_size=7)],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "multiple of the 2 ranks" in r.stderr


def test_killed_two_rank_run_resumes_to_the_uninterrupted_weights(sample_dir, small_cache_dir, prepared):
    """Against an uninterrupted two-rank run: resuming must not change a single weight. (Over
    many steps two ranks and one process drift apart by rounding, amplified by the training;
    their equality is the 4-step test above.)"""
    f = lambda d: _flags(str(sample_dir), str(small_cache_dir), str(d), steps=40, checkpoint_every=3)  # noqa: E731
    ref, cut = _run_dir(prepared, "ref"), _run_dir(prepared, "cut")
    _torchrun("train", f(ref))
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             "-m", "ranking_lib", "train", "--quiet", *f(cut)], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = cut / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not ckpt.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
    proc.wait()
    step = int(read_checkpoint(ckpt)["step"])
    assert step < 40, "the run finished before it could be killed; raise steps"
    _torchrun("train", f(cut))
    assert int(read_checkpoint(ckpt)["step"]) == 40
    _assert_same_weights(ref, cut, atol=0.0)


def test_two_rank_embed_writes_the_same_embeddings(sample_dir, small_cache_dir, prepared):
    f = lambda d: _flags(str(sample_dir), str(small_cache_dir), str(d))  # noqa: E731
    import shutil

    a = _run_dir(prepared, "embed-one")
    _one("train", f(a))
    b = shutil.copytree(a, prepared / "embed-two")  # the same trained network for both
    _one("embed", f(a))
    _torchrun("embed", f(b))
    for split in ("train", "val"):
        za = np.load(a / f"embeddings_trained_{split}.npz")
        zb = np.load(b / f"embeddings_trained_{split}.npz")
        assert za["embeddings"].shape == zb["embeddings"].shape
        np.testing.assert_allclose(za["embeddings"], zb["embeddings"], atol=1e-5)
        assert np.array_equal(za["labels"], zb["labels"]) and np.array_equal(za["paths"], zb["paths"])


def test_other_commands_refuse_torchrun(sample_dir, small_cache_dir, prepared):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        "-m", "ranking_lib", "evaluate", "--quiet",
                        *_flags(str(sample_dir), str(small_cache_dir), str(prepared / "template"))],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "only train and embed run on several processes" in r.stderr
    assert torch.distributed.is_available()
