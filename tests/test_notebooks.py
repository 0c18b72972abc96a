"""The notebook workflow: committed notebooks are clean, the runner executes them with papermill
and builds the PDF report, and a failing notebook stops the run with one line naming the cell."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
RUNNER = ROOT / "report" / "run_pipeline.py"
NOTEBOOKS = ["01_data_prep.ipynb", "02_train.ipynb", "03_precision_tables.ipynb",
             "04_query_examples.ipynb", "05_report.ipynb"]
SECTIONS = ["Method", "Data", "Training loss", "Similarity precision", "Query examples", "Discussion",
            "Improvements"]
# small budget: the whole run takes ~2-3 minutes on 2 CPU cores
QUICK = ["steps=6", "batch_size=8", "num_triplets=300", "val_triplets=300", "train_eval_queries=200",
         "near_dup_queries=50", "warmup_steps=0", "checkpoint_every=3", "log_every=1"]


def _runner_module():
    spec = importlib.util.spec_from_file_location("run_pipeline", RUNNER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(*args, timeout=900):
    return subprocess.run([sys.executable, str(RUNNER), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


# ---- committed notebooks -------------------------------------------------------------------
@pytest.mark.parametrize("name", NOTEBOOKS + ["explore.ipynb"])
def test_committed_notebook_is_stripped_and_parameterised(name):
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and "parameters" in code[0].metadata.get("tags", []), "first code cell must be tagged 'parameters'"
    for c in code:
        assert c.outputs == [], f"{name}: a code cell has outputs (strip them)"
        assert c.execution_count is None, f"{name}: a code cell has an execution count"
    assert nb.metadata.kernelspec.name == "python3"
    assert "papermill" not in nb.metadata


PROFILES = sorted(p.stem for p in (ROOT / "ranking_lib" / "profiles").glob("*.yaml"))


def _notebook_config(name: str, params: dict):
    """The config notebook `name` builds from injected `params`, its other parameters at their defaults."""
    from ranking_lib.core import settings

    values = {**_runner_module().parameter_defaults(NOTEBOOK_DIR / name), **params}
    profile, overrides = values.pop("profile"), values.pop("overrides")
    return settings.notebook_config(profile, overrides, cwd=NOTEBOOK_DIR, **values)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_parameters_cell_is_the_short_contract(name):
    """Every notebook: the same short parameters cell (profile, run_dir, data_dir, a few knobs,
    overrides) and the same one-call setup; pressing Run All gives the demo profile's config."""
    from ranking_lib.core.settings import resolve

    params = _runner_module().parameter_defaults(NOTEBOOK_DIR / name)
    assert params == {"profile": "demo", "run_dir": None, "data_dir": None, "steps": None, "lr": None, "overrides": {}}
    assert _notebook_config(name, {}) == resolve("demo").config
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    setup = [c for c in nb.cells if "setup" in c.metadata.get("tags", [])]
    assert len(setup) == 1 and "settings.notebook_config(profile, overrides" in setup[0].source
    assert len(setup[0].source.splitlines()) <= 6


@pytest.mark.parametrize("profile", PROFILES)
def test_notebooks_cli_and_runner_resolve_every_profile_alike(profile, tmp_path, monkeypatch):
    """For every profile (with and without overrides): the config each notebook builds from what
    the runner injects equals the runner's validated config and the CLI's for the same settings.
    (A profile that leaves a field out gets the RunConfig default everywhere.)"""
    from ranking_lib import cli
    from ranking_lib.core.config import RunConfig

    monkeypatch.chdir(tmp_path)  # relative command-line paths are relative to the cwd, not notebooks/
    run = _runner_module()
    for runner_args, cli_args in (([], []), (["--run-dir", "r", "--set", "lr=1e-3", "miner=batch_hard"],
                                            ["--run-dir", "r", "--lr", "0.001", "--miner", "batch_hard"])):
        settings, runner = run.resolve_settings(run.build_parser().parse_args(["--profile", profile, *runner_args]))
        from_cli = cli.config_from_args(cli.build_parser().parse_args(["all", "--profile", profile, *cli_args]))
        assert RunConfig.from_dict(settings) == from_cli
        assert set(runner["notebook"]) == {"profile", "overrides"}
        for name in NOTEBOOKS:
            assert _notebook_config(name, runner["notebook"]) == from_cli, name
    assert from_cli.run_dir == str(tmp_path / "r") and from_cli.lr == 0.001


