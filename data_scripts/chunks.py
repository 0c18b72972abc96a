"""A dataset folder carried as a few fixed-size chunks plus a manifest, and put back bit-exact.

A machine that receives files in limited portions (for example at most 64 MiB per transfer, from
a working tree) cannot take Tiny ImageNet's 215 MB of JPEGs at once. :func:`pack` reads every
regular file of the dataset folder in a fixed order (sorted relative paths; hidden files and, by
default, the unlabelled ``test/`` split left out) and writes their bytes, unchanged and back to
back, as one stream cut into chunks of ``chunk_bytes`` (the last one shorter)::

    <name>.000.chunk  <name>.001.chunk  ...  <name>.manifest.json

The manifest lists every chunk (name, size, SHA-256) and every file as ``[relative POSIX path,
size, SHA-256]``, in stream order (compact JSON: about 110 bytes a file, about 12 MB
for Tiny ImageNet's 110,000 images); a file may span two chunks. :func:`unpack` refuses, in one line and
before writing anything, a manifest that is not one, a missing, extra, short or damaged chunk,
then rebuilds the files in a temporary folder beside the destination, checks every file's
SHA-256 and renames the folder into place: the destination appears whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import (atomic_path, disk_full_error, ensure_dir, free_bytes, read_json, write_json,
                                     write_text)
from ranking_lib.core.progress import progress

FORMAT = "ranking-chunks"
FORMAT_VERSION = 1
MIB = 2**20
DEFAULT_CHUNK_MIB = 56
"""Under 60 MiB, so that one chunk and the working tree (about 2 MB) travel in one 64 MiB transfer."""
UNPACKED_MARK = ".unpacked.json"
FILE_FIELDS = ("path", "size", "sha256")
_READ = 4 * MIB


class ChunkError(RankingError):
    """A chunk set that cannot be unpacked: manifest, missing, extra or damaged chunks."""


@dataclass(frozen=True)
class Packed:
    manifest: Path
    chunks: list[Path]
    files: int
    total_bytes: int


def manifest_path(chunk_dir: str | Path, name: str) -> Path:
    return Path(chunk_dir) / f"{name}.manifest.json"


def chunk_name(name: str, index: int) -> str:
    return f"{name}.{index:03d}.chunk"


def _chunk_re(name: str) -> re.Pattern:
    return re.compile(re.escape(name) + r"\.\d{3,}\.chunk$")


def dataset_files(root: Path, *, include_test: bool = False) -> list[str]:
    """Relative POSIX paths of the regular files under `root`, sorted; hidden files and folders
    (``.ranking_cache``) and, unless `include_test`, the ``test/`` split are left out."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (include_test or rel_dir.parts or d != "test"))
        for f in filenames:
            if not f.startswith(".") and (Path(dirpath) / f).is_file():
                out.append((rel_dir / f).as_posix())
    return sorted(out)


class _ChunkWriter:
    """Writes a byte stream as consecutive chunk files (each atomically), hashing each one."""

    def __init__(self, out_dir: Path, name: str, chunk_bytes: int) -> None:
        self.out_dir, self.name, self.chunk_bytes = out_dir, name, chunk_bytes
        self.chunks: list[dict] = []
        self._ctx = self._fh = None
        self._hash = None
        self._size = 0

    def _open(self) -> None:
        path = self.out_dir / chunk_name(self.name, len(self.chunks))
        self._ctx = atomic_path(path)
        tmp = self._ctx.__enter__()
        self._fh = open(tmp, "wb")
        self._hash, self._size = hashlib.sha256(), 0
        self.chunks.append({"name": path.name})

    def _close(self, exc: BaseException | None = None) -> None:
        if self._fh is None:
            return
        self._fh.close()
        self.chunks[-1].update(size=self._size, sha256=self._hash.hexdigest())
        ctx, self._ctx, self._fh = self._ctx, None, None
        if exc is None:
            ctx.__exit__(None, None, None)
        else:
            ctx.__exit__(type(exc), exc, exc.__traceback__)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while len(view):
            if self._fh is None or self._size == self.chunk_bytes:
                self._close()
                self._open()
            take = min(len(view), self.chunk_bytes - self._size)
            self._fh.write(view[:take])
            self._hash.update(view[:take])
            self._size += take
            view = view[take:]

    def finish(self, exc: BaseException | None = None) -> list[dict]:
        self._close(exc)
        return self.chunks


