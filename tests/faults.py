"""Helpers and fixtures shared by the fault-injection tests (full disks, kill -9 during saves,
concurrent writers, hostile checkpoints, damaged caches, hostile input): demo datasets and run
dirs, CLI runs that return the exit status and the ``error:`` lines, child processes stopped in a
save (``tests/fault_child.py``), and copies of a finished run to damage.

Two families, from the two rounds of these tests:

* on `demo_dirs` (a dict: ``data``, ``cache``, ``root``): `demo_flags`, `demo_cfg`, `run_cli`
  (``(rc, err_lines)``; an argparse refusal is caught), `prepared`;
* on `demo_data` (the dataset's path): `data_flags` (its own cache dir, ``embed_batch_size`` 64),
  `run_cli_out` (``(rc, err_lines, stdout)``), the `data`, `embedded` and `trained` fixtures.

A test module imports the fixtures it uses, and the fixtures those depend on.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import tiny_flags

from data_scripts.make_demo_dataset import make_demo_dataset
from ranking_lib import cli
from ranking_lib.core.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "tests" / "fault_child.py"


@pytest.fixture(scope="module")
def demo_dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("rel")
    data = make_demo_dataset(root / "data", num_classes=4, train_per_class=20, val_per_class=5, seed=0)
    cache = root / "cache"
    return {"data": data, "cache": cache, "root": root}


def demo_flags(demo_dirs, run_dir, **over) -> list[str]:
    return tiny_flags(demo_dirs["data"], run_dir, demo_dirs["cache"], **over)


def demo_cfg(demo_dirs, run_dir, **over) -> RunConfig:
    return cli.config_from_args(cli.build_parser().parse_args(["sample"] + demo_flags(demo_dirs, run_dir, **over)))


def run_cli(args, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    try:
        rc = cli.main(args)
    except SystemExit as e:  # argparse refused a flag (its one line is printed)
        rc = e.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return rc, err


def prepared(demo_dirs, capsys, tmp_path, steps=("prepare", "sample"), **over) -> tuple[Path, list[str]]:
    """A run dir on the demo data with `steps` done; returns it and its CLI flags."""
    run = tmp_path / "run"
    flags = demo_flags(demo_dirs, run, **over)
    for s in steps:
        assert run_cli([s] + flags, capsys)[0] == 0, s
    return run, flags


def temps(*dirs) -> list[Path]:
    return [p for d in dirs if Path(d).is_dir() for p in Path(d).iterdir() if ".tmp" in p.name]


def child(args, env_extra, marker: Path) -> subprocess.Popen:
    env = dict(os.environ, FAULT_MARKER=str(marker), PYTHONPATH=str(REPO), **env_extra)
    return subprocess.Popen([sys.executable, str(CHILD), *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 120.0) -> str:
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


def enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("rel2") / "data", num_classes=4, train_per_class=20,
                             val_per_class=5, seed=0)


@pytest.fixture
def data(demo_data, tmp_path) -> Path:
    """A private copy of the demo dataset, free to damage."""
    return Path(shutil.copytree(demo_data, tmp_path / "data"))


def data_flags(data, run_dir, cache_dir, **over) -> list[str]:
    return tiny_flags(data, run_dir, cache_dir, **{"embed_batch_size": 64, **over})


def run_cli_out(args, capsys) -> tuple[int, list[str], str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, [ln for ln in out.err.splitlines() if ln.strip()], out.out


def signalled_training(demo_data, tmp_path, capsys, sig: int, *, rows: int, **popen):
    """A `train` command run as a child process on the demo data (400 steps, a checkpoint every 3),
    sent `sig` once its loss log has more than `rows` rows: (run dir, cache dir, the ended child,
    its stderr). `popen`: more `subprocess.Popen` arguments (a ``preexec_fn``)."""
    run, cache = tmp_path / "run", tmp_path / "cache"
    flags = data_flags(demo_data, run, cache, steps=400, checkpoint_every=3)
    for s in ("prepare", "sample"):
        assert run_cli_out([s] + flags, capsys)[0] == 0
    proc = subprocess.Popen([sys.executable, "-m", "ranking_lib", "train", *map(str, flags)], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)
    log, t0 = run / "loss_log.csv", time.time()
    try:
        while not (log.is_file() and len(log.read_text().splitlines()) > rows):
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() - t0 < 240, "training never got going"
            time.sleep(0.1)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return run, cache, proc, stderr


def logged(caplog) -> list[str]:
    """The warnings logged since the last call (under pytest they go to caplog, not stderr)."""
    out = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    caplog.clear()
    return out


def files_in(*dirs) -> set[Path]:
    return {p for d in dirs if Path(d).exists() for p in Path(d).rglob("*") if p.is_file()}


def rewrite_annotations(data: Path, transform) -> None:
    ann = data / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines()
    ann.write_text("\n".join(transform(lines)) + "\n")


@pytest.fixture(scope="module")
def embedded(demo_data, tmp_path_factory):
    """A run dir with triplets and baseline embeddings of both splits (no training needed)."""
    root = tmp_path_factory.mktemp("emb")
    flags = data_flags(demo_data, root / "run", root / "cache")
    for step in ("prepare", "sample", "embed"):
        assert cli.main(([step] + flags + (["--model", "baseline"] if step == "embed" else []))) == 0, step
    return root / "run", flags


def tamper(src: Path, dst: Path, **change) -> None:
    with np.load(src, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    for k, f in change.items():
        d[k] = f(d[k])
    with open(dst, "wb") as fh:
        np.savez(fh, **d)


def copy_run(embedded, tmp_path) -> tuple[Path, list[str]]:
    run, flags = embedded
    mine = Path(shutil.copytree(run, tmp_path / "run"))
    flags = list(flags)
    flags[flags.index("--run-dir") + 1] = str(mine)
    return mine, flags


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory):
    """A run trained for 4 steps, both models embedded, the trained one evaluated."""
    root = tmp_path_factory.mktemp("net")
    flags = data_flags(demo_data, root / "run", root / "cache", steps=4)
    for step in (["prepare"], ["sample"], ["train"], ["embed"], ["embed", "--model", "baseline"], ["evaluate"]):
        assert cli.main(step + flags) == 0, step
    return root / "run", flags


def own_copy(trained, tmp_path, name="run") -> tuple[Path, list[str]]:
    """A copy of the trained run whose config.json names the copy (as a run made there would)."""
    run, flags = trained
    mine = Path(shutil.copytree(run, tmp_path / name, symlinks=True))
    RunConfig.load(mine / "config.json").replace(run_dir=str(mine)).save(mine / "config.json")
    flags = list(flags)
    flags[flags.index("--run-dir") + 1] = str(mine)
    return mine, flags


def train_on(flags, steps) -> list[str]:
    out = list(flags)
    out[out.index("--steps") + 1] = str(steps)
    return out
