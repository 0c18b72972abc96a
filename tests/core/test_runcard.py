"""Run cards (`ranking_lib.core.runcard`) and ``verify-run`` (`ranking_lib.verify`) on a small real run."""

from __future__ import annotations

import json

import pytest

from conftest import SMALL_CLASSES
from ranking_lib.cli import main
from ranking_lib.core import runcard

FAST = ["--max-classes", str(SMALL_CLASSES), "--input-size", "64", "--embedding-dim", "16", "--num-triplets", "64", "--val-triplets", "200",
        "--steps", "2", "--batch-size", "8", "--train-eval-queries", "100", "--embed-batch-size", "500",
        "--near-dup-queries", "20", "--quiet"]


@pytest.fixture(scope="module")
def run(sample_dir, small_cache_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("card_run")
    assert main(["all", "--data-dir", str(sample_dir), "--cache-dir", str(small_cache_dir), "--run-dir", str(run),
                 *FAST]) == 0
    return run


def test_all_writes_a_small_card_with_everything(run):
    path = run / runcard.CARD_NAME
    assert path.stat().st_size < 16_000
    card = json.loads(path.read_text())
    assert card["command"].startswith("python -m ranking_lib all --data-dir") and "--steps 2" in card["command"]
    assert card["config"]["steps"] == 2 and card["config"]["run_dir"] == str(run)
    assert set(card["metrics"]) == {"trained", "baseline"} and "config" not in card["metrics"]["trained"]
    assert card["metrics"]["trained"]["val"] == {k: v for k, v in json.loads(
        (run / "metrics_trained.json").read_text())["val"].items()}
    assert card["train_summary"]["steps"] == 2
    assert {"prepare", "sample", "train", "embed_trained", "embed_baseline", "evaluate_trained"} <= set(card["phases"])
    assert card["wall_s"] == pytest.approx(sum(card["phases"].values()), abs=0.5)
    m = card["machine"]
    assert m["cores"] >= 1 and m["torch"] and isinstance(m["cpu_flags"], list) and "bf16_native" in m
    assert card["bf16"] is False  # the run did not ask for bf16
    assert set(card["git"]) == {"commit", "dirty"} and card["reconstructed"] is False


def test_verify_run_passes_on_the_run_and_fails_on_an_edited_card(run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["verify-run", str(run)]) == 0
    assert "verified:" in capsys.readouterr().out
    card = json.loads((run / runcard.CARD_NAME).read_text())
    card["metrics"]["trained"]["val"]["map@r"] += 0.02
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(card))
    assert main(["verify-run", str(run), "--card", str(edited)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained/val/map@r" in err[0] and "the card says" in err[0]
    # within a stated, wider tolerance the same card passes; the run dir was only read
    assert main(["verify-run", str(run), "--card", str(edited), "--tolerance", "0.05"]) == 0
    assert not list(run.glob("verify*")) and json.loads((run / runcard.CARD_NAME).read_text()) != card


def test_verify_run_says_when_the_machine_class_differs(run, tmp_path, capsys):
    card = json.loads((run / runcard.CARD_NAME).read_text())
    card["bf16"] = True
    other = tmp_path / "bf16.json"
    other.write_text(json.dumps(card))
    capsys.readouterr()
    assert main(["verify-run", str(run), "--card", str(other)]) == 0
    assert "may differ by rounding" in capsys.readouterr().out


def test_verify_run_one_line_errors(tmp_path, capsys):
    assert main(["verify-run", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run card not found" in err[0]
    (tmp_path / runcard.CARD_NAME).write_text("{not json")
    assert main(["verify-run", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_git_absent_gives_nulls(monkeypatch):
    monkeypatch.delenv("RANKING_GIT_COMMIT", raising=False)
    monkeypatch.setattr(runcard.shutil, "which", lambda name: None)
    assert runcard.git_state() == {"commit": None, "dirty": None}
    # a copied tree without .git names its commit; whether it differs is unknown
    monkeypatch.setenv("RANKING_GIT_COMMIT", "abc123")
    assert runcard.git_state() == {"commit": "abc123", "dirty": None}


def test_budget_check_sets_the_evaluation_estimate_beside_its_measured_time():
    summary = {"budget": {"budget_minutes": 85, "evaluation_s": 1200.0, "train_minutes": 50.0, "calibration_s": 20.0},
               "loop_s": 2990.0, "replans": [{"step": 500}, {"step": 1000}]}
    phases = {"01_data_prep": 300.0, "02_train": 3100.0, "03_precision_tables": 900.0, "04_query_examples": 60.0,
              "05_report": 30.0, "report": 20.0}
    check = runcard.budget_check(phases, summary)
    assert check == {"budget_s": 5100.0, "wall_s": 4410.0, "evaluation_estimate_s": 1200.0, "evaluation_s": 1010.0,
                     "training_planned_s": 3000.0, "training_loop_s": 3010.0, "replans": 2}
    assert runcard.budget_check(phases, {"budget": None}) is None  # a run of fixed steps
    card = runcard.build_card(".", command="x", phases=phases)
    assert "budget_check" not in card or card["budget_check"]["wall_s"] == 4410.0


def test_verify_run_checks_the_runs_metrics_files_too(run, tmp_path, capsys):
    """The report reads metrics_<model>.json: an edited one fails verify-run though the card is intact."""
    import shutil
    from pathlib import Path

    copy = Path(shutil.copytree(run, tmp_path / "run", symlinks=True))
    f = copy / "metrics_trained.json"
    m = json.loads(f.read_text())
    m["val"]["precision@30"] += 5
    f.write_text(json.dumps(m))
    capsys.readouterr()
    assert main(["verify-run", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {copy} does not match {f}: trained/val/precision@30 is "), err
    assert f"the file says {m['val']['precision@30']:.4f}" in err[0]
    assert json.loads(f.read_text()) == m  # only read


def test_benchmark_card_commands_name_paths_as_another_checkout_would(tmp_path):
    from ranking_lib.core.runcard import portable_arg

    repo = tmp_path / "project"
    assert portable_arg(str(tmp_path / "shared" / "sample"), repo) == "../shared/sample"
    assert portable_arg(str(repo / "data" / "x"), repo) == "data/x"
    assert portable_arg("/elsewhere/data", repo) == "/elsewhere/data"
    assert portable_arg("--steps", repo) == "--steps"