def pack(data_dir: str | Path, out_dir: str | Path, *, chunk_mib: float = DEFAULT_CHUNK_MIB,
         name: str | None = None, include_test: bool = False, show_progress: bool = True) -> Packed:
    """Pack the files of `data_dir` into chunks of `chunk_mib` MiB and a manifest in `out_dir`;
    chunks of an earlier packing of the same name that this one does not use are removed."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ChunkError(f"dataset folder not found: {root}")
    if not chunk_mib > 0:
        raise ChunkError(f"chunk size must be positive (got {chunk_mib} MiB)")
    root = root.resolve()
    name = name or root.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ChunkError(f"chunk name {name!r} must be letters, digits, '.', '_' or '-'")
    rels = dataset_files(root, include_test=include_test)
    if not rels:
        raise ChunkError(f"no files to pack in {root}")
    out = ensure_dir(Path(out_dir).expanduser(), "chunk folder")
    writer = _ChunkWriter(out, name, max(1, int(chunk_mib * MIB)))
    files = []
    try:
        for rel in progress(rels, desc="packing", unit="file", enabled=show_progress):
            data = (root / rel).read_bytes()
            files.append([rel, len(data), hashlib.sha256(data).hexdigest()])
            writer.write(data)
    except BaseException as e:
        writer.finish(e)
        raise
    chunks = writer.finish()
    total = sum(f[1] for f in files)
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "name": name, "total_bytes": total,
                "chunk_bytes": writer.chunk_bytes, "chunk_count": len(chunks), "chunks": chunks,
                "file_count": len(files), "file_fields": list(FILE_FIELDS), "files": files}
    keep = {c["name"] for c in chunks}
    for stale in out.iterdir():
        if _chunk_re(name).fullmatch(stale.name) and stale.name not in keep:
            stale.unlink()
    path = write_text(manifest_path(out, name), json.dumps(manifest, separators=(",", ":")) + "\n")
    return Packed(path, [out / c["name"] for c in chunks], len(files), total)


# ---- unpack ---------------------------------------------------------------------------------
def _safe_rel(rel) -> str:
    p = PurePosixPath(rel) if isinstance(rel, str) else None
    if p is None or not rel or p.is_absolute() or any(part in ("", ".", "..") for part in rel.split("/")) \
            or "\\" in rel or "\0" in rel:
        raise ChunkError(f"manifest lists an unsafe file path: {rel!r}")
    return rel


def _sha256_hex(value, what: str) -> str:
    if not (isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value)):
        raise ChunkError(f"manifest: {what} has no valid sha256")
    return value


def _size(value, what: str) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise ChunkError(f"manifest: {what} has no valid size")
    return value


def read_manifest(path: str | Path) -> dict:
    """The manifest in `path`, its structure checked (sizes add up, names and paths safe)."""
    m = read_json(path, what="chunk manifest", hint=" (pack_chunks.py writes it beside the chunks)")
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ChunkError(f"{path} is not a chunk manifest (no \"format\": \"{FORMAT}\")")
    if m.get("version") != FORMAT_VERSION:
        raise ChunkError(f"{path}: manifest version {m.get('version')!r}, this script reads {FORMAT_VERSION}")
    chunks, files = m.get("chunks"), m.get("files")
    if not isinstance(chunks, list) or not isinstance(files, list) or not chunks:
        raise ChunkError(f"{path}: manifest has no chunk or file list")
    if m.get("chunk_count") != len(chunks) or m.get("file_count") != len(files):
        raise ChunkError(f"{path}: manifest counts disagree with its lists")
    name = m.get("name")
    pattern = _chunk_re(name) if isinstance(name, str) and name else None
    for i, c in enumerate(chunks):
        if not isinstance(c, dict) or pattern is None or c.get("name") != chunk_name(name, i):
            raise ChunkError(f"{path}: chunk {i} is not named {chunk_name(name or '?', i)}")
        _size(c.get("size"), f"chunk {c['name']}")
        _sha256_hex(c.get("sha256"), f"chunk {c['name']}")
    if m.get("file_fields") != list(FILE_FIELDS):
        raise ChunkError(f"{path}: manifest file entries are not {list(FILE_FIELDS)}")
    seen = set()
    for i, f in enumerate(files):
        if not (isinstance(f, list) and len(f) == len(FILE_FIELDS)):
            raise ChunkError(f"{path}: file entry {i} is not [path, size, sha256]")
        files[i] = f = dict(zip(FILE_FIELDS, f))
        rel = _safe_rel(f["path"])
        if rel in seen:
            raise ChunkError(f"{path}: file {rel} is listed twice")
        seen.add(rel)
        _size(f.get("size"), f"file {rel}")
        _sha256_hex(f.get("sha256"), f"file {rel}")
    total = sum(f["size"] for f in files)
    if total != m.get("total_bytes") or total != sum(c["size"] for c in chunks):
        raise ChunkError(f"{path}: file sizes ({total:,} bytes) do not add up to the chunks' "
                         f"({sum(c['size'] for c in chunks):,} bytes)")
    return m


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_READ), b""):
            h.update(block)
    return h.hexdigest()


def check_chunks(chunk_dir: str | Path, manifest: dict, *, show_progress: bool = True) -> list[Path]:
    """The chunk files in manifest order, after checking that none is missing, extra, of another
    size or damaged (SHA-256); a `ChunkError` naming the first problem otherwise."""
    chunk_dir = Path(chunk_dir)
    want = manifest["chunks"]
    n = len(want)
    missing = [c["name"] for c in want if not (chunk_dir / c["name"]).is_file()]
    if missing:
        raise ChunkError(f"incomplete chunk set in {chunk_dir}: {len(missing)} of {n} chunks missing "
                         f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); carry them and run again")
    names = {c["name"] for c in want}
    extra = sorted(p.name for p in chunk_dir.iterdir() if _chunk_re(manifest["name"]).fullmatch(p.name)
                   and p.name not in names)
    if extra:
        raise ChunkError(f"{chunk_dir} holds chunks the manifest does not list ({', '.join(extra[:4])}): "
                         "from another packing? remove them or pack again")
    for i, c in enumerate(want):
        size = (chunk_dir / c["name"]).stat().st_size
        if size != c["size"]:
            raise ChunkError(f"chunk {c['name']} ({i + 1} of {n}) has {size:,} bytes, the manifest says "
                             f"{c['size']:,}: damaged or cut short; carry it again")
    for i, c in enumerate(progress(want, desc="checking chunks", unit="chunk", enabled=show_progress)):
        if _hash_file(chunk_dir / c["name"]) != c["sha256"]:
            raise ChunkError(f"chunk {c['name']} ({i + 1} of {n}) is damaged (SHA-256 differs from the "
                             "manifest); carry it again")
    return [chunk_dir / c["name"] for c in want]


def _stream(paths: list[Path]) -> Iterator[bytes]:
    for p in paths:
        with open(p, "rb") as fh:
            yield from iter(lambda: fh.read(_READ), b"")


class _Reader:
    """Reads exact byte counts from the chunks' concatenated stream."""

    def __init__(self, paths: list[Path]) -> None:
        self._it = _stream(paths)
        self._buf = b""

    def read(self, n: int) -> bytes:
        parts, have = [], 0
        while have < n:
            if not self._buf:
                self._buf = next(self._it, b"")
                if not self._buf:
                    raise ChunkError("the chunks end before the manifest's last file")
            take = self._buf[:n - have]
            self._buf = self._buf[len(take):]
            parts.append(take)
            have += len(take)
        return b"".join(parts)