def test_notebook_knobs_and_runner_parameters():
    from ranking_lib.core import settings
    from ranking_lib.core.errors import RankingError

    assert settings.notebook_config("demo", {"gap": 0.5}, steps=3, lr=None).steps == 3
    assert settings.notebook_config("demo", {"gap": 0.5}).gap == 0.5
    with pytest.raises(RankingError, match="steps set twice"):
        settings.notebook_config("demo", {"steps": 4}, steps=3)
    run = _runner_module()
    p = run.notebook_parameters("demo", {"run_dir": "rel", "gap": 0.5}, {"run_dir": "/abs/rel", "gap": 0.5})
    assert p == {"profile": "demo", "overrides": {"run_dir": "/abs/rel", "gap": 0.5}}
    assert run.parse_set(["ks=[1,5]", "max_classes=null", "lr=3e-3", "device=cpu"]) == \
        {"ks": [1, 5], "max_classes": None, "lr": 0.003, "device": "cpu"}


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_are_valid_configs(profile):
    from ranking_lib.core.paths import base_dir
    from ranking_lib.core.settings import load_profile, resolve

    raw = load_profile(profile)
    s = resolve(profile)  # raises on unknown fields / invalid values
    assert "data_dir" in raw and "run_dir" in raw
    # profile paths are relative to the repository, whatever the current directory
    assert s.config.run_dir == str((base_dir() / raw["run_dir"]).resolve()) == str((ROOT / raw["run_dir"]).resolve())
    assert s.env == {k: str(v) for k, v in (raw.get("env") or {}).items()}


def test_cli_runner_and_benchmarks_resolve_a_profile_alike(tmp_path, monkeypatch):
    """One resolver: the CLI's config and the runner's notebook settings are the same run."""
    from ranking_lib import cli
    from ranking_lib.core.config import RunConfig

    monkeypatch.chdir(tmp_path)  # relative command-line paths are relative to the cwd
    args = cli.build_parser().parse_args(["train", "--profile", "sample", "--run-dir", "r", "--lr", "0.001"])
    from_cli = cli.config_from_args(args)
    run = _runner_module()
    ns = run.build_parser().parse_args(["--profile", "sample", "--run-dir", "r", "--set", "lr=1e-3"])
    settings, runner = run.resolve_settings(ns)
    assert RunConfig.from_dict(settings) == from_cli
    assert from_cli.run_dir == str(tmp_path / "r") and from_cli.lr == 0.001
    assert runner["env"] == cli.settings_from_args(args).env and runner["env"]["MALLOC_TOP_PAD_"] == "1073741824"


def test_runner_rejects_unknown_setting():
    r = _run("--profile", "demo", "--set", "no_such_field=1", "--no-pdf")
    assert r.returncode == 2
    assert "no_such_field" in r.stderr


# ---- failures ------------------------------------------------------------------------------
def test_failing_notebook_stops_the_run_with_one_line(tmp_path):
    r = _run("--profile", "demo", "--data-dir", str(tmp_path / "no-data"), "--run-dir", str(tmp_path / "run"),
             "--set", "make_demo_data=false", timeout=300)
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1, r.stderr
    line = errors[0]
    assert line.startswith("error: 01_data_prep.ipynb failed in cell ")
    assert "dataset directory not found" in line and "DatasetError" in line
    assert "02_train" not in r.stdout  # stopped at the first failure
    assert (tmp_path / "run" / "notebooks" / "01_data_prep.ipynb").is_file()
    assert not (tmp_path / "run" / "report.pdf").exists()


def page_fill(pdf: Path) -> list[float]:
    """Share of each page's text block that holds content. Pages are rendered with pdftoppm at
    20 dpi (the bottom 8 % with the page number left out); inked rows closer than 8 rows (1 cm)
    merge into one block, so lines, paragraphs and a figure with its caption count as used and
    only blank stretches of 1 cm or more count as empty."""
    import tempfile

    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["pdftoppm", "-r", "20", "-gray", str(pdf), f"{d}/p"], check=True)
        pages = [np.asarray(Image.open(p)) for p in sorted(Path(d).glob("p-*.pgm"))]
    inked = [np.flatnonzero((img[: int(img.shape[0] * 0.92)] < 200).any(axis=1)) for img in pages]
    top = min(rows.min() for rows in inked if len(rows))  # where the text block starts
    bottom = max(rows.max() for rows in inked if len(rows))  # and where it ends
    fill = []
    for rows in inked:
        used, start = 0, None
        for a, b in zip(rows, list(rows[1:]) + [None]):
            start = a if start is None else start
            if b is None or b - a > 8:
                used += a - start + 1
                start = None
        fill.append(used / (bottom - top + 1))
    return fill


