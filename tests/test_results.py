"""RESULTS.md and README tables are rendered from kept cards (``tools/results.py``)."""

from __future__ import annotations

import json

import pytest

from ranking_lib.core.errors import RankingError
from ranking_lib.reporting import plots
from tools import results


def test_committed_tables_equal_what_the_cards_render(capsys):
    assert results.main(["--check"]) == 0, capsys.readouterr().err


def test_every_marked_table_is_known_and_a_changed_number_is_rendered_back():
    for doc in results.DOCS:
        text = (results.REPO / doc).read_text(encoding="utf-8")
        assert set(results.marked(text)) <= set(results.TABLES)
    text = (results.REPO / "RESULTS.md").read_text(encoding="utf-8")
    assert "| **val** | 94.79 | 67.50 |" in text
    edited = text.replace("| **val** | 94.79 | 67.50 |", "| **val** | 94.79 | 68.50 |", 1)
    assert edited != text and results.render_text(edited) == text
    with pytest.raises(RankingError, match="unknown results table 'nope'"):
        results.render_text("<!-- results:nope -->\nx\n<!-- /results:nope -->\n")


def test_kept_cards_say_how_they_were_made():
    for path in sorted(results.RUNS.glob("*/card.json")):
        card = json.loads(path.read_text(encoding="utf-8"))
        assert card["command"], path
        assert "/work/" not in card["command"], path
        if card.get("reconstructed"):
            assert card.get("source"), path
    levers = json.loads((results.FIGURES / "levers.json").read_text(encoding="utf-8"))
    assert all("source" not in p and (results.RUNS / p["card"] / "card.json").is_file() for p in levers["points"])


def test_stitched_and_estimated_points_are_hollow_and_labelled():
    pts = results.levers_points()
    kinds = {p["card"]: p.get("kind") for p in pts}
    assert kinds["tune-192-bf16-12k"] == "stitched" and kinds["cpu-128-fp32-8k"] == "estimated"
    assert kinds["cpu-192-bf16-12k"] is None
    head = next(p for p in pts if p["card"] == "cpu-192-bf16-12k")
    assert head["precision@30"] == 67.67 and head["minutes"] == pytest.approx(3436 / 60)
    fig = plots.plot_precision_vs_minutes(pts)
    ax = fig.axes[0]
    hollow = [c for c in ax.collections if len(c.get_facecolors()) == 0 or c.get_facecolors()[0][3] == 0]
    assert len(hollow) == 2  # one per split
    assert any(t.get_text().endswith("(stitched)") for t in ax.texts)


def test_report_reference_section_names_other_runs_and_prints_commands_verbatim():
    from ranking_lib.reporting import ablation, report

    measured = ablation.load(results.FIGURES / "ablation.json")
    text = report.reference_commands(measured, report.measured_levers())
    assert text.count("```") == 2 and "```text\n" in text
    assert "/work/" not in text and "docs/runs/cpu-192-bf16-12k/card.json" in text
    assert all(len(line) <= 90 for line in text.splitlines())
    assert "--run-dir runs/ablation/ROW" in text and "#   course: --miner none" in text
    assert report.reference_intro().startswith("*Not this run.*")
    nb = json.loads((results.REPO / "notebooks" / "05_report.ipynb").read_text(encoding="utf-8"))
    heads = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
    assert heads.index("# Reference results from kept cards") > heads.index("# Improvements")
    ref = next(i for i, c in enumerate(nb["cells"]) if "".join(c["source"]) == "# Reference results from kept cards")
    before = "".join("".join(c["source"]) for c in nb["cells"][:ref])
    assert "levers" not in before and "ablation.table" not in before  # other runs only in that section
