"""Fault injection on the file writes (`core.fileio`): full disks, kill -9 during saves and the
temp files a killed writer leaves.

Each case asserts the one-line message, the exit status, that no temp file is left behind, and
that the last good file is intact. The full-disk cases run on a real small tmpfs when this
process may mount one (root in CI) and on an injected ENOSPC always.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from faults import demo_dirs, small_fs  # noqa: F401 (fixtures, requested by name)
from faults import child, demo_flags, enospc, run_cli, temps, wait_for

from ranking_lib.core import fileio
from ranking_lib.core.errors import DiskFullError
from ranking_lib.training.checkpoint import read_checkpoint


def test_cache_on_a_full_filesystem_is_one_line_and_leaves_no_temp(demo_dirs, small_fs, capsys, tmp_path):
    fs = small_fs(256)  # the train cache needs 80 x 64 x 64 x 3 = 983,040 bytes
    rc, err = run_cli(["prepare"] + demo_flags(demo_dirs, tmp_path / "run", cache_dir=fs), capsys)
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: no space left on the device to write {fs}/train_64px_images.npy (needs 0.9 MB")
    assert temps(fs) == [] and list(fs.iterdir()) == []


def test_checkpoint_on_a_full_filesystem_keeps_the_last_good_one(demo_dirs, small_fs, capsys):
    fs = small_fs(64 * 1024)
    run = fs / "run"
    flags = demo_flags(demo_dirs, run, optimizer="sgd", steps=2)
    assert run_cli(["prepare"] + flags, capsys)[0] == 0
    assert run_cli(["sample"] + flags, capsys)[0] == 0
    assert run_cli(["train"] + flags, capsys)[0] == 0
    ckpt = run / "checkpoints" / "last.pt"
    good = ckpt.read_bytes()
    free = fileio.free_bytes(fs)
    filler = fs / "filler"
    with open(filler, "wb") as f:  # leave less than a checkpoint
        f.write(b"\0" * (free - len(good) // 2))
    rc, err = run_cli(["train"] + demo_flags(demo_dirs, run, optimizer="sgd", steps=4), capsys)
    assert rc == 1 and len(err) == 1, err
    assert f"no space left on the device to write {ckpt} (needs " in err[0] and "MB free" in err[0]
    assert ckpt.read_bytes() == good and read_checkpoint(ckpt)["step"] == 2
    assert temps(run, run / "checkpoints") == []
    filler.unlink()
    assert run_cli(["train"] + demo_flags(demo_dirs, run, optimizer="sgd", steps=4), capsys)[0] == 0
    assert read_checkpoint(ckpt)["step"] == 4


@pytest.mark.parametrize("step", ["prepare", "sample", "train", "embed", "evaluate"])
def test_injected_enospc_at_each_write(demo_dirs, step, capsys, tmp_path, monkeypatch):
    """Every kind of save reserves its bytes first: ENOSPC there is one line (exit 1, an OS error),
    nothing half-written."""
    run = tmp_path / "run"
    cache = tmp_path / "cache"  # its own cache dir, so `prepare` really builds
    flags = demo_flags(demo_dirs, run, cache_dir=cache)
    order = ["prepare", "sample", "train", "embed", "evaluate"]
    for s in order[:order.index(step)]:
        assert run_cli([s] + flags, capsys)[0] == 0, s
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    monkeypatch.setattr(fileio.os, "posix_fallocate", enospc)
    if step == "embed":  # np.savez does not reserve: the write itself fails
        monkeypatch.setattr(np, "savez", lambda *a, **k: enospc())
    rc, err = run_cli([step] + flags, capsys)
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: no space left on the device to write "), err
    assert temps(run, run / "checkpoints", cache) == []
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    for p, data in before.items():  # what was there is intact (train's fresh log aside)
        if p.name != "loss_log.csv":
            assert after.get(p) == data, p


KILL_CASES = {
    "cache, mid-decode": ({"FAULT_STALL_DECODE": "30"}, "prepare", "train_64px_images.npy"),
    "cache, before rename": ({"FAULT_STALL_REPLACE": r"^train_64px_images\.npy$"}, "prepare", "train_64px_images.npy"),
    "stage features": ({"FAULT_STALL_REPLACE": r"^stage_train_"}, "train", None),
    "triplets": ({"FAULT_STALL_REPLACE": r"^triplets_train\.npy$"}, "sample", "triplets_train.npy"),
    "checkpoint": ({"FAULT_STALL_REPLACE": r"^last\.pt$"}, "train", "last.pt"),
}


@pytest.mark.parametrize("case", list(KILL_CASES))
def test_kill_during_a_save_leaves_the_last_good_file_and_the_next_run_sweeps(demo_dirs, case, capsys, tmp_path):
    env, step, target = KILL_CASES[case]
    run, cache = tmp_path / "run", tmp_path / "cache"
    over = dict(cache_dir=cache)
    if case == "stage features":
        over.update(freeze_stages=7, cache_stage_features=True)
    flags = demo_flags(demo_dirs, run, **over)
    order = ["prepare", "sample", "train"]
    for s in order[:order.index(step)]:
        assert run_cli([s] + flags, capsys)[0] == 0
    if case == "checkpoint":  # a good checkpoint at step 4, then a longer run killed while saving
        assert run_cli(["train"] + flags, capsys)[0] == 0
        good = (run / "checkpoints" / "last.pt").read_bytes()
        flags = demo_flags(demo_dirs, run, **over, steps=6)
    marker = tmp_path / "marker"
    proc = child([step] + flags, env, marker)
    where = wait_for(marker, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    dirs = (run, run / "checkpoints", cache)
    left = temps(*dirs)
    assert left, "the killed writer should have left its temp file (else this test tests nothing)"
    assert where == "decode" or Path(where) in left
    if case == "checkpoint":
        assert (run / "checkpoints" / "last.pt").read_bytes() == good  # the last good file, whole
        assert read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4
    elif target:
        assert not any(p.name == target for d in dirs if d.is_dir() for p in d.iterdir())
    rc, err = run_cli([step] + flags, capsys)  # the next run completes and removes the leftovers
    assert rc == 0, err
    assert temps(*dirs) == []
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


def test_disk_full_error_names_need_and_free(tmp_path):
    e = fileio.disk_full_error(tmp_path / "x.npy", need=3 * 2**20)
    assert isinstance(e, DiskFullError)
    assert str(e).startswith(f"no space left on the device to write {tmp_path / 'x.npy'} (needs 3.0 MB, ")
    assert "MB free" in str(e) and "\n" not in str(e)
    wrapped = RuntimeError("unexpected pos 123")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert fileio.is_disk_full(wrapped) and not fileio.is_disk_full(RuntimeError("x"))
