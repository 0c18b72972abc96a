"""The index of a folder: one ``index.npz`` holding the embeddings, each file's path, size,
mtime and SHA-256, and a JSON ``meta`` (the folder, the network's identity, the skipped files).

The file is written atomically (`fileio.atomic_path`) and read with ``allow_pickle=False``; its
``embeddings`` / ``labels`` / ``paths`` keys are those of `EmbeddingIndex.save`, so
`EmbeddingIndex.load` reads it too.

While an index is built, its new embeddings go to ``shards/shard_NNNNN.npz`` beside it, each
written atomically once its images are embedded, with the network key it was made with. A run
killed half-way leaves whole shards only; the next run takes every file whose path, size and
mtime a shard holds from there (embedded once, never twice) and removes the shards once the
index is written.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import atomic_path, ensure_dir

FORMAT = "ranking_lib-collection/1"
INDEX_FILE = "index.npz"
SHARD_DIR = "shards"


@dataclass
class IndexData:
    """The rows of an index (sorted by path) and its meta object."""

    embeddings: np.ndarray  # float32 (N, d)
    paths: list[str]
    sizes: np.ndarray  # int64 (N,)
    mtimes: np.ndarray  # int64 (N,), ns
    sha256: list[str]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def row(self, path: str) -> int | None:
        if not hasattr(self, "_rows"):
            self._rows = {p: i for i, p in enumerate(self.paths)}
        return self._rows.get(path)


def _arrays(data: IndexData) -> dict[str, np.ndarray]:
    n = len(data.paths)
    emb = np.asarray(data.embeddings, dtype=np.float32)
    return {"embeddings": emb.reshape(n, -1) if n else emb.reshape(0, emb.shape[-1] if emb.ndim == 2 else 0),
            "labels": np.zeros(n, dtype=np.int64), "paths": np.array(data.paths, dtype=str),
            "sizes": np.asarray(data.sizes, dtype=np.int64), "mtimes": np.asarray(data.mtimes, dtype=np.int64),
            "sha256": np.array(data.sha256, dtype=str), "meta": np.array(json.dumps(data.meta))}


def save_npz(path: Path, data: IndexData) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **_arrays(data))
    return path


def load_npz(path: Path, what: str = "index") -> IndexData:
    """Read an index or shard file; a damaged one is a one-line RankingError naming it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            paths = [str(p) for p in z["paths"].tolist()]
            data = IndexData(z["embeddings"].astype(np.float32), paths, z["sizes"].astype(np.int64),
                             z["mtimes"].astype(np.int64), [str(s) for s in z["sha256"].tolist()], meta)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise RankingError(f"{what} file {path} cannot be read ({' '.join(str(e).split())}); delete it to "
                           "rebuild") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RankingError(f"{what} file {path} is not a ranking_lib collection index")
    n = len(paths)
    if data.embeddings.shape[0] != n or len(data.sizes) != n or len(data.mtimes) != n or len(data.sha256) != n:
        raise RankingError(f"{what} file {path} has rows of different lengths; delete it to rebuild")
    return data


def empty(meta: dict, dim: int = 0) -> IndexData:
    return IndexData(np.zeros((0, dim), np.float32), [], np.zeros(0, np.int64), np.zeros(0, np.int64), [],
                     {"format": FORMAT, **meta})


def concat(parts: list[IndexData], meta: dict) -> IndexData:
    """The rows of `parts` together, sorted by path, under `meta`."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return empty(meta)
    paths = [q for p in parts for q in p.paths]
    hashes = [h for p in parts for h in p.sha256]
    order = np.argsort(np.array(paths, dtype=str), kind="stable")
    return IndexData(np.concatenate([p.embeddings for p in parts])[order], [paths[i] for i in order],
                     np.concatenate([p.sizes for p in parts])[order], np.concatenate([p.mtimes for p in parts])[order],
                     [hashes[i] for i in order], {"format": FORMAT, **meta})


def select(data: IndexData, rows) -> IndexData:
    rows = np.asarray(rows, dtype=np.int64)
    return IndexData(data.embeddings[rows], [data.paths[i] for i in rows], data.sizes[rows], data.mtimes[rows],
                     [data.sha256[i] for i in rows], dict(data.meta))


class Shards:
    """The finished shards of an interrupted build in ``<index dir>/shards``."""

    def __init__(self, index_dir: Path) -> None:
        self.dir = Path(index_dir) / SHARD_DIR

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("shard_*.npz")) if self.dir.is_dir() else []

    def load(self, network_key: str) -> tuple[dict[tuple[str, int, int], tuple[IndexData, int]], dict]:
        """Rows of the shards made by `network_key`, by (path, size, mtime), and their skipped
        files by the same key (-> reason). Shards of another network or unreadable are ignored
        (they are removed with the rest once the index is written)."""
        rows, skipped = {}, {}
        for f in self.files():
            try:
                data = load_npz(f, "shard")
            except RankingError:
                continue
            if data.meta.get("network_key") != network_key:
                continue
            for i, p in enumerate(data.paths):
                rows[(p, int(data.sizes[i]), int(data.mtimes[i]))] = (data, i)
            for s in data.meta.get("skipped", []):
                skipped[(s["path"], int(s["size"]), int(s["mtime_ns"]))] = s["reason"]
        return rows, skipped

    def write(self, data: IndexData) -> Path:
        ensure_dir(self.dir, "shard folder")
        last = self.files()
        n = int(last[-1].stem.split("_")[1]) + 1 if last else 0
        return save_npz(self.dir / f"shard_{n:05d}.npz", data)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