def _write_tree(tmp_root: Path, manifest: dict, chunks: list[Path], show_progress: bool) -> None:
    reader = _Reader(chunks)
    for f in progress(manifest["files"], desc="unpacking", unit="file", enabled=show_progress):
        data = reader.read(f["size"])
        if hashlib.sha256(data).hexdigest() != f["sha256"]:
            raise ChunkError(f"file {f['path']} unpacked with another SHA-256 than the manifest's")
        dest = tmp_root / f["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)


def unpack(chunk_dir: str | Path, out_dir: str | Path, *, name: str | None = None,
           manifest: str | Path | None = None, show_progress: bool = True) -> Path:
    """Check the chunk set in `chunk_dir` and rebuild the dataset as ``<out_dir>/<name>``
    (all at once, through a temporary folder); returns that path. A destination that an earlier
    unpack of the same manifest made is kept as it is."""
    chunk_dir = Path(chunk_dir).expanduser()
    mpath = Path(manifest) if manifest else _find_manifest(chunk_dir, name)
    m = read_manifest(mpath)
    mhash = _hash_file(mpath)
    target = Path(out_dir).expanduser() / m["name"]
    if target.exists() or target.is_symlink():
        mark = read_json(target / UNPACKED_MARK, what="unpack mark", missing_ok=True)
        if isinstance(mark, dict) and mark.get("manifest_sha256") == mhash:
            return target
        raise ChunkError(f"{target} already exists and was not unpacked from {mpath.name}; "
                         "remove it or choose another --out")
    chunks = check_chunks(chunk_dir, m, show_progress=show_progress)
    out = ensure_dir(Path(out_dir).expanduser(), "output folder")
    free = free_bytes(out)
    if free is not None and free < m["total_bytes"]:
        raise disk_full_error(target, m["total_bytes"])
    tmp = Path(tempfile.mkdtemp(prefix=f".{m['name']}.unpack-", dir=out))
    try:
        _write_tree(tmp / m["name"], m, chunks, show_progress)
        write_json(tmp / m["name"] / UNPACKED_MARK, {"manifest": mpath.name, "manifest_sha256": mhash,
                                                      "files": m["file_count"], "total_bytes": m["total_bytes"]})
        os.sync()
        os.replace(tmp / m["name"], target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _find_manifest(chunk_dir: Path, name: str | None) -> Path:
    if name:
        return manifest_path(chunk_dir, name)
    found = sorted(chunk_dir.glob("*.manifest.json")) if chunk_dir.is_dir() else []
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise ChunkError(f"{what} chunk manifest (*.manifest.json) in {chunk_dir}; pass --name or --manifest")
    return found[0]
