"""The command line: the whole prepare -> query chain on the real sample, and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import SMALL_CLASSES
from ranking_lib.cli import main

FAST = ["--input-size", "64", "--embedding-dim", "16", "--num-triplets", "64", "--val-triplets", "200",
        "--steps", "3", "--batch-size", "8", "--train-eval-queries", "100", "--embed-batch-size", "500",
        "--near-dup-queries", "20", "--quiet"]


@pytest.fixture(scope="module")
def cli_run(sample_dir, small_cache_dir, tmp_path_factory):
    """`all` on the sample's first `SMALL_CLASSES` classes (50 val images each)."""
    run = tmp_path_factory.mktemp("cli_run")
    args = ["--data-dir", str(sample_dir), "--max-classes", str(SMALL_CLASSES), "--cache-dir", str(small_cache_dir),
            "--run-dir", str(run), *FAST]
    assert main(["all", *args]) == 0
    return run, args


def test_all_writes_every_artifact(cli_run):
    run, _ = cli_run
    for name in ("config.json", "triplets_train.npy", "triplets_val.npy", "checkpoints/last.pt", "loss_log.csv",
                 "train_summary.json", "embeddings_trained_train.npz", "embeddings_baseline_val.npz",
                 "metrics_trained.json", "metrics_baseline.json"):
        assert (run / name).is_file(), name
    m = json.loads((run / "metrics_trained.json").read_text())
    assert m["val"]["num_queries"] == 50 * SMALL_CLASSES and m["train"]["num_queries"] == 100
    # the written val numbers equal a brute-force recomputation from the saved embeddings
    db, val = np.load(run / "embeddings_trained_train.npz"), np.load(run / "embeddings_trained_val.npz")
    d = ((val["embeddings"][:, None, :].astype(np.float64) - db["embeddings"][None].astype(np.float64)) ** 2).sum(-1)
    same = db["labels"][np.argsort(d, axis=1, kind="stable")[:, :30]] == val["labels"][:, None]
    for k in (1, 10, 30):
        assert m["val"][f"precision@{k}"] == pytest.approx(100 * same[:, :k].mean(), abs=1e-6), k
    assert m["val"]["any_hit@30"] == pytest.approx(100 * same.any(axis=1).mean(), abs=1e-6)
    # R-precision: same-class share of the R nearest, R = the query's class size in the database
    r = np.bincount(db["labels"])[val["labels"]]
    full = db["labels"][np.argsort(d, axis=1, kind="stable")] == val["labels"][:, None]
    assert m["val"]["r_precision"] == pytest.approx(100 * np.mean([f[:n].mean() for f, n in zip(full, r)]), abs=1e-6)
    assert "knn1" not in m["val"]  # the nearest neighbour's class is precision@1
    t = np.load(run / "triplets_val.npy")
    z = val["embeddings"].astype(np.float64)
    dp, dn = np.linalg.norm(z[t[:, 0]] - z[t[:, 1]], axis=1), np.linalg.norm(z[t[:, 0]] - z[t[:, 2]], axis=1)
    assert m["val"]["triplet_acc"] == pytest.approx(100 * (dp < dn).mean(), abs=1e-6)
    # the paper's score at top-30 over the val triplets, from the same embeddings
    from ranking_lib.retrieval.metrics import score_at_top_k

    s = score_at_top_k(val["embeddings"], t, 30)
    assert m["val"]["score_at_top_30"] == s["score"] and m["val"]["score_at_top_30_counted"] == s["counted"] > 0


def test_query_by_val_index_and_by_image_file(cli_run, sample_dir, capsys):
    run, args = cli_run
    assert main(["query", *args, "--val-index", "0", "5", "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("top-3:") == 2 and out.count("bottom-3:") == 2
    image = next((sample_dir / "val" / "images").iterdir())
    assert main(["query", *args, "--image", str(image), "--k", "2"]) == 0
    assert "top-2:" in capsys.readouterr().out


def test_embeddings_are_deterministic(cli_run, tmp_path):
    import numpy as np

    run, args = cli_run
    before = np.load(run / "embeddings_trained_val.npz")["embeddings"]
    assert main(["embed", *args, "--model", "trained"]) == 0
    np.testing.assert_array_equal(np.load(run / "embeddings_trained_val.npz")["embeddings"], before)


@pytest.mark.parametrize("extra,msg", [
    (["query", "--val-index", "0", "--k", "5000"], "k=5000"),
    (["query", "--val-index", "0", "--k", "0"], "k=0"),
    (["query", "--val-index", "99999"], "out of range"),
    (["query"], "exactly one of"),
    (["train", "--gap", "0"], "gap must be > 0"),
    (["train", "--gap", "-1"], "gap must be > 0"),
    (["embed", "--embedding-dim", "32"], "different network"),
    (["evaluate", "--search-backend", "faiss-ivfpq", "--index-pq-m", "3"], "pq_m=3 must divide the embedding size 16"),
])
def test_bad_input_gives_one_line_error(cli_run, capsys, extra, msg):
    run, args = cli_run
    cmd, rest = extra[0], extra[1:]
    assert main([cmd, *args, *rest]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1, err


def test_search_fields_reach_the_index(cli_run, tmp_path):
    """`--search-backend faiss-ivfpq` with every list probed and every vector re-ranked is exact, so
    evaluate writes the exact backend's metrics; with 6 of the 8 lists probed and no re-ranking it differs."""
    import shutil

    run, args = cli_run
    copy = shutil.copytree(run, tmp_path / "run")
    args = [str(copy) if a == str(run) else a for a in args]
    exact = json.loads((run / "metrics_trained.json").read_text())["val"]
    ivfpq = ["evaluate", *args, "--search-backend", "faiss-ivfpq", "--index-nlist", "8", "--index-pq-m", "4"]
    assert main([*ivfpq, "--index-nprobe", "8", "--index-refine", "1000"]) == 0
    full = json.loads((copy / "metrics_trained.json").read_text())["val"]
    assert {k: full[k] for k in ("precision@1", "precision@30", "map@r")} == \
        {k: exact[k] for k in ("precision@1", "precision@30", "map@r")}
    assert main([*ivfpq, "--index-nprobe", "6", "--index-refine", "1"]) == 0
    assert json.loads((copy / "metrics_trained.json").read_text())["val"]["map@r"] != exact["map@r"]


def test_missing_dataset_dir_exit_code_and_message(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ranking_lib", "prepare", "--data-dir", str(tmp_path / "nope"),
                           "--run-dir", str(tmp_path / "run")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: dataset directory not found")
    assert len(proc.stderr.strip().splitlines()) == 1
