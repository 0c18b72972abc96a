"""The cluster job scripts (`cluster/`), run by bash with the scheduler's environment variables set
and its commands (`scontrol`, `srun`, `qrerun`) replaced by small shims on PATH: this runs with no
scheduler installed, and it is how the PBS scripts are tested (no PBS server runs here). The
Slurm scripts also run under a real one-node Slurm in `test_slurm.py`. The runner, torchrun and
the training they call are the real ones."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL_CLASSES, real_slurm_missing

from ranking_lib.training.checkpoint import read_checkpoint

REPO = Path(__file__).resolve().parents[1]

# Where tests/test_slurm.py runs these job scripts under a real one-node Slurm (as in CI), the
# same assertions on a shim-driven run here would repeat a minute of work: they run where it cannot.
UNDER_REAL_SLURM = pytest.mark.skipif(real_slurm_missing() is None,
                                      reason="tests/test_slurm.py runs this job script under a real Slurm")


def _shim(bin_dir: Path, name: str, body: str) -> None:
    p = bin_dir / name
    p.write_text("#!/bin/bash\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def shims(tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    calls = tmp_path / "calls.log"
    _shim(d, "scontrol", f'if [ "$1 $2" = "show hostnames" ]; then echo localhost; else echo "scontrol $*" >> {calls}; fi')
    _shim(d, "qrerun", f'echo "qrerun $*" >> {calls}')
    _shim(d, "srun", 'while [[ "$1" == --* ]]; do shift; done; exec "$@"')  # one node: run the command here
    # a stand-in runner: records its arguments, exits with FAKE_RC
    _shim(d, "fake-python", f'echo "runner $*" >> {calls}; exit ${{FAKE_RC:-0}}')
    return d, calls


def _env(bin_dir, **kw):
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RANKING_PROGRESS="off", **kw)
    env.pop("RANKING_RUN_LOCK_TOKEN", None)
    return env


def _slurm_report(shims, tmp_path, **kw):
    bin_dir, calls = shims
    env = _env(bin_dir, SLURM_SUBMIT_DIR=str(REPO), SLURM_JOB_ID="77", PYTHON=str(bin_dir / "fake-python"),
               TMPDIR=str(tmp_path), **kw)
    r = subprocess.run(["bash", "cluster/slurm/report.sbatch"], cwd=REPO, env=env, capture_output=True, text=True)
    return r, calls.read_text() if calls.exists() else ""


def test_slurm_report_passes_settings_and_exit_status(shims, tmp_path):
    r, calls = _slurm_report(shims, tmp_path, PROFILE="cpu", DATA="/d/tiny", SLURM_RESTART_COUNT="0")
    assert r.returncode == 0, r.stderr
    assert "runner report/run_pipeline.py --profile cpu --run-dir runs/cpu --data-dir /d/tiny" in calls
    assert "requeue" not in calls
    r, _ = _slurm_report(shims, tmp_path, FAKE_RC="1")
    assert r.returncode == 1  # a failing notebook is not retried


def test_dead_kernel_requeues_until_the_limit(shims, tmp_path):
    r, calls = _slurm_report(shims, tmp_path, FAKE_RC="4", SLURM_RESTART_COUNT="0")
    assert r.returncode == 0 and "scontrol requeue 77" in calls, (r.stderr, calls)
    r, calls = _slurm_report(shims, tmp_path, FAKE_RC="4", SLURM_RESTART_COUNT="2")
    assert r.returncode == 4 and "giving up" in r.stderr
    assert calls.count("requeue") == 1


def test_requeue_mark_is_down_before_the_requeue_and_gone_if_it_fails(shims, tmp_path):
    """scontrol requeue may end the job script before it returns: the mark is touched first, and
    removed again when the requeue command fails (the job then ends with the runner's exit 4)."""
    bin_dir, calls = shims
    mark = tmp_path / "requeued"
    # a requeue that ends the script at once, as Slurm may: the mark must already be there
    _shim(bin_dir, "scontrol", f'echo "scontrol $*" >> {calls}; kill -TERM $PPID; sleep 5')
    r, _ = _slurm_report(shims, tmp_path, FAKE_RC="4", SLURM_RESTART_COUNT="0", REQUEUED_MARK=str(mark))
    assert mark.exists(), (r.returncode, r.stderr)
    mark.unlink()
    _shim(bin_dir, "scontrol", f'echo "scontrol $*" >> {calls}; exit 1')  # the requeue fails
    r, _ = _slurm_report(shims, tmp_path, FAKE_RC="4", SLURM_RESTART_COUNT="0", REQUEUED_MARK=str(mark))
    assert r.returncode == 4 and "error: requeue failed" in r.stderr, r.stderr
    assert not mark.exists()


def test_pbs_report_counts_its_own_restarts(shims, tmp_path):
    bin_dir, calls = shims
    work = tmp_path / "work"
    (work / "cluster").mkdir(parents=True)
    for f in ("run_report.sh",):
        (work / "cluster" / f).write_text((REPO / "cluster" / f).read_text())
    env = _env(bin_dir, PBS_O_WORKDIR=str(work), PBS_JOBID="5.server", PYTHON=str(bin_dir / "fake-python"),
               TMPDIR=str(tmp_path), FAKE_RC="4", MAX_RESTARTS="1")
    script = str(REPO / "cluster" / "pbs" / "report.pbs")
    first = subprocess.run(["bash", script], cwd=work, env=env, capture_output=True, text=True)
    second = subprocess.run(["bash", script], cwd=work, env=env, capture_output=True, text=True)
    assert first.returncode == 0 and second.returncode == 4, (first.stderr, second.stderr)
    assert calls.read_text().count("qrerun 5.server") == 1


@pytest.mark.slow
@UNDER_REAL_SLURM
def test_slurm_report_runs_the_real_pipeline(shims, tmp_path):
    """The real runner on the demo data, first notebook only, no PDF."""
    bin_dir, _ = shims
    env = _env(bin_dir, SLURM_SUBMIT_DIR=str(REPO), SLURM_JOB_ID="78", PYTHON=sys.executable, PROFILE="demo",
               RUN=str(tmp_path / "run"), RUNNER_ARGS="--no-pdf --notebooks 01", TMPDIR=str(tmp_path),
               DATA=str(tmp_path / "demo-data"))
    subprocess.run([sys.executable, "data_scripts/make_demo_dataset.py", "--out", str(tmp_path / "demo-data")],
                   cwd=REPO, check=True, capture_output=True)
    r = subprocess.run(["bash", "cluster/slurm/report.sbatch"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (tmp_path / "run" / "notebooks" / "01_data_prep.ipynb").is_file()
    assert (tmp_path / "run" / "triplets_train.npy").is_file()


@pytest.mark.slow
@UNDER_REAL_SLURM
def test_slurm_multinode_script_trains_with_torchrun(shims, tmp_path, sample_dir, small_cache_dir):
    """train_multinode.sbatch on one 'node' with two CPU ranks: prepare, sample, torchrun train
    and embed, evaluate."""
    bin_dir, _ = shims
    run = tmp_path / "run"
    extra = (f"--max-classes {SMALL_CLASSES} --cache-dir {small_cache_dir} --input-size 64 --embedding-dim 16 --batch-size 8 --steps 3 "
             "--num-triplets 100 --val-triplets 100 --freeze-stages 7 --cache-stage-features --device cpu "
             "--train-eval-queries 50 --lr 0.01 --checkpoint-every 2 --near-dup-queries 20")
    env = _env(bin_dir, SLURM_SUBMIT_DIR=str(REPO), SLURM_JOB_ID="79", SLURM_NNODES="1",
               SLURM_JOB_NODELIST="localhost", GPUS_PER_NODE="2", PYTHON=sys.executable, PROFILE="demo",
               RUN=str(run), DATA=str(sample_dir), EXTRA=extra, PORT=str(_free_port()))
    r = subprocess.run(["bash", "cluster/slurm/train_multinode.sbatch"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3
    assert (run / "metrics_trained.json").is_file() and (run / "embeddings_trained_val.npz").is_file()
