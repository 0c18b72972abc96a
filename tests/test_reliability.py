"""Fault injection: full disks, kill -9 during saves, concurrent writers, hostile checkpoints,
damaged caches, changed settings on resume, and a table of bad inputs.

Each case asserts the one-line message, the exit status, that no temp file is left behind, and
that the last good file is intact. The full-disk cases run on a real small tmpfs when this
process may mount one (root in CI) and on an injected ENOSPC always.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import tiny_flags
import torch

from data_scripts.make_demo_dataset import make_demo_dataset
from ranking_lib import cli, workflow
from ranking_lib.core import fileio
from ranking_lib.training.checkpoint import FORMAT, read_checkpoint, save_checkpoint
from ranking_lib.core.config import RunConfig
from ranking_lib.data import TinyImageNet, load_or_build_cache
from ranking_lib.core.errors import CheckpointError, DiskFullError
from ranking_lib.core.runlock import TOKEN_ENV, RunDirLock

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "tests" / "fault_child.py"


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("rel")
    data = make_demo_dataset(root / "data", num_classes=4, train_per_class=20, val_per_class=5, seed=0)
    cache = root / "cache"
    return {"data": data, "cache": cache, "root": root}


def _flags(demo, run_dir, **over) -> list[str]:
    return tiny_flags(demo["data"], run_dir, demo["cache"], **over)


def _cfg(demo, run_dir, **over) -> RunConfig:
    return cli.config_from_args(cli.build_parser().parse_args(["sample"] + _flags(demo, run_dir, **over)))


def _run_cli(args, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    try:
        rc = cli.main(args)
    except SystemExit as e:  # argparse refused a flag (its one line is printed)
        rc = e.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return rc, err


def _prepared(demo, capsys, tmp_path, steps=("prepare", "sample"), **over) -> tuple[Path, list[str]]:
    """A run dir on the demo data with `steps` done; returns it and its CLI flags."""
    run = tmp_path / "run"
    flags = _flags(demo, run, **over)
    for s in steps:
        assert _run_cli([s] + flags, capsys)[0] == 0, s
    return run, flags


def _temps(*dirs) -> list[Path]:
    return [p for d in dirs if Path(d).is_dir() for p in Path(d).iterdir() if ".tmp" in p.name]


def _child(args, env_extra, marker: Path) -> subprocess.Popen:
    env = dict(os.environ, FAULT_MARKER=str(marker), PYTHONPATH=str(REPO), **env_extra)
    return subprocess.Popen([sys.executable, str(CHILD), *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 120.0) -> str:
    t0 = time.time()
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child ended (rc {proc.returncode}) before the save: {proc.stderr.read()[-2000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("child never reached the save")
        time.sleep(0.05)
    return marker.read_text()


@pytest.fixture
def small_fs(tmp_path):
    """A real tmpfs of a given size (KiB), unmounted afterwards; skip where mounting is not allowed."""
    mounts = []

    def make(kib: int) -> Path:
        d = tmp_path / f"fs{len(mounts)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); "
                        "the injected-ENOSPC tests cover the same code")
        mounts.append(d)
        return d

    yield make
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


# ---------------------------------------------------------------------------- full disk
def test_cache_on_a_full_filesystem_is_one_line_and_leaves_no_temp(demo, small_fs, capsys, tmp_path):
    fs = small_fs(256)  # the train cache needs 80 x 64 x 64 x 3 = 983,040 bytes
    rc, err = _run_cli(["prepare"] + _flags(demo, tmp_path / "run", cache_dir=fs), capsys)
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: no space left on the device to write {fs}/train_64px_images.npy (needs 0.9 MB")
    assert _temps(fs) == [] and list(fs.iterdir()) == []


def test_checkpoint_on_a_full_filesystem_keeps_the_last_good_one(demo, small_fs, capsys):
    fs = small_fs(64 * 1024)
    run = fs / "run"
    flags = _flags(demo, run, optimizer="sgd", steps=2)
    assert _run_cli(["prepare"] + flags, capsys)[0] == 0
    assert _run_cli(["sample"] + flags, capsys)[0] == 0
    assert _run_cli(["train"] + flags, capsys)[0] == 0
    ckpt = run / "checkpoints" / "last.pt"
    good = ckpt.read_bytes()
    free = fileio.free_bytes(fs)
    filler = fs / "filler"
    with open(filler, "wb") as f:  # leave less than a checkpoint
        f.write(b"\0" * (free - len(good) // 2))
    rc, err = _run_cli(["train"] + _flags(demo, run, optimizer="sgd", steps=4), capsys)
    assert rc == 1 and len(err) == 1, err
    assert f"no space left on the device to write {ckpt} (needs " in err[0] and "MB free" in err[0]
    assert ckpt.read_bytes() == good and read_checkpoint(ckpt)["step"] == 2
    assert _temps(run, run / "checkpoints") == []
    filler.unlink()
    assert _run_cli(["train"] + _flags(demo, run, optimizer="sgd", steps=4), capsys)[0] == 0
    assert read_checkpoint(ckpt)["step"] == 4


@pytest.mark.parametrize("step", ["prepare", "sample", "train", "embed", "evaluate"])
def test_injected_enospc_at_each_write(demo, step, capsys, tmp_path, monkeypatch):
    """Every kind of save reserves its bytes first: ENOSPC there is one line (exit 1, an OS error),
    nothing half-written."""
    run = tmp_path / "run"
    cache = tmp_path / "cache"  # its own cache dir, so `prepare` really builds
    flags = _flags(demo, run, cache_dir=cache)
    order = ["prepare", "sample", "train", "embed", "evaluate"]
    for s in order[:order.index(step)]:
        assert _run_cli([s] + flags, capsys)[0] == 0, s
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    monkeypatch.setattr(fileio.os, "posix_fallocate", _enospc)
    if step == "embed":  # np.savez does not reserve: the write itself fails
        monkeypatch.setattr(np, "savez", lambda *a, **k: _enospc())
    rc, err = _run_cli([step] + flags, capsys)
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: no space left on the device to write "), err
    assert _temps(run, run / "checkpoints", cache) == []
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    for p, data in before.items():  # what was there is intact (train's fresh log aside)
        if p.name != "loss_log.csv":
            assert after.get(p) == data, p


# ---------------------------------------------------------------------------- kill -9
KILL_CASES = {
    "cache, mid-decode": ({"FAULT_STALL_DECODE": "30"}, "prepare", "train_64px_images.npy"),
    "cache, before rename": ({"FAULT_STALL_REPLACE": r"^train_64px_images\.npy$"}, "prepare", "train_64px_images.npy"),
    "stage features": ({"FAULT_STALL_REPLACE": r"^stage_train_"}, "train", None),
    "triplets": ({"FAULT_STALL_REPLACE": r"^triplets_train\.npy$"}, "sample", "triplets_train.npy"),
    "checkpoint": ({"FAULT_STALL_REPLACE": r"^last\.pt$"}, "train", "last.pt"),
}


@pytest.mark.parametrize("case", list(KILL_CASES))
def test_kill_during_a_save_leaves_the_last_good_file_and_the_next_run_sweeps(demo, case, capsys, tmp_path):
    env, step, target = KILL_CASES[case]
    run, cache = tmp_path / "run", tmp_path / "cache"
    over = dict(cache_dir=cache)
    if case == "stage features":
        over.update(freeze_stages=7, cache_stage_features=True)
    flags = _flags(demo, run, **over)
    order = ["prepare", "sample", "train"]
    for s in order[:order.index(step)]:
        assert _run_cli([s] + flags, capsys)[0] == 0
    if case == "checkpoint":  # a good checkpoint at step 4, then a longer run killed while saving
        assert _run_cli(["train"] + flags, capsys)[0] == 0
        good = (run / "checkpoints" / "last.pt").read_bytes()
        flags = _flags(demo, run, **over, steps=6)
    marker = tmp_path / "marker"
    proc = _child([step] + flags, env, marker)
    where = _wait_for(marker, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    dirs = (run, run / "checkpoints", cache)
    left = _temps(*dirs)
    assert left, "the killed writer should have left its temp file (else this test tests nothing)"
    assert where == "decode" or Path(where) in left
    if case == "checkpoint":
        assert (run / "checkpoints" / "last.pt").read_bytes() == good  # the last good file, whole
        assert read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4
    elif target:
        assert not any(p.name == target for d in dirs if d.is_dir() for p in d.iterdir())
    rc, err = _run_cli([step] + flags, capsys)  # the next run completes and removes the leftovers
    assert rc == 0, err
    assert _temps(*dirs) == []
    if case == "checkpoint":
        assert read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 6


def test_legacy_unowned_temp_files_are_swept_when_old(tmp_path):
    old = tmp_path / ".train_64px_images.npy.ab12cd34.tmp.npy"
    new = tmp_path / ".val_64px_images.npy.zz12cd34.tmp.npy"
    for p in (old, new):
        p.write_bytes(b"x")
    os.utime(old, (time.time() - 2 * fileio.LEGACY_TEMP_AGE_S,) * 2)
    other = tmp_path / ".notes.tmp"  # not ours: left alone
    other.write_text("x")
    assert fileio.sweep_stale_temps(tmp_path) == [old]
    assert new.exists() and other.exists()


# ---------------------------------------------------------------------------- concurrent writers
def test_second_writer_on_a_run_dir_is_refused_naming_the_holder(demo, capsys, tmp_path):
    run, flags = _prepared(demo, capsys, tmp_path)
    marker = tmp_path / "marker"
    proc = _child(["train"] + flags, {"FAULT_STALL_REPLACE": r"^last\.pt$"}, marker)
    try:
        _wait_for(marker, proc)  # the first trainer is inside its run, holding the lock
        rows = (run / "loss_log.csv").read_text()
        for step in ("train", "sample", "embed", "evaluate"):
            rc, err = _run_cli([step] + flags, capsys)
            assert rc == 2 and len(err) == 1, err
            assert f"run directory {run} is in use by pid {proc.pid}" in err[0] and "train" in err[0]
        assert (run / "loss_log.csv").read_text() == rows  # the second writer wrote nothing
    finally:
        proc.kill()
        proc.wait()
    assert _run_cli(["train"] + flags, capsys)[0] == 0  # the kernel dropped the dead holder's lock
    log = workflow.load_loss_log(_cfg(demo, run))
    assert list(log["step"]) == list(range(4))


def test_child_with_the_holders_token_writes_under_its_lock(tmp_path):
    code = ("import sys; from ranking_lib.core.runlock import RunDirLock\n"
            "try:\n    RunDirLock(sys.argv[1], 'child').__enter__(); print('ok')\n"
            "except Exception as e:\n    print(type(e).__name__)\n")
    run = tmp_path / "run"
    with RunDirLock(run, "runner") as lock:
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        plain = subprocess.run([sys.executable, "-c", code, str(run)], env=env, capture_output=True, text=True)
        kernel = subprocess.run([sys.executable, "-c", code, str(run)], env={**env, TOKEN_ENV: lock.token},
                                capture_output=True, text=True)
        forged = subprocess.run([sys.executable, "-c", code, str(run)], env={**env, TOKEN_ENV: "0" * 16},
                                capture_output=True, text=True)
    assert plain.stdout.strip() == "RunDirBusyError"
    assert kernel.stdout.strip() == "ok"
    assert forged.stdout.strip() == "RunDirBusyError"
    with RunDirLock(run, "after"):  # released
        pass


def test_lock_is_reentrant_in_one_process(tmp_path):
    code = f"from ranking_lib.core.runlock import RunDirLock; RunDirLock({str(tmp_path / 'r')!r}).__enter__()"
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    with RunDirLock(tmp_path / "r", "a"):
        with RunDirLock(tmp_path / "r", "b"):
            pass
        # still held after the inner block ends
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert "RunDirBusyError" in r.stderr and "('a', since" in r.stderr
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr


def test_no_resume_really_starts_fresh(demo, capsys, tmp_path):
    run, flags = _prepared(demo, capsys, tmp_path, ("prepare", "sample", "train", "embed", "evaluate"))
    rc, err = _run_cli(["train", "--no-resume"] + _flags(demo, run, steps=2, lr=0.02), capsys)
    assert rc == 0, err
    cfg = _cfg(demo, run, steps=2, lr=0.02)
    assert list(workflow.load_loss_log(cfg)["step"]) == [0, 1]
    assert read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    assert json.loads((run / "train_summary.json").read_text())["steps_history"] == [[0, 2]]
    # the old run's embeddings and metrics are gone, not passed off as the new run's
    assert not (run / "embeddings_trained_val.npz").exists() and not (run / "metrics_trained.json").exists()


# ---------------------------------------------------------------------------- resume checks
def test_resume_refuses_changed_settings_and_records_extensions(demo, capsys, tmp_path):
    run, flags = _prepared(demo, capsys, tmp_path, ("prepare", "sample", "train"))
    ckpt = run / "checkpoints" / "last.pt"
    good = ckpt.read_bytes()
    config_before = (run / "config.json").read_text()
    for change, shown in [({"lr": 0.02}, "lr=0.01 (now 0.02)"), ({"batch_size": 8}, "batch_size=4 (now 8)"),
                          ({"optimizer": "adamw"}, "optimizer='sgd' (now 'adamw')"),
                          ({"freeze_stages": 3}, "freeze_stages=0 (now 3)"),
                          ({"steps": 3}, "is at step 4, past steps=3")]:
        rc, err = _run_cli(["train"] + _flags(demo, run, **change), capsys)
        assert rc == 2 and len(err) == 1, (change, err)
        assert shown in err[0] and "--no-resume" in err[0], err[0]
    assert ckpt.read_bytes() == good and (run / "config.json").read_text() == config_before
    # triplets re-sampled behind the checkpoint's back (same settings, other content)
    trip = np.load(run / "triplets_train.npy")
    from ranking_lib.triplets.samplers import save_triplets
    save_triplets(run / "triplets_train.npy", trip[::-1].copy(), {"split": "train"})
    rc, err = _run_cli(["train"] + _flags(demo, run, steps=6), capsys)
    assert rc == 2 and "was trained on other triplets" in err[0]
    save_triplets(run / "triplets_train.npy", trip, {"split": "train"})
    # more steps: allowed, and recorded honestly
    assert _run_cli(["train"] + _flags(demo, run, steps=6), capsys)[0] == 0
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps_history"] == [[0, 4], [4, 6]] and summary["resumed_from"] == 4
    assert summary["steps_run"] == 2
    # already there: nothing to run; the summary of the run that trained stays, and the result
    # reports the last logged loss, not NaN
    result = workflow.train(_cfg(demo, run, steps=6), progress=False)
    assert result.steps_run == 0 and result.steps == 6 and result.final_loss == pytest.approx(
        float(workflow.load_loss_log(_cfg(demo, run))["loss"].iloc[-1]))
    assert json.loads((run / "train_summary.json").read_text()) == summary


# ---------------------------------------------------------------------------- hostile files
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_checkpoint_runs_no_code(demo, capsys, tmp_path):
    run, flags = _prepared(demo, capsys, tmp_path)
    marker = tmp_path / "pwned"
    ckpt = run / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"format": FORMAT, "step": 1, "model": {}, "payload": _Evil(marker)}, ckpt)
    for step in ("train", "embed"):
        rc, err = _run_cli([step] + flags, capsys)
        assert rc == 2 and len(err) == 1, err
        assert err[0].startswith(f"error: refusing to load {ckpt}: it holds objects other than tensors")
    with pytest.raises(CheckpointError, match="could run code"):
        read_checkpoint(ckpt)
    assert not marker.exists()
    # a real checkpoint (model + optimizer state + config) still loads under weights_only
    save_checkpoint(tmp_path / "ok.pt", {"step": 3, "config": {"ks": [1, 2]}, "model": {"w": torch.ones(2)},
                                         "optimizer": torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1,
                                                                      momentum=0.9).state_dict()})
    assert read_checkpoint(tmp_path / "ok.pt")["step"] == 3


# ---------------------------------------------------------------------------- damaged caches
def test_damaged_image_cache_is_rebuilt_and_named(demo, tmp_path, caplog):
    ds = TinyImageNet(demo["data"])
    cache = load_or_build_cache(ds, "train", tmp_path, progress=False)
    good = np.array(cache.images)
    path = cache.cache_file
    del cache
    with open(path, "r+b") as f:  # overwrite pixels in the middle; shape and header stay valid
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xff" * 500)
    with caplog.at_level("WARNING"):
        again = load_or_build_cache(ds, "train", tmp_path, progress=False)
    assert any(str(path) in r.getMessage() and "damaged or was modified" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.asarray(again.images), good)


def test_nan_in_stage_features_is_caught_and_rebuilt(demo, capsys, tmp_path, caplog):
    run = tmp_path / "run"
    flags = _flags(demo, run, freeze_stages=7, cache_stage_features=True, cache_dir=tmp_path / "cache")
    for s in ("prepare", "sample", "train"):
        assert _run_cli([s] + flags, capsys)[0] == 0
    stage = sorted((tmp_path / "cache").glob("stage_train_*.npy"))
    assert len(stage) == 1
    good = np.array(np.load(stage[0]))
    arr = np.load(stage[0], mmap_mode="r+")
    arr[3] = np.nan
    arr.flush()
    del arr
    with caplog.at_level("WARNING"):
        rc, err = _run_cli(["train", "--no-resume"] + flags, capsys)
    assert rc == 0, err
    assert any(stage[0].name in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.load(stage[0]), good)


# ---------------------------------------------------------------------------- bad input
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
def test_bad_flag_is_one_line_exit_2(demo, args, msg, capsys, tmp_path):
    rc, err = _run_cli(["sample"] + _flags(demo, tmp_path / "run") + args, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and msg in err[0], err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_bad_files_are_one_line_exit_2(demo, capsys, tmp_path):
    cases = {
        "corrupt.json": ("{not json", "is not valid JSON"),
        "list.json": ("[1, 2]", "must hold a JSON object of settings, not list"),
        "wrongtype.json": ('{"lr": "fast"}', "lr expects float"),
        "ks.json": ('{"ks": {"a": 1}}', "ks expects"),
        "unknown.json": ('{"learning_rate": 1}', "unknown config field(s): learning_rate"),
    }
    for name, (text, msg) in cases.items():
        (tmp_path / name).write_text(text)
        rc, err = _run_cli(["sample", "--config", str(tmp_path / name)], capsys)
        assert rc == 2 and len(err) == 1 and msg in err[0] and name in err[0], (name, err)
    (tmp_path / "choice.json").write_text('{"backbone": "vgg"}')  # a choice is checked by its registry
    rc, err = _run_cli(["sample", "--config", str(tmp_path / "choice.json")], capsys)
    assert rc == 2 and len(err) == 1 and "backbone must be one of efficientnet_lite0" in err[0] and "'vgg'" in err[0], err
    (tmp_path / "bad.yaml").write_text("lr: [0.1\nsteps: 3\n")
    rc, err = _run_cli(["sample", "--profile", str(tmp_path / "bad.yaml")], capsys)
    assert rc == 2 and len(err) == 1 and "is not valid YAML" in err[0] and "line 2" in err[0], err
    (tmp_path / "afile").write_text("x")
    rc, err = _run_cli(["sample"] + _flags(demo, tmp_path / "afile"), capsys)
    assert rc == 2 and err == [f"error: run directory {tmp_path / 'afile'} exists and is not a directory"], err
    rc, err = _run_cli(["sample"] + _flags(demo, tmp_path / "afile" / "run"), capsys)
    assert rc == 2 and len(err) == 1 and "a parent of it is a file" in err[0], err
    rc, err = _run_cli(["prepare"] + _flags(demo, tmp_path / "r2", data_dir=tmp_path / "nope"), capsys)
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


def test_disk_full_error_names_need_and_free(tmp_path):
    e = fileio.disk_full_error(tmp_path / "x.npy", need=3 * 2**20)
    assert isinstance(e, DiskFullError)
    assert str(e).startswith(f"no space left on the device to write {tmp_path / 'x.npy'} (needs 3.0 MB, ")
    assert "MB free" in str(e) and "\n" not in str(e)
    wrapped = RuntimeError("unexpected pos 123")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert fileio.is_disk_full(wrapped) and not fileio.is_disk_full(RuntimeError("x"))
