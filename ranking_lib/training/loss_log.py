"""The training loss log (``loss_log.csv``: step, loss, lr, elapsed_s): rows kept on the device
between log steps and written in one host sync, cut back to a checkpoint's step on resume."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import torch

from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import write_text

HEADER = ["step", "loss", "lr", "elapsed_s"]


class LossLog:
    """``loss_log.csv`` of one run; `enabled` False (a rank other than 0) writes nothing."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.pending: list[tuple[int, torch.Tensor, float, float]] = []  # (step, loss on the device, lr, elapsed)
        self._file = None
        self._writer = None

    def keep_before(self, step: int) -> None:
        """Keep only the rows of steps before `step` (all of them go when step is 0)."""
        if not self.enabled:
            return
        rows = [HEADER]
        if step > 0 and self.path.is_file():
            with open(self.path, newline="") as f:
                old = list(csv.reader(f))
            rows += [r for r in old[1:] if r and int(r[0]) < step]
        out = io.StringIO()
        csv.writer(out).writerows(rows)
        write_text(self.path, out.getvalue())

    def last_loss(self) -> float | None:
        """The last row's loss (None: no rows)."""
        if not self.path.is_file():
            return None
        with open(self.path, newline="") as f:
            rows = [r for r in csv.reader(f)][1:]
        return float(rows[-1][1]) if rows else None

    def open(self) -> "LossLog":
        """Open for appending (``os.devnull`` when not enabled)."""
        self._file = open(self.path if self.enabled else os.devnull, "a", newline="")
        self._writer = csv.writer(self._file)
        return self

    def add(self, step: int, loss: torch.Tensor, lr: float, elapsed: float) -> None:
        """A step's row, its loss left on the device until `flush`."""
        self.pending.append((step, loss, lr, elapsed))

    def flush(self) -> float | None:
        """Write the pending rows (one host sync); their last loss (None: nothing pending). A
        non-finite loss is a one-line RankingError naming its step."""
        if not self.pending:
            return None
        values = torch.stack([p[1] for p in self.pending]).float().cpu().tolist()
        for (step, _, lr, elapsed), value in zip(self.pending, values):
            if not math.isfinite(value):
                self.pending.clear()
                self._file.flush()
                raise RankingError(f"loss became {value} at step {step}: lower the learning rate")
            self._writer.writerow([step, f"{value:.6f}", f"{lr:.6g}", f"{elapsed:.3f}"])
        self.pending.clear()
        self._file.flush()
        return values[-1]

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
