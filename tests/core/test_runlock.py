"""The run-dir lock (`core.runlock`) under concurrent writers: a second writer on a run dir is
refused naming the holder, a child given the holder's token writes under its lock, and the lock is
reentrant in one process and dies with its process."""

from __future__ import annotations

import os
import subprocess
import sys

from faults import demo_dirs  # noqa: F401 (fixtures, requested by name)
from faults import child, demo_cfg, prepared, run_cli, wait_for

from ranking_lib import workflow
from ranking_lib.core.runlock import TOKEN_ENV, RunDirLock


def test_second_writer_on_a_run_dir_is_refused_naming_the_holder(demo_dirs, capsys, tmp_path):
    run, flags = prepared(demo_dirs, capsys, tmp_path)
    marker = tmp_path / "marker"
    proc = child(["train"] + flags, {"FAULT_STALL_REPLACE": r"^last\.pt$"}, marker)
    try:
        wait_for(marker, proc)  # the first trainer is inside its run, holding the lock
        rows = (run / "loss_log.csv").read_text()
        for step in ("train", "sample", "embed", "evaluate"):
            rc, err = run_cli([step] + flags, capsys)
            assert rc == 2 and len(err) == 1, err
            assert f"run directory {run} is in use by pid {proc.pid}" in err[0] and "train" in err[0]
        assert (run / "loss_log.csv").read_text() == rows  # the second writer wrote nothing
    finally:
        proc.kill()
        proc.wait()
    assert run_cli(["train"] + flags, capsys)[0] == 0  # the kernel dropped the dead holder's lock
    log = workflow.load_loss_log(demo_cfg(demo_dirs, run))
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


def test_every_writing_step_called_as_a_notebook_calls_it_is_refused_while_another_process_holds_the_run(
        demo_dirs, tmp_path):
    """The notebooks call `workflow` directly, not through the command line: each step that writes
    the run directory takes its lock itself (`train` once lost it)."""
    import pytest

    from ranking_lib.core.errors import RunDirBusyError

    run = tmp_path / "run"
    code = ("import sys, time; from ranking_lib.core.runlock import RunDirLock\n"
            "RunDirLock(sys.argv[1], 'holder').__enter__(); print('held', flush=True); time.sleep(120)\n")
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = demo_cfg(demo_dirs, run)
        for step in (workflow.prepare, workflow.sample, workflow.train, workflow.embed, workflow.evaluate):
            with pytest.raises(RunDirBusyError, match=f"in use by pid {holder.pid}"):
                step(cfg)
    finally:
        holder.kill()
        holder.wait()
