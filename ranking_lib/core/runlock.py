"""`RunDirLock`: one writer per run directory.

A process that writes into a run directory (sample, train, embed, evaluate, the notebook
runner) holds an exclusive ``fcntl.flock`` on ``<run_dir>/.lock``; a second writer gets one
line naming the holder (pid, host, command, start time). The kernel drops the lock when its
holder dies, ``kill -9`` included, so a lock is never stale.

The lock is re-entrant inside a process (``all`` runs several steps under one lock). A parent
that holds the lock for child processes (the notebook runner for its kernels) exports its
token in ``RANKING_RUN_LOCK_TOKEN``; a child whose token matches the holder's writes under the
parent's lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import time
from pathlib import Path

from ranking_lib.core.errors import RunDirBusyError
from ranking_lib.core.fileio import ensure_dir, sweep_stale_temps

LOCK_NAME = ".lock"
TOKEN_ENV = "RANKING_RUN_LOCK_TOKEN"

_held: dict[str, list] = {}  # realpath -> [fd, depth, token]


def read_holder(run_dir: str | Path) -> dict:
    """What the lock file says about its current (or last) holder; {} when unreadable."""
    try:
        info = json.loads((Path(run_dir) / LOCK_NAME).read_text() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(info: dict) -> str:
    if not info.get("pid"):
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info['pid']} on {info.get('host', '?')} ('{info.get('command', '?')}', since {since})"


class RunDirLock:
    """Exclusive lock on a run directory for the lifetime of a ``with`` block.

    Args:
        run_dir: the run directory (created if missing).
        command: what the holder does, shown to a second writer.
    """

    def __init__(self, run_dir: str | Path, command: str = "ranking_lib") -> None:
        self.run_dir = Path(run_dir)
        self.command = command
        self.token: str | None = None

    def __enter__(self) -> "RunDirLock":
        ensure_dir(self.run_dir, "run directory")
        key = os.path.realpath(self.run_dir)
        if key in _held:
            _held[key][1] += 1
            self.token = _held[key][2]
            return self
        path = self.run_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(self.run_dir)
            parent = os.environ.get(TOKEN_ENV)
            if parent and holder.get("token") == parent:  # our parent runner holds it for us
                _held[key] = [None, 1, parent]
                self.token = parent
                return self
            raise RunDirBusyError(
                f"run directory {self.run_dir} is in use by {_describe(holder)}; wait for it to "
                "finish or use another --run-dir") from None
        self.token = secrets.token_hex(8)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "started": time.time(), "token": self.token}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        _held[key] = [fd, 1, self.token]
        for d in (self.run_dir, self.run_dir / "checkpoints"):  # temp files of killed writers
            sweep_stale_temps(d)
        return self

    def __exit__(self, *exc) -> None:
        key = os.path.realpath(self.run_dir)
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            if entry[0] is not None:
                os.close(entry[0])  # releases the flock
