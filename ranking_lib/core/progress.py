"""Progress of long loops: a tqdm bar where someone watches, one log line per phase step elsewhere.

Under papermill (and in CI logs, cron jobs, ``| tee``) a tqdm bar writes a new line on every
update. :func:`progress` gives a tqdm bar only when the output is interactive (a terminal, or a
notebook open in JupyterLab) and otherwise prints one line every `every_percent` % of the loop
(and at its end), with the rate and the elapsed time.

Interactive or not is decided by ``RANKING_PROGRESS`` when set (``bar`` / ``lines`` / ``off``;
the notebook runner sets ``lines`` for its kernels), else by whether stderr is a terminal or
the code runs in a Jupyter kernel with a front end.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
ENV = "RANKING_PROGRESS"


def mode() -> str:
    """``bar``, ``lines`` or ``off``."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("bar", "lines", "off"):
        return forced
    if "ipykernel" in sys.modules:  # a notebook: JupyterLab shows a widget bar
        return "bar"
    try:
        return "bar" if sys.stderr.isatty() else "lines"
    except (AttributeError, ValueError):
        return "lines"


class LineProgress:
    """A tqdm stand-in that prints one line per `every_percent` % (and at the end)."""

    def __init__(self, iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, every_percent: float = 10.0, stream=None) -> None:
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.unit, self.n, self.start_n = desc, unit, initial, initial
        self.every = max(1, int((self.total or 0) * every_percent / 100)) if self.total else 0
        self.next_report = initial + self.every if self.every else None
        self.t0 = time.perf_counter()
        self.stream = stream or sys.stderr
        self.postfix = ""
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.next_report is not None and self.n >= self.next_report and (self.total is None or self.n < self.total):
            self._line()
            self.next_report = self.n + self.every

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def _line(self) -> None:
        dt = time.perf_counter() - self.t0
        rate = (self.n - self.start_n) / dt if dt > 0 else 0.0
        of = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}{of} {self.unit}{pct} in {dt:.0f} s, {rate:.3g} {self.unit}/s{extra}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n > self.start_n:
                self._line()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Off(LineProgress):
    def _line(self) -> None:
        pass


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, enabled: bool = True, every_percent: float = 10.0):
    """tqdm-like progress over `iterable` (or updated by hand when None): see the module doc."""
    m = mode() if enabled else "off"
    if m == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=False)
    cls = _Off if m == "off" else LineProgress
    return cls(iterable, total=total, desc=desc, unit=unit, initial=initial, every_percent=every_percent)