# ---- end to end ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    run_dir = base / "run"
    r = _run("--profile", "demo", "--data-dir", str(base / "data"), "--run-dir", str(run_dir), "--set", *QUICK)
    return r, run_dir


@pytest.mark.slow
def test_demo_run_executes_every_notebook(demo_run):
    r, run_dir = demo_run
    assert r.returncode == 0, r.stdout + r.stderr
    for name in NOTEBOOKS:
        nb = nbformat.read(run_dir / "notebooks" / name, as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"
        assert nb.metadata.papermill.get("exception") in (None, False)
        assert all(c.execution_count for c in nb.cells if c.cell_type == "code" and c.source.strip())
    for f in ["config.json", "loss_log.csv", "metrics_trained.json", "metrics_baseline.json",
              "precision_table.csv", "query_examples.json", "figures/loss_curve.png"] + \
             [f"figures/query_{i}.png" for i in range(1, 6)]:
        assert (run_dir / f).is_file(), f


@pytest.mark.slow
def test_demo_report_pdf(demo_run):
    from pypdf import PdfReader

    r, run_dir = demo_run
    assert r.returncode == 0, r.stdout + r.stderr
    pdf = run_dir / "report.pdf"
    assert pdf.is_file() and (run_dir / "report.html").is_file()
    reader = PdfReader(pdf)
    assert len(reader.pages) >= 5
    text = "\n".join(p.extract_text() for p in reader.pages)
    flat = " ".join(text.split())
    for title in SECTIONS:
        assert title in text, f"section {title!r} missing"
    # numbers in the report come from the run's metrics
    trained = json.loads((run_dir / "metrics_trained.json").read_text())
    baseline = json.loads((run_dir / "metrics_baseline.json").read_text())
    for m in (trained, baseline):
        for split in ("train", "val"):
            for key in ("triplet_acc", "precision@1", "precision@10", "map@r"):
                assert f"{m[split][key]:.2f}" in flat, f"{key} ({split}) = {m[split][key]:.2f} not in the PDF"
    assert f"{trained['val']['precision@1']:.2f}%" in flat  # also in the prose
    # code is hidden
    assert "plots.show" not in flat and "workflow." not in flat
    # figures: sample grid, triplets, loss, precision bars and five query figures
    n_images = sum(len(p.images) for p in reader.pages)
    assert n_images >= 1 + 5 + 3, n_images
    # every figure on the same page as its own caption (a LaTeX float holds both)
    pages_of = {}
    for i, page in enumerate(reader.pages):
        found = [int(n) for n in re.findall(r"Figure (\d+):", page.extract_text())]
        assert len(page.images) >= len(found), f"page {i + 1}: captions {found} but {len(page.images)} images"
        for n in found:
            pages_of.setdefault(n, []).append(i)
    # sample grid, triplets, loss, bars, 5 queries; then the measured full-data figures the repository
    # holds (the ablation's trade-off of class and near-duplicate similarity, recipes against minutes,
    # the ablation's out-of-class curve)
    from ranking_lib.core.paths import checkout_file
    from ranking_lib.reporting import ablation, report

    measured = ablation.load(checkout_file("docs/figures/ablation.json"))
    fine = ablation.load(checkout_file("docs/figures/ablation_fine.json")) or measured
    n_figures = (9 + (report.measured_levers(checkout_file("docs/figures/levers.json")) is not None)
                 + (measured is not None) + (fine is not None and ablation.row(fine, "profile") is not None))
    assert sorted(pages_of) == list(range(1, n_figures + 1)), pages_of
    assert all(len(p) == 1 for p in pages_of.values()), pages_of
    # no page but the last is less than half used
    fill = page_fill(pdf)
    assert all(f >= 0.5 for f in fill[:-1]), [f"{f:.2f}" for f in fill]
    query = json.loads((run_dir / "query_examples.json").read_text())
    assert len(query) == 5 and len({q["query_label"] for q in query}) == 5
    for q in query:
        assert f"d={min(q['top_distances']):.3f}" in flat
