"""The prepared GPU-machine script, cluster/gpu_device_run.sh, run here on the CPU.

On the GPU machine the script unpacks the carried chunks, runs ``python -m ranking_lib all
--profile gpu`` under a whole-pipeline budget, draws the figures without Jupyter
(report/make_figures.py) and leaves the run card, the metrics and the figures in OUT. Here the
same script runs on the sample's first 4 classes packed in 2 MiB chunks, with the tiny run's
settings and ``--device cpu`` after ``--``, on an interpreter that cannot import FAISS or
papermill (as on that machine), with a carried folder of one small wheel and WordNet; then report.html is built from the same run through the
papermill path (``make_figures.py --html``), which needs the Jupyter kernel this checkout has.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import HAVE_SAMPLE
from data_scripts import chunks
from tiny_runs import tiny_flags

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "cluster" / "gpu_device_run.sh"


def run_script(args: list[str], env_extra: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_WAIT_POLICY": "PASSIVE", **(env_extra or {})}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


def without(tmp: Path, *modules: str) -> str:
    """A PYTHONPATH folder whose packages of these names fail to import, as where they are not installed."""
    for m in modules:
        (tmp / m).mkdir(parents=True)
        (tmp / m / "__init__.py").write_text(f"raise ImportError('{m} is not installed here')\n")
    return str(tmp)


def probe_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel (package `ranking_probe`), standing in for the carried ones."""
    folder.mkdir(parents=True)
    path = folder / "ranking_probe-0.1-py3-none-any.whl"
    info = "ranking_probe-0.1.dist-info"
    files = {"ranking_probe/__init__.py": "VALUE = 1\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: ranking-probe\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for name, text in {**files, f"{info}/RECORD": record}.items():
            z.writestr(name, text)
    return path


@pytest.fixture(scope="module")
def device_run(sample_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    chunks.pack(sample_dir, root / "chunks", chunk_mib=2, show_progress=False)
    probe_wheel(root / "support" / "wheels")
    wordnet = Path("/usr/share/wordnet/data.noun")
    if wordnet.is_file():
        (root / "support" / "wordnet").mkdir()
        shutil.copy(wordnet, root / "support" / "wordnet" / "data.noun")
    data, run, out = root / "data" / sample_dir.name, root / "run", root / "out"
    flags = tiny_flags(data, run, root / "cache", max_classes=4, num_query_examples=2, warmup_steps=1,
                       batch_size=8, device="cpu")
    flags = [f for f in flags if f not in ("--data-dir", str(data), "--run-dir", str(run))]
    r = run_script(["--minutes", "4", "--eval-minutes", "1", "--data", str(data), "--chunks", str(root / "chunks"),
                    "--support", str(root / "support"), "--run-dir", str(run), "--out", str(out), "--", *flags],
                   {"PYTHONPATH": without(root / "missing", "faiss", "papermill"), "TMPDIR": str(root)})
    return r, data, run, out, root


@pytest.mark.slow
def test_device_script_runs_the_profile_from_chunks(device_run, sample_dir):
    r, data, run, out, root = device_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (root / "ranking-site" / "ranking_probe" / "__init__.py").is_file()  # the carried wheels, installed
    assert (data / "wnids.txt").read_bytes() == (sample_dir / "wnids.txt").read_bytes()  # unpacked from the chunks
    assert sorted(p.name for p in out.iterdir()) == [
        "device_run.json", "device_run.log", "metrics_baseline.json", "metrics_trained.json", "results.tar.gz",
        "run_card.json", "train_summary.json"]
    card = json.loads((out / "run_card.json").read_text())
    assert card["command"].startswith("python -m ranking_lib all --profile gpu")
    assert card["config"]["device"] == "cpu" and card["config"]["max_classes"] == 4
    assert card["machine"]["faiss"] is None  # the exact search ran in torch
    if (root / "support" / "wordnet").is_dir():  # the carried WordNet, used
        assert card["metrics"]["trained"]["semantic"]["wordnet_dir"] == str(root / "support" / "wordnet")
        if HAVE_SAMPLE:  # real WordNet class ids (the demo data's are made up)
            assert card["metrics"]["trained"]["val"]["wup@30"] > 0
    for model in ("trained", "baseline"):
        assert 0 <= card["metrics"][model]["val"]["precision@30"] <= 100
    assert json.loads((out / "metrics_trained.json").read_text())["val"] == card["metrics"]["trained"]["val"]
    dev = json.loads((out / "device_run.json").read_text())
    assert dev["budget_minutes"] == 3.0 and dev["exit"] == {"all": 0, "figures": 0} and dev["html"] is False
    assert dev["phases_s"]["all"] > 0
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"figures/loss_curve.png", "figures/precision_bars.png", "figures/query_1.png", "figures/sample_grid.png",
            "config.json", "query_examples.json"} <= names
    assert "report.html" not in names and "no report.html" in r.stdout
    assert "run card written to" in (out / "device_run.log").read_text()


@pytest.mark.slow
def test_report_html_through_papermill(device_run):
    pytest.importorskip("papermill")
    r, _, run, _, _ = device_run
    assert r.returncode == 0
    card = (run / "run_card.json").read_bytes()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    p = subprocess.run([sys.executable, str(REPO / "report" / "make_figures.py"), "--run-dir", str(run), "--html"],
                       capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    html = (run / "report.html").read_text()
    assert "precision" in html.lower() and html.count("<img") >= 5
    assert (run / "run_card.json").read_bytes() == card  # the card stays the one `all` wrote


@pytest.mark.parametrize("args, says", [
    (["--minutes", "2", "--eval-minutes", "1.5"], "leaves 0.50 min"),
    (["--minutes", "soon"], "--minutes must be a number"),
    (["--minutes", "5", "--bogus"], "unknown argument --bogus"),
])
def test_bad_arguments_are_one_line(tmp_path, args, says):
    r = run_script([*args, "--out", str(tmp_path / "out")])
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and says in r.stderr


def test_incomplete_chunks_stop_before_the_run(sample_dir, tmp_path):
    packed = chunks.pack(sample_dir, tmp_path / "chunks", chunk_mib=2, show_progress=False)
    packed.chunks[-1].unlink()
    r = run_script(["--minutes", "4", "--eval-minutes", "1", "--data", str(tmp_path / "data" / sample_dir.name),
                    "--chunks", str(tmp_path / "chunks"), "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert r.returncode == 2 and "incomplete chunk set" in r.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "data" / sample_dir.name).exists()
