"""The library's one logger, ``ranking_lib``: its modules log, they never print.

What a run did and decided (a plan, a cache built, the budget's moves) is logged at INFO, what a
user should look at at WARNING. By default, as for any library, only warnings show (on stderr,
Python's last-resort handler); the command line, the notebooks and the scripts call
`show_messages` once, and then INFO lines go to stdout and warnings to stderr, as the bare
message (the lines read as they did when they were printed).
Progress bars and lines are the display's, not messages (`core.progress`).
"""

from __future__ import annotations

import logging
import sys

__all__ = ["ROOT", "show_messages"]

ROOT = "ranking_lib"


class _Console(logging.StreamHandler):
    """INFO to the stdout and warnings to the stderr of the moment a line is logged (a notebook
    kernel's, a redirected one), not of the moment the handler was made."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        super().emit(record)


def show_messages(level: int = logging.INFO) -> None:
    """Show the library's messages from `level` up (once; calling again changes only the level)."""
    log = logging.getLogger(ROOT)
    if not any(isinstance(h, _Console) for h in log.handlers):
        handler = _Console()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(level)
