"""The files of a run directory and the checks made when one is opened (`ranking_lib.run_files`):
what embeddings record they were computed from and by which network, tampered embeddings, triplet
sidecars without their hash, embeddings of another network or run, and triplets sampled with
other settings.

Each case asserts the one-line message, the exit status and that nothing was written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from faults import demo_data, embedded, trained  # noqa: F401 (fixtures, requested by name)
from faults import copy_run, own_copy, run_cli_out, tamper, train_on

from ranking_lib.data import TinyImageNet
from ranking_lib.retrieval.index import EmbeddingIndex


def test_embeddings_record_what_they_were_computed_from(embedded):
    run, _ = embedded
    idx = EmbeddingIndex.load(run / "embeddings_baseline_val.npz")
    assert idx.meta["split"] == "val" and idx.meta["num_images"] == len(idx) == 20
    assert idx.meta["wnids"] == TinyImageNet(Path(json.loads((run / "config.json").read_text())["data_dir"])).wnids
    assert isinstance(idx.meta["image_cache_crc32"], int) and idx.paths[0].startswith("val/images/")


TAMPER = {
    "labels 999": (dict(labels=lambda a: np.where(np.arange(len(a)) == 3, 999, a)), "label(s) differ"),
    "labels -5": (dict(labels=lambda a: np.full_like(a, -5)), "label(s) differ"),
    "labels shuffled": (dict(labels=lambda a: np.roll(a, 5)), "label(s) differ"),
    "cut to 10 rows": (dict(embeddings=lambda a: a[:10], labels=lambda a: a[:10], paths=lambda a: a[:10]),
                       "has 10 rows but the val split"),
    "paths swapped": (dict(paths=lambda a: a[::-1]), "row 0 is image"),
    "other class list": (dict(meta=lambda m: np.array(json.dumps({**json.loads(str(m)), "wnids": ["a", "b"]}))),
                         "another class list"),
    "other image cache": (dict(meta=lambda m: np.array(json.dumps({**json.loads(str(m)), "image_cache_crc32": 7}))),
                          "computed from other images"),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_tampered_embeddings_are_refused_naming_the_file(embedded, case, tmp_path, capsys):
    run, flags = copy_run(embedded, tmp_path)
    change, msg = TAMPER[case]
    path = run / "embeddings_baseline_val.npz"
    tamper(path, path, **change)
    for cmd in (["evaluate", "--model", "baseline"], ["query", "--model", "baseline", "--val-index", "0"]):
        rc, err, _ = run_cli_out(cmd + flags, capsys)
        assert rc == 2 and len(err) == 1, (cmd, err)
        assert err[0].startswith(f"error: embedding file {path}") and msg in err[0] and "re-run 'embed'" in err[0], err
        assert "triplet" not in err[0]
    assert not (run / "metrics_baseline.json").exists()


def test_triplet_sidecar_without_its_hash_is_refused(embedded, tmp_path, capsys):
    run, flags = copy_run(embedded, tmp_path)
    side = run / "triplets_val.json"
    meta = json.loads(side.read_text())
    del meta["sha256"]
    side.write_text(json.dumps(meta))
    t = np.load(run / "triplets_val.npy")
    t[:, 1] = t[:, 0]  # edited: each positive is its query
    np.save(run / "triplets_val.npy", t)
    rc, err, _ = run_cli_out(["evaluate", "--model", "baseline"] + flags, capsys)
    assert rc == 2 and len(err) == 1 and "triplets_val.npy" in err[0] and "has no sha256" in err[0], err
    assert not (run / "metrics_baseline.json").exists()


def test_embeddings_name_the_network_that_computed_them(trained):
    run, _ = trained
    t, b = (EmbeddingIndex.load(run / f"embeddings_{m}_val.npz").meta["network"] for m in ("trained", "baseline"))
    assert t["model"] == "trained" and t["checkpoint_step"] == 4 and len(t["weights_sha256"]) == 64
    assert b == {"model": "baseline", "backbone": "efficientnet_lite0", "pretrained": True, "input_size": 32}


def _refused(cmds, flags, path: Path, capsys, *words) -> None:
    for cmd in cmds:
        rc, err, _ = run_cli_out(cmd + flags, capsys)
        assert rc == 2 and len(err) == 1, (cmd, err)
        assert err[0].startswith(f"error: embedding file {path} was computed by "), err
        assert all(w in err[0] for w in words) and "re-run 'embed --model trained'" in err[0], err


READERS = [["evaluate"], ["query", "--val-index", "0"]]


def test_val_embeddings_of_another_network_are_refused_and_the_metrics_kept(trained, tmp_path, capsys):
    run, flags = own_copy(trained, tmp_path)
    other, other_flags = own_copy(trained, tmp_path, "other")
    for step in (["train"], ["embed"]):  # the other run trained on to step 6
        assert run_cli_out(step + train_on(other_flags, 6), capsys)[0] == 0
    shutil.copy(other / "embeddings_trained_val.npz", run / "embeddings_trained_val.npz")
    before = (run / "metrics_trained.json").read_bytes()
    _refused(READERS, flags, run / "embeddings_trained_val.npz", capsys,
             "checkpoint step 6", "this run's trained network, the trained network of checkpoint step 4")
    assert (run / "metrics_trained.json").read_bytes() == before


def test_baseline_embeddings_renamed_to_trained_are_refused(trained, tmp_path, capsys):
    run, flags = own_copy(trained, tmp_path)
    for split in ("train", "val"):
        shutil.copy(run / f"embeddings_baseline_{split}.npz", run / f"embeddings_trained_{split}.npz")
    _refused(READERS, flags, run / "embeddings_trained_train.npz", capsys,
             "the frozen pretrained baseline (efficientnet_lite0, 32 px)", "checkpoint step 4")


def test_embed_stopped_after_the_train_file_leaves_a_pair_that_is_refused(trained, tmp_path, capsys):
    """As a SIGTERM between the two files of 'embed' leaves them: train from the new network, val
    from the old (here the train file alone is rewritten, as by --no-evaluate-val)."""
    run, flags = own_copy(trained, tmp_path)
    assert run_cli_out(["train"] + train_on(flags, 6), capsys)[0] == 0
    assert run_cli_out(["embed", "--no-evaluate-val"] + train_on(flags, 6), capsys)[0] == 0
    _refused(READERS, train_on(flags, 6), run / "embeddings_trained_val.npz", capsys,
             "checkpoint step 4", "this run's trained network, the trained network of checkpoint step 6")
    assert run_cli_out(["embed"] + train_on(flags, 6), capsys)[0] == 0  # the fix the message names
    assert run_cli_out(["evaluate"] + train_on(flags, 6), capsys)[0] == 0


def test_embeddings_without_a_network_record_are_refused(trained, tmp_path, capsys):
    run, flags = own_copy(trained, tmp_path)
    path = run / "embeddings_trained_val.npz"
    meta = {k: v for k, v in EmbeddingIndex.load(path).meta.items() if k != "network"}
    tamper(path, path, meta=lambda m: np.array(json.dumps(meta)))
    rc, err, _ = run_cli_out(["evaluate"] + flags, capsys)
    assert rc == 2 and len(err) == 1 and f"embedding file {path} does not record which network" in err[0], err


@pytest.mark.parametrize("flag,value,msg", [("--seed", "5", "sampled with seed=0, but the run's config says seed=5"),
                                             ("--val-triplets", "7", "sampled with num_triplets=20, but the run's "
                                                                     "config says num_triplets=7")])
def test_evaluate_refuses_triplets_sampled_with_other_settings(trained, tmp_path, capsys, flag, value, msg):
    run, flags = own_copy(trained, tmp_path)
    before = (run / "metrics_trained.json").read_bytes()
    rc, err, _ = run_cli_out(["evaluate"] + flags + [flag, value], capsys)
    assert rc == 2 and len(err) == 1 and "error: triplet file " in err[0] and msg in err[0], err
    assert (run / "metrics_trained.json").read_bytes() == before
