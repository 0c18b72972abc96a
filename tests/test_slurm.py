"""The Slurm job scripts under a real one-node Slurm: munged, slurmctld and slurmd are started
here on localhost (free ports, a fresh munge key, everything under a temporary directory) and the
scripts are submitted with `sbatch`. `.ci/run` installs Debian's slurm-wlm; without it (or
without root, which the daemons run as here) these tests skip and `test_cluster.py` still runs
the same scripts with the scheduler's variables and command shims.

A user's site gives GPUs and more memory than this node: the tests override the scripts'
``--gres``, ``--cpus-per-task`` and ``--mem`` on the sbatch command line, as a user of a smaller
node would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMALL_CLASSES, real_slurm_missing, slurm_which as _which

from ranking_lib.training.checkpoint import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
SMALL_NODE = ["--gres=none", "--cpus-per-task=1", "--mem=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if why := real_slurm_missing():
        pytest.skip(why)
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log"):
        (d / sub).mkdir()
    key = d / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    sock = d / "munge.sock"
    subprocess.run([_which("munged"), "--force", f"--socket={sock}", f"--key-file={key}",
                    f"--pid-file={d / 'munged.pid'}", f"--log-file={d / 'log' / 'munged.log'}",
                    f"--seed-file={d / 'munge.seed'}"], check=True, timeout=30)
    host = socket.gethostname().split(".")[0]
    conf = d / "slurm.conf"
    conf.write_text(f"""ClusterName=ci
SlurmctldHost={host}(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d / 'spool'}
SlurmctldPidFile={d / 'slurmctld.pid'}
SlurmdPidFile={d / 'slurmd.pid'}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmctldLogFile={d / 'log' / 'slurmctld.log'}
SlurmdLogFile={d / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    env = dict(os.environ, SLURM_CONF=str(conf), RANKING_PROGRESS="off")
    env.pop("RANKING_RUN_LOCK_TOKEN", None)
    daemons = [subprocess.Popen([_which("slurmctld"), "-D", "-f", str(conf)], env=env),
               subprocess.Popen([_which("slurmd"), "-D", "-f", str(conf), "-N", host], env=env)]
    try:
        _wait(lambda: subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                                     text=True).stdout.strip() == "idle", 60, "the node to be idle")
        yield env, d
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
        for p in daemons:
            p.send_signal(signal.SIGTERM)
        for p in daemons:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        pid = d / "munged.pid"
        if pid.is_file():
            os.kill(int(pid.read_text()), signal.SIGTERM)


FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def _sbatch(env, args, wait=True, timeout=900) -> subprocess.CompletedProcess:
    """Submit with ``sbatch --parsable``; with `wait`, poll the job every 0.5 s until it ends and
    return with the job's exit status as the return code, as ``sbatch --wait`` does (whose poll
    interval grows to 10 s, which would add up to that much to every job here)."""
    r = subprocess.run(["sbatch", "--parsable", *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=60)
    if not wait or r.returncode != 0:
        return r
    job = r.stdout.strip().split(";")[0]
    fields: dict[str, str] = {}

    def ended() -> bool:
        out = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True).stdout
        fields.update(kv.split("=", 1) for kv in out.split() if "=" in kv)
        return fields.get("JobState") in FINISHED

    _wait(ended, timeout, f"job {job} to end")
    code, signal_ = (int(x) for x in fields["ExitCode"].split(":"))
    return subprocess.CompletedProcess(r.args, code or (128 + signal_ if signal_ else 0), r.stdout,
                                       r.stderr + f"job {job}: {fields['JobState']} {fields['ExitCode']}\n")


