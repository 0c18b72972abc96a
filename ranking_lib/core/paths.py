"""The paths of the source checkout, in one place: the package, its profiles, and the folders of
measured results beside it (``docs/runs/``: kept run cards, ``docs/figures/``: benchmark JSON,
``benchmarks/results/``: a benchmark's fresh output). An installed package has no checkout:
`checkout_root` is then None and `checkout_file` finds nothing."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PROFILE_DIR = PACKAGE_DIR / "profiles"
REPO = PACKAGE_DIR.parent
"""The folder above the package: the checkout when there is one (`checkout_root`)."""
KEPT_RUNS = REPO / "docs" / "runs"
FIGURES = REPO / "docs" / "figures"
BENCH_RESULTS = REPO / "benchmarks" / "results"


def checkout_root() -> Path | None:
    """The source checkout the package runs from (``pyproject.toml`` and ``notebooks/`` beside
    ``ranking_lib/``), or None for an installed package."""
    return REPO if (REPO / "pyproject.toml").is_file() and (REPO / "notebooks").is_dir() else None


def base_dir() -> Path:
    """What relative paths in a profile are relative to: the checkout, else the current directory."""
    return checkout_root() or Path.cwd()


def checkout_file(relative: str) -> Path | None:
    """A file of the checkout (e.g. ``docs/figures/ablation.json``), or None when there is no
    checkout or no such file (measured results an installed package does not ship)."""
    root = checkout_root()
    path = None if root is None else root / relative
    return path if path is not None and path.exists() else None
