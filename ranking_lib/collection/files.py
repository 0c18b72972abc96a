"""The files of a folder of images: which ones count, what identifies each, how one is read.

`walk_images` lists every file with an image suffix under a folder, recursively, in sorted
order, with its size and modification time (nanoseconds); hidden files and folders (a leading
dot) are left out and symbolic links to folders are not followed, so a folder cannot be
walked twice. A file that cannot even be stat'ed (a symlink loop, a dangling link) is a
`Skipped` entry, never an exception. `read_image` decodes one file the way the training data
was decoded (`data.decode.load_image_rgb`: the first frame of a GIF, any mode to RGB, the
decompression-bomb guard, a bilinear resize to the dataset's image size); any failure is a
reason string for the skipped list.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ranking_lib.core.errors import RankingError
from ranking_lib.data import decode

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
FORMATS = "JPEG, PNG, WebP, BMP, TIFF, GIF"


@dataclass(frozen=True)
class FileRecord:
    """One image file: its POSIX path relative to the folder, size in bytes, mtime in ns."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skipped:
    """A file left out of the index and why (one line); with its size and mtime when it could
    be read from the disk but not decoded (then not tried again until one of them changes)."""

    path: str
    reason: str
    size: int | None = None
    mtime_ns: int | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason, "size": self.size, "mtime_ns": self.mtime_ns}

    @classmethod
    def from_dict(cls, d: dict) -> "Skipped":
        return cls(str(d["path"]), str(d["reason"]), d.get("size"), d.get("mtime_ns"))

    def same_file(self, f: FileRecord) -> bool:
        return self.size == f.size and self.mtime_ns == f.mtime_ns


@dataclass
class Walk:
    files: list[FileRecord]
    skipped: list[Skipped]
    ignored: int  # files without an image suffix


def walk_images(root: str | Path) -> Walk:
    """Every image file under `root` (see the module doc), sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise RankingError(f"image folder {root} {what}")
    files, skipped, ignored = [], [], 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            if full.suffix.lower() not in IMAGE_SUFFIXES:
                ignored += 1
                continue
            try:
                st = full.stat()
            except OSError as e:
                reason = "a symlink loop" if e.errno == errno.ELOOP else (
                    "a dangling symlink" if full.is_symlink() else e.strerror or type(e).__name__)
                skipped.append(Skipped(rel, reason))
                continue
            if not stat.S_ISREG(st.st_mode):
                skipped.append(Skipped(rel, "not a regular file"))
                continue
            files.append(FileRecord(rel, int(st.st_size), int(st.st_mtime_ns)))
    files.sort(key=lambda f: f.path)
    return Walk(files, skipped, ignored)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_image(path: str | Path, size: int) -> tuple[np.ndarray | None, str | None]:
    """``(uint8 (size, size, 3) RGB array, None)``, or ``(None, reason)`` for a file that cannot
    be read: truncated, not an image, too many pixels, gone, ..."""
    try:
        return decode.load_image_rgb(path, size), None
    except RankingError as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - a file's content never stops the walk
        return None, f"cannot decode {path} ({type(e).__name__}: {' '.join(str(e).split())})"