def test_report_job_runs_the_pipeline_under_slurm(slurm, tmp_path):
    """report.sbatch through sbatch: the real runner on demo data (first notebook, no PDF); the
    job's exit status is the runner's."""
    env, _ = slurm
    subprocess.run([sys.executable, "data_scripts/make_demo_dataset.py", "--out", str(tmp_path / "demo-data")],
                   cwd=REPO, check=True, capture_output=True)
    env = dict(env, PYTHON=sys.executable, PROFILE="demo", RUN=str(tmp_path / "run"), DATA=str(tmp_path / "demo-data"),
               RUNNER_ARGS="--no-pdf --notebooks 01", TMPDIR=str(tmp_path))
    out = tmp_path / "job-%j.out"
    r = _sbatch(env, [*SMALL_NODE, f"--output={out}", "cluster/slurm/report.sbatch"])
    logs = "\n".join(p.read_text() for p in tmp_path.glob("job-*.out"))
    assert r.returncode == 0, r.stdout + r.stderr + logs
    job = r.stdout.strip().split(";")[0]
    assert f"job {job} on " in logs and "(restart 0 of 2)" in logs
    assert (tmp_path / "run" / "notebooks" / "01_data_prep.ipynb").is_file()
    assert (tmp_path / "run" / "triplets_train.npy").is_file()
    # a failing runner fails the job: bad settings exit 2 and the job's exit code says so
    bad = dict(env, RUNNER_ARGS="--no-pdf --notebooks 01 --set lr=-1")
    r = _sbatch(bad, [*SMALL_NODE, f"--output={tmp_path / 'bad-%j.out'}", "cluster/slurm/report.sbatch"])
    assert r.returncode == 2, r.stdout + r.stderr


def test_dead_kernel_requeues_the_job_for_real(slurm, tmp_path):
    """A runner that exits 4 (a kernel died) on its first attempt: the job puts itself back in the
    queue (scontrol requeue), Slurm starts it again with SLURM_RESTART_COUNT=1, and the second
    attempt's exit status ends the job."""
    env, _ = slurm
    runner = tmp_path / "runner.sh"
    calls = tmp_path / "calls.log"
    runner.write_text(f"""#!/bin/bash
echo "attempt restarts=$RESTARTS" >> {calls}
[ "$RESTARTS" = 0 ] && exit 4
exit 0
""")
    runner.chmod(0o755)
    env = dict(env, PYTHON=str(runner), PROFILE="demo", TMPDIR=str(tmp_path), REQUEUED_MARK=str(tmp_path / "requeued"))
    r = _sbatch(env, [*SMALL_NODE, f"--output={tmp_path / 'job-%j.out'}", "cluster/slurm/report.sbatch"], wait=False)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    _wait(lambda: (tmp_path / "requeued").exists(), 120, "the job to requeue itself")

    def started_again() -> bool:  # Slurm holds a requeued job for ~2 minutes (BeginTime): start it now
        subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], env=env, capture_output=True)
        return calls.read_text().count("attempt") == 2

    _wait(started_again, 180, "the second attempt")
    _wait(lambda: subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True,
                                 text=True).stdout.strip() == "", 60, "the job to end")
    assert calls.read_text().splitlines() == ["attempt restarts=0", "attempt restarts=1"]
    # one log holds both attempts (--open-mode=append: a requeued job does not truncate it)
    log = (tmp_path / f"job-{job}.out").read_text()
    assert "(restart 0 of 2)" in log and "a kernel died (exit 4): requeueing (scontrol requeue" in log
    assert log.index("(restart 0 of 2)") < log.index("(restart 1 of 2)")


def test_multinode_script_trains_with_srun_and_torchrun(slurm, tmp_path, sample_dir, small_cache_dir):
    """train_multinode.sbatch on the one node, two CPU ranks: prepare, sample, srun -> torchrun
    train and embed, evaluate."""
    env, _ = slurm
    run = tmp_path / "run"
    extra = (f"--max-classes {SMALL_CLASSES} --cache-dir {small_cache_dir} --input-size 64 --embedding-dim 16 --batch-size 8 --steps 3 "
             "--num-triplets 100 --val-triplets 100 --freeze-stages 7 --cache-stage-features --device cpu "
             "--train-eval-queries 50 --lr 0.01 --checkpoint-every 2 --near-dup-queries 20")
    env = dict(env, GPUS_PER_NODE="2", PYTHON=sys.executable, PROFILE="demo", RUN=str(run), DATA=str(sample_dir),
               EXTRA=extra, PORT=str(_free_port()))
    r = _sbatch(env, ["--nodes=1", "--gres=none", f"--cpus-per-task={os.cpu_count()}", "--mem=0",
                      f"--output={tmp_path / 'job-%j.out'}", "cluster/slurm/train_multinode.sbatch"])
    logs = "".join(p.read_text() for p in tmp_path.glob("job-*.out"))
    assert r.returncode == 0, r.stderr + logs[-3000:]
    assert read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3
    assert (run / "metrics_trained.json").is_file() and (run / "embeddings_trained_val.npz").is_file()
