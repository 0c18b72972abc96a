"""Atomic, disk-full-aware file writes: everything the pipeline saves appears whole or not at all.

* :func:`atomic_path` yields a temporary path beside the target; on success the temp file is
  flushed to disk and renamed over the target, on any failure (or exception) it is removed and
  the target keeps its previous content.
* Temporary names carry the writer's host and process id (``.last.pt.host.1234.k3j9.tmp.pt``).
  A writer killed with ``kill -9`` cannot remove its temp file, so every later write into the
  same directory sweeps the temp files whose process is gone (:func:`sweep_stale_temps`).
* A full disk is reported as one :class:`DiskFullError` line naming the file, the bytes needed
  (when known) and the bytes free, never as a bus error or a library traceback. Large
  memory-mapped outputs reserve their blocks up front (:func:`reserve`): writing into a sparse
  memory map on a full filesystem would otherwise kill the process with SIGBUS.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from ranking_lib.core.errors import DiskFullError, RankingError

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"
# .<name>.<host>.<pid>.<token>.tmp<suffix>
_TEMP_RE = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[a-z0-9]{8}\.tmp(\.[^.]*)?$")
# temp files of earlier versions: .<name>.<8 random chars>.tmp<suffix> (mkstemp), no owner
_LEGACY_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[^.]*)?$")
LEGACY_TEMP_AGE_S = 3600.0
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def free_bytes(directory: str | Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc`, or an exception it was raised from, is ENOSPC/EDQUOT (torch wraps the
    OSError of a failed write in a RuntimeError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(path: str | Path, need: int | None = None) -> DiskFullError:
    path = Path(path)
    free = free_bytes(path.parent if path.parent.exists() else Path.cwd())
    parts = [f"no space left on the device to write {path}"]
    if need is not None:
        parts.append(f"needs {_mb(need)}")
    if free is not None:
        parts.append(f"{_mb(free)} free")
    return DiskFullError(": ".join(parts[:1]) + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")
                         + "; free some space or point the output elsewhere")


def ensure_dir(path: str | Path, what: str = "directory") -> Path:
    """Create `path` (and parents); one-line error when a file is in the way or it cannot be made."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RankingError(f"{what} {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RankingError(f"{what} {path}: a parent of it is a file, not a directory") from None
    except NotADirectoryError:
        raise RankingError(f"{what} {path}: a parent of it is a file, not a directory") from None
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(path) from None
        raise RankingError(f"cannot create {what} {path} ({e.strerror})") from None
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(directory: str | Path) -> list[Path]:
    """Remove temp files of dead writers in `directory` (this host's, by pid; legacy unowned
    ones after an hour untouched). Returns what was removed. Never raises."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        if not e.name.startswith(".") or ".tmp" not in e.name:
            continue
        m = _TEMP_RE.match(e.name)
        if m:
            stale = m["host"] == _HOST and not _pid_alive(int(m["pid"]))
        elif _LEGACY_TEMP_RE.match(e.name):
            try:
                stale = now - e.stat(follow_symlinks=False).st_mtime > LEGACY_TEMP_AGE_S
            except OSError:
                stale = False
        else:
            continue
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(e.path)
                removed.append(Path(e.path))
    return removed


def temp_path_for(path: Path) -> Path:
    return path.parent / f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}"


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if not directory:
            raise
        if e.errno not in (errno.EINVAL, errno.EBADF):  # some filesystems cannot fsync a dir
            raise
    finally:
        os.close(fd)


def reserve(path: str | Path, size: int | None = None, target: str | Path | None = None) -> None:
    """Allocate the blocks of `path` (its current size, or `size`) now, so that later writes,
    memory-mapped ones included, cannot fail for lack of space: a DiskFullError naming `target`
    (default `path`) here instead."""
    path = Path(path)
    size = path.stat().st_size if size is None else size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, max(size, 1))
    except OSError as e:
        if e.errno in _DISK_FULL_ERRNOS:
            raise disk_full_error(target or path, size) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # filesystem without fallocate
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, need: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` (``os.replace``, after
    an fsync), on any error it is removed and `path` keeps its old content.

    The temporary name keeps `path`'s suffix, so ``np.save`` and friends do not append another.
    Parent directories are created; stale temp files of dead writers there are removed.
    `need` (bytes, when known) is reserved before the caller writes and named in the error
    when the disk is full.
    """
    path = Path(path)
    ensure_dir(path.parent)
    sweep_stale_temps(path.parent)
    tmp = temp_path_for(path)
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask() | 0o200)
            os.close(fd)
            if need is not None:
                reserve(tmp, need, target=path)
            yield tmp
            _fsync(tmp)
            os.replace(tmp, path)
            _fsync(path.parent, directory=True)
        except DiskFullError:
            raise
        except Exception as e:
            if is_disk_full(e):
                raise disk_full_error(path, need) from None
            raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def content_crc32(arr, chunk_bytes: int = 64 * 2**20) -> int:
    """CRC-32 of an array's bytes (C order), read in chunks so a memory map is never copied whole."""
    import zlib

    import numpy as np

    flat = arr.reshape(len(arr), -1) if arr.ndim > 1 else arr.reshape(-1, 1)
    per_row = max(1, flat[0].nbytes if len(flat) else 1)
    step = max(1, chunk_bytes // per_row)
    crc = 0
    for i in range(0, len(flat), step):
        crc = zlib.crc32(np.ascontiguousarray(flat[i:i + step]).data, crc)
    return crc


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write `data` to `path` (the space is reserved first)."""
    with atomic_path(path, need=len(data)) as tmp:
        with open(tmp, "r+b") as fh:
            fh.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write `obj` as JSON; NaN/inf are refused rather than written as invalid JSON."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    except ValueError as e:
        raise RankingError(f"refusing to write {path}: {e}") from None
    return write_text(path, text)


def read_json(path: str | Path, what: str = "file", hint: str = "", missing_ok: bool = False) -> Any:
    """The JSON value in `path`. A missing file is ``None`` with `missing_ok`, else the one-line
    ``RankingError`` "<what> <path> not found<hint>"; an unreadable or invalid one is
    "<what> <path> is not valid JSON (<reason>)". `hint` says how to make the file, e.g.
    ``" (run the 'evaluate' step)"``."""
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return None
        raise RankingError(f"{what} {path} not found{hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise RankingError(f"{what} {path} is not valid JSON ({reason})") from None
