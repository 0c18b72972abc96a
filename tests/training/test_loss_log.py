"""`training.loss_log`: rows written in one sync, cut back on resume, a non-finite loss refused."""

import csv

import pytest
import torch

from ranking_lib.core.errors import RankingError
from ranking_lib.training.loss_log import HEADER, LossLog


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_rows_are_written_at_flush_and_cut_back_to_a_step(tmp_path):
    log = LossLog(tmp_path / "loss_log.csv")
    log.keep_before(0)
    assert _rows(log.path) == [HEADER] and log.last_loss() is None
    log.open()
    for step in range(5):
        log.add(step, torch.tensor(1.0 / (step + 1)), 0.01, step * 0.5)
    assert _rows(log.path) == [HEADER]  # nothing before the flush
    assert log.flush() == pytest.approx(0.2) and log.flush() is None  # nothing pending: None
    log.close()
    assert [r[0] for r in _rows(log.path)[1:]] == ["0", "1", "2", "3", "4"]
    assert log.last_loss() == pytest.approx(0.2)
    log.keep_before(3)  # a resume from step 3: rows 3 and 4 go
    assert [r[0] for r in _rows(log.path)[1:]] == ["0", "1", "2"] and log.last_loss() == pytest.approx(1 / 3)


def test_a_non_finite_loss_stops_at_its_step(tmp_path):
    log = LossLog(tmp_path / "loss_log.csv").open()
    log.add(0, torch.tensor(0.5), 0.01, 0.0)
    log.add(1, torch.tensor(float("nan")), 0.01, 0.1)
    with pytest.raises(RankingError, match="at step 1: lower the learning rate"):
        log.flush()
    log.close()
    assert [r[0] for r in _rows(log.path)] == ["0"] and not log.pending  # the rows before it kept


def test_a_rank_other_than_the_first_writes_nothing(tmp_path):
    log = LossLog(tmp_path / "loss_log.csv", enabled=False)
    log.keep_before(0)
    log.open().add(0, torch.tensor(0.5), 0.01, 0.0)
    assert log.flush() == pytest.approx(0.5)
    log.close()
    assert not log.path.exists()
