"""The command line (`ranking_lib.cli`) and the runner on bad input and faults: a table of bad
flags, bad files and bad choices, read-only run dirs and mounts, a full disk, SIGTERM, huge triplet
counts, a copied run's config, and messages that blamed the wrong thing; the runner validates
before starting a kernel.

Each case asserts the one-line message, the exit status and that nothing was written.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from faults import demo_data, demo_dirs, embedded, trained  # noqa: F401 (fixtures, requested by name)
from faults import REPO, copy_run, data_flags, demo_flags, files_in, own_copy, run_cli, run_cli_out, signalled_training

from ranking_lib import cli


BAD_FLAGS = [
    (["--log-every", "0"], "log_every must be >= 1"),
    (["--embed-batch-size", "0"], "embed_batch_size must be >= 1"),
    (["--momentum", "-0.5"], "momentum must be >= 0"),
    (["--momentum", "1"], "momentum must be < 1"),
    (["--num-threads", "0"], "num_threads must be >= 1"),
    (["--num-threads", "-2"], "num_threads must be >= 1"),
    (["--steps", "0"], "steps must be >= 1 (got 0) (use --model baseline"),
    (["--batch-size", "0"], "batch_size must be >= 1"),
    (["--lr", "0"], "lr must be > 0"),
    (["--lr", "nan"], "lr expects float"),
    (["--gap", "inf"], "gap expects float"),
    (["--gap", "-1"], "gap must be > 0"),
    (["--input-size", "16"], "input_size must be >= 32"),
    (["--input-size", "100000"], "input_size must be <= 1024"),
    (["--seed", "-1"], "seed must be >= 0"),
    (["--weight-decay", "-1"], "weight_decay must be >= 0"),
    (["--warmup-steps", "-1"], "warmup_steps must be >= 0"),
    (["--freeze-stages", "-1"], "freeze_stages must be >= 0"),
    (["--embedding-dim", "0"], "embedding_dim must be >= 1"),
    (["--checkpoint-every", "0"], "checkpoint_every must be >= 1"),
    (["--train-eval-queries", "0"], "train_eval_queries must be >= 1"),
    (["--num-triplets", "0"], "num_triplets must be >= 1"),
    (["--ks", "0"], "ks must be >= 1"),
    (["--max-classes", "1"], "max_classes must be >= 2"),
    (["--backbone", "vgg"], "argument --backbone: invalid choice: 'vgg' (choose from 'efficientnet_lite0'"),
    (["--search-backend", "annoy"], "argument --search-backend: invalid choice: 'annoy'"),
    (["--index-nprobe", "0"], "index_nprobe must be >= 1"),
    (["--index-hnsw-m", "1"], "index_hnsw_m must be >= 2"),
    (["--optimizer", "lbfgs"], "argument --optimizer: invalid choice: 'lbfgs'"),
    (["--device", "tpu"], "device must be"),
    (["--cache-stage-features"], "cache_stage_features needs freeze_stages >= 1"),
    (["--run-dir", ""], "run_dir must not be empty"),
]


@pytest.mark.parametrize("args,msg", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_exit_2(demo_dirs, args, msg, capsys, tmp_path):
    rc, err = run_cli(["sample"] + demo_flags(demo_dirs, tmp_path / "run") + args, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and msg in err[0], err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_bad_files_are_one_line_exit_2(demo_dirs, capsys, tmp_path):
    cases = {
        "corrupt.json": ("{not json", "is not valid JSON"),
        "list.json": ("[1, 2]", "must hold a JSON object of settings, not list"),
        "wrongtype.json": ('{"lr": "fast"}', "lr expects float"),
        "ks.json": ('{"ks": {"a": 1}}', "ks expects"),
        "unknown.json": ('{"learning_rate": 1}', "unknown config field(s): learning_rate"),
    }
    for name, (text, msg) in cases.items():
        (tmp_path / name).write_text(text)
        rc, err = run_cli(["sample", "--config", str(tmp_path / name)], capsys)
        assert rc == 2 and len(err) == 1 and msg in err[0] and name in err[0], (name, err)
    (tmp_path / "choice.json").write_text('{"backbone": "vgg"}')  # a choice is checked by its registry
    rc, err = run_cli(["sample", "--config", str(tmp_path / "choice.json")], capsys)
    assert rc == 2 and len(err) == 1 and "backbone must be one of efficientnet_lite0" in err[0] and "'vgg'" in err[0], err
    (tmp_path / "bad.yaml").write_text("lr: [0.1\nsteps: 3\n")
    rc, err = run_cli(["sample", "--profile", str(tmp_path / "bad.yaml")], capsys)
    assert rc == 2 and len(err) == 1 and "is not valid YAML" in err[0] and "line 2" in err[0], err
    (tmp_path / "afile").write_text("x")
    rc, err = run_cli(["sample"] + demo_flags(demo_dirs, tmp_path / "afile"), capsys)
    assert rc == 2 and err == [f"error: run directory {tmp_path / 'afile'} exists and is not a directory"], err
    rc, err = run_cli(["sample"] + demo_flags(demo_dirs, tmp_path / "afile" / "run"), capsys)
    assert rc == 2 and len(err) == 1 and "a parent of it is a file" in err[0], err
    rc, err = run_cli(["prepare"] + demo_flags(demo_dirs, tmp_path / "r2", data_dir=tmp_path / "nope"), capsys)
    assert rc == 2 and len(err) == 1 and "dataset directory not found" in err[0], err


def test_runner_validates_before_starting_a_kernel(tmp_path, capsys):
    from report import run_pipeline

    run = tmp_path / "run"
    rc = run_pipeline.main(["--run-dir", str(run), "--set", "log_every=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: log_every must be >= 1 (got 0)"]
    assert not run.exists()  # no notebook ran
    rc = run_pipeline.main(["--run-dir", str(run), "--set", "backbone=vgg"])  # a registry's choice
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: backbone must be one of ") and "'vgg'" in err[0]
    assert not run.exists()
    (tmp_path / "p.yaml").write_text("steps: [\n")
    rc = run_pipeline.main(["--profile", str(tmp_path / "p.yaml"), "--run-dir", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "is not valid YAML" in err[0]


def test_runner_set_null_is_one_line(tmp_path, capsys):
    from report import run_pipeline

    rc = run_pipeline.main(["--run-dir", str(tmp_path / "run"), "--set", "lr=null"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "lr expects float" in err[0] and "got null" in err[0], err
    assert not (tmp_path / "run").exists()


def test_huge_num_triplets_is_refused_before_any_work(demo_data, tmp_path, capsys):
    run, cache = tmp_path / "run", tmp_path / "cache"
    for cmd in ("sample", "all"):
        t0 = time.perf_counter()
        rc, err, _ = run_cli_out([cmd] + data_flags(demo_data, run, cache, num_triplets=10_000_000_000), capsys)
        assert rc == 2 and len(err) == 1, err
        assert "num_triplets=10,000,000,000" in err[0] and "lower --num-triplets" in err[0], err
        assert "228,881.8 MB" in err[0] or "686,645.5 MB" in err[0], err  # 10^10 x 3 x 8 bytes (x3 to sample)
        assert time.perf_counter() - t0 < 30
    assert not cache.exists() and files_in(run) <= {run / ".lock"}  # no cache built, no triplets written


def test_query_image_that_is_not_a_regular_file(embedded, capsys):
    run, flags = embedded
    rc, err, _ = run_cli_out(["query", "--model", "baseline", "--image", "/dev/zero"] + flags, capsys)
    assert rc == 2 and err == ["error: image path /dev/zero is not a regular file (a directory, device or pipe); "
                               "pass an image file"], err


def test_read_only_run_dir_says_what_to_do(embedded, tmp_path, capsys, monkeypatch):
    run, flags = copy_run(embedded, tmp_path)
    from ranking_lib.core import runlock

    real_open = os.open

    def ro_open(path, flags_, *a, **k):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags_, *a, **k)

    monkeypatch.setattr(runlock.os, "open", ro_open)
    before = {p: p.stat().st_mtime_ns for p in files_in(run)}
    rc, err, _ = run_cli_out(["sample"] + flags, capsys)
    assert rc == 1 and len(err) == 1, err
    assert err[0] == (f"error: Read-only file system: {run / '.lock'}; that place cannot be written: pass a "
                      "--run-dir (or --cache-dir) on a writable filesystem, or make it writable")
    assert {p: p.stat().st_mtime_ns for p in files_in(run)} == before


def test_read_only_mount_says_what_to_do(embedded, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); the injected case covers it")
    try:
        _, flags = embedded
        flags = list(flags)
        flags[flags.index("--run-dir") + 1] = str(ro)
        rc, err, _ = run_cli_out(["sample"] + flags, capsys)
        assert rc == 1 and len(err) == 1 and "Read-only file system" in err[0] and "writable" in err[0], err
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


def test_bad_choice_is_one_error_line_not_the_usage(embedded, capsys):
    _, flags = embedded
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", "--model", "bogus"] + flags)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert e.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: argument --model: invalid choice: 'bogus'") and "--help" in err[0]


def test_index_nlist_beyond_the_database_is_one_line(embedded, capsys):
    pytest.importorskip("faiss")
    run, flags = embedded
    capsys.readouterr()
    rc, err, _ = run_cli_out(["evaluate", "--model", "baseline", "--search-backend", "faiss-ivf",
                           "--index-nlist", "100000"] + flags, capsys)
    assert rc == 2 and len(err) == 1, err
    assert "index_nlist=100000 is more IVF lists than a database of 80 vectors can train" in err[0], err
    assert "k=" not in err[0] and "nprobe" not in err[0]


def test_full_disk_exits_1_as_the_readme_says(embedded, tmp_path, capsys, monkeypatch):
    from ranking_lib.core import fileio

    run, flags = copy_run(embedded, tmp_path)
    monkeypatch.setattr(fileio.os, "posix_fallocate",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    rc, err, _ = run_cli_out(["sample"] + flags, capsys)
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: no space left on the device to write "), err
    readme = (REPO / "README.md").read_text()
    assert "1 an OS error, a full disk included" in readme


def test_sigterm_during_a_command_is_one_line(demo_data, tmp_path, capsys):
    run, _, proc, stderr = signalled_training(demo_data, tmp_path, capsys, signal.SIGTERM, rows=5)  # a time limit
    err = [ln for ln in stderr.splitlines() if ln.strip()]
    assert proc.returncode == 143 and len(err) == 1 and "Traceback" not in stderr, stderr
    assert err[0].startswith("error: terminated (SIGTERM): train stopped after step ") and "resumes from step" in err[0]
    assert not [p for p in files_in(run, run / "checkpoints") if ".tmp" in p.name]


def test_sample_with_a_copied_runs_config_says_where_and_keeps_the_trained_runs_triplets(trained, tmp_path, capsys):
    a, _ = own_copy(trained, tmp_path, "A")
    b = Path(shutil.copytree(a, tmp_path / "B", symlinks=True))  # cp -a runs/A runs/B
    before = {p.name: p.read_bytes() for p in a.glob("triplets_*")}
    rc, err, out = run_cli_out(["sample", "--config", b / "config.json", "--seed", "5", "--quiet"], capsys)
    assert rc == 2 and len(err) == 1, err
    assert f"note: --config {b / 'config.json'} sets run_dir {a}, not the folder it is in ({b})" in out
    assert err[0] == (f"error: run directory {a} already holds triplets_train.npy sampled with seed=0 and a "
                      "checkpoint trained on them; sampling with seed=5 would replace them: pass --replace-triplets "
                      "to do so, or --run-dir for a new run")
    assert {p.name: p.read_bytes() for p in a.glob("triplets_*")} == before
    # the same settings sample the same triplets again: allowed; asked, other settings replace them
    assert run_cli_out(["sample", "--config", b / "config.json", "--quiet"], capsys)[0] == 0
    assert {p.name: p.read_bytes() for p in a.glob("triplets_*.npy")} == \
        {k: v for k, v in before.items() if k.endswith(".npy")}
    rc, err, _ = run_cli_out(["sample", "--config", b / "config.json", "--seed", "5", "--replace-triplets", "--quiet"],
                          capsys)
    assert rc == 0, err
    assert json.loads((a / "triplets_train.json").read_text())["seed"] == 5
