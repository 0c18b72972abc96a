from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "tiny-imagenet-sample"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real Tiny ImageNet slice beside the checkout; tests using it skip when absent."""
    if not (SAMPLE / "wnids.txt").is_file():
        pytest.skip(f"real Tiny ImageNet sample not found at {SAMPLE}")
    return SAMPLE


@pytest.fixture(scope="session")
def sample_cache_dir(tmp_path_factory) -> Path:
    """One decoded cache of the sample shared by the tests of a session (the sample is read-only)."""
    return tmp_path_factory.mktemp("sample_cache")
