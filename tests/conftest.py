import os
from pathlib import Path

import pytest

pytest.register_assert_rewrite("faults", "tiny_runs")  # their asserts explain themselves as a test's do

from ranking_lib.core.log import show_messages  # noqa: E402

# The library logs (core.log); its lines show as the command line and the notebooks show them, so a
# test reads a library call's lines from capsys whichever test ran first in the process.
show_messages()

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "tiny-imagenet-sample"
# RANKING_TESTS_WITHOUT_SAMPLE=1 runs the suite as on a clone without ../shared (the fallback).
HAVE_SAMPLE = (SAMPLE / "wnids.txt").is_file() and os.environ.get("RANKING_TESTS_WITHOUT_SAMPLE") != "1"


@pytest.fixture(scope="session")
def real_sample_dir() -> Path:
    """The real Tiny ImageNet slice beside the checkout, for tests that need real ImageNet classes
    (pretrained classifier rows); they skip when it is absent."""
    if not HAVE_SAMPLE:
        pytest.skip(f"real Tiny ImageNet sample not found at {SAMPLE}")
    return SAMPLE


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """A small dataset in the tiny-imagenet-200 layout: the real sample beside the checkout when it
    is there, else a generated demo dataset of the same shape (20 classes, 100 train and 50 val
    images each), so every clone runs the training, CLI and stage-cache paths."""
    if HAVE_SAMPLE:
        return SAMPLE
    from data_scripts.make_demo_dataset import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo_sample") / "tiny-imagenet-demo", num_classes=20,
                             train_per_class=100, val_per_class=50, seed=0)


@pytest.fixture(scope="session")
def sample_cache_dir(tmp_path_factory) -> Path:
    """One decoded cache of the sample shared by the tests of a session (the sample is read-only)."""
    return tmp_path_factory.mktemp("sample_cache")


SMALL_CLASSES = 4


@pytest.fixture(scope="session")
def small_cache_dir(tmp_path_factory) -> Path:
    """A decoded cache for the sample's first `SMALL_CLASSES` classes (``--max-classes 4``), shared
    by the tests that drive a whole command but need no more classes than that (a cache is keyed by
    split and size, so the 4-class one lives apart from `sample_cache_dir`'s)."""
    return tmp_path_factory.mktemp("small_cache")


SLURM_DAEMONS = ("munged", "slurmctld", "slurmd")
SLURM_CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "srun")


def slurm_which(name: str) -> str | None:
    """A Slurm or munge binary on PATH or in /usr/sbin (the daemons live there)."""
    import shutil

    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def real_slurm_missing() -> str | None:
    """Why `tests/test_slurm.py` cannot start its one-node Slurm here (None when it can). The
    shim-driven runs of the same job scripts in `tests/test_cluster.py` stand in for it then."""
    missing = [b for b in SLURM_DAEMONS + SLURM_CLIENTS if slurm_which(b) is None]
    if missing:
        return (f"Slurm not installed (missing {', '.join(missing)}; apt-get install slurmctld slurmd "
                "slurm-client munge)")
    if os.geteuid() != 0:
        return "the local Slurm daemons run as root here"
    return None
