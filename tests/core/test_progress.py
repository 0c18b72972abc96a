"""Progress output: a bar where someone watches, a line per 10 % elsewhere (papermill, logs)."""

import io

import pytest

from ranking_lib.core import progress


def test_lines_mode_prints_one_line_per_tenth_and_at_the_end(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "lines")
    bar = progress.progress(range(100), desc="train", unit="step")
    assert isinstance(bar, progress.LineProgress)
    assert list(bar) == list(range(100))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 10, lines  # 10 %, 20 %, ..., 90 % and the end
    assert lines[0].startswith("train: 10/100 step (10%) in ") and lines[-1].startswith("train: 100/100 step (100%)")


def test_resumed_loop_counts_from_initial_and_shows_postfix():
    out = io.StringIO()
    bar = progress.LineProgress(range(50, 100), total=100, initial=50, desc="train", unit="step", stream=out)
    for i in bar:
        if i == 70:
            bar.set_postfix(loss="0.1234")
    lines = out.getvalue().strip().splitlines()
    assert lines[0].startswith("train: 60/100") and "loss=0.1234" in lines[-1] and "100/100" in lines[-1]
    assert len(lines) == 5


@pytest.mark.parametrize("value", ["bar", "off", "lines"])
def test_mode_is_forced_by_the_environment(monkeypatch, value):
    from tqdm import tqdm

    monkeypatch.setenv(progress.ENV, value)
    bar = progress.progress(range(3))
    assert isinstance(bar, tqdm) == (value == "bar")
    assert isinstance(bar, progress.LineProgress) == (value != "bar")
    assert (type(bar) is progress._Off) == (value == "off")
    list(bar)


def test_disabled_prints_nothing(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "lines")
    list(progress.progress(range(20), enabled=False))
    assert capsys.readouterr().err == ""
