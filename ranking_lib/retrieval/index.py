"""Euclidean nearest-neighbour search over a fixed set of embeddings.

`EmbeddingIndex` holds a database of embeddings (with their labels and, optionally, image paths)
and answers top-k (nearest) and bottom-k (farthest) queries by Euclidean distance.

Backends
--------
* ``"torch"``: exact. Queries are processed in chunks of ``chunk_size``; for each chunk the squared
  distances ``||q||^2 - 2 q.x + ||x||^2`` are computed with one float32 matmul (memory
  ``~chunk_size x N`` floats, never ``Q x N``), ``torch.topk`` selects a few more candidates than
  asked for, their distances are recomputed exactly as ``sqrt(sum((q - x)^2))`` and the final order
  is by (exact distance, database index), so ties go to the lower index.
* ``"faiss"``: exact, ``faiss.IndexFlatL2``.
* ``"faiss-ivf"`` / ``"faiss-ivfpq"`` / ``"faiss-hnsw"``: approximate FAISS indexes
  (``IndexIVFFlat`` with ``nlist`` / ``nprobe``; ``IndexIVFPQ``, the same plus ``pq_m`` bytes per
  vector, whose ``refine`` x k candidates are re-ranked by exact distance; ``IndexHNSWFlat`` with
  ``hnsw_m`` / ``ef_search`` / ``ef_construction``). For databases far beyond memory (IVF-PQ
  codes without the float vectors, sharded with ``faiss.IndexShards``) see
  ``benchmarks/bench_search_scale.py`` and RESULTS.md; this class keeps the float vectors for the
  exact distances it returns.
* ``"auto"``: ``"faiss"`` when FAISS can be imported, else ``"torch"``.

For every FAISS backend the returned distances are recomputed exactly for the returned ids (so they
equal the torch backend's) and results are re-sorted by (exact distance, index). ``bottomk`` always
uses the torch path (FAISS has no farthest-neighbour search for L2).
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import atomic_path

BACKENDS = ("auto", "torch", "faiss", "faiss-ivf", "faiss-ivfpq", "faiss-hnsw")
IVF_BACKENDS = ("faiss-ivf", "faiss-ivfpq")
NPZ_KEYS = ("embeddings", "labels", "paths")


def _import_faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss_gpus(faiss) -> int:
    """GPUs FAISS can use (0 for the CPU-only faiss-cpu wheel)."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def default_nlist(n: int) -> int:
    """IVF lists for n vectors: ~4 sqrt(n), with at least 39 training points per list."""
    return int(max(1, min(4 * math.sqrt(n), n // 39)))


def default_pq_m(d: int) -> int:
    """IVF-PQ sub-quantizers for d dimensions: the largest divisor of d up to d / 4 (so each
    sub-quantizer codes at least 4 dimensions in one byte)."""
    return max(m for m in range(1, max(1, d // 4) + 1) if d % m == 0)


def faiss_available() -> bool:
    """True when the ``faiss`` module can be imported."""
    return _import_faiss() is not None


class EmbeddingIndex:
    """Exact (or, with ``faiss-ivf``/``faiss-hnsw``, approximate) Euclidean k-NN over embeddings.

    Args:
        embeddings: (N, d) array, converted to contiguous float32; must be finite, N >= 1.
        labels: (N,) integer class labels, stored as int64.
        paths: optional list of N image paths (stored as given, ``None`` stays ``None``).
        backend: one of ``BACKENDS`` (see the module docstring).
        chunk_size: number of queries processed at once (bounds memory to ~chunk_size x N floats).
        nlist, nprobe: IVF parameters (``faiss-ivf``, ``faiss-ivfpq``); nlist defaults to
            ``default_nlist(N)``.
        pq_m: IVF-PQ bytes per vector (sub-quantizers); must divide d; default ``default_pq_m(d)``.
        refine: IVF-PQ candidates per result (refine x k are re-ranked by exact distance).
        hnsw_m, ef_search, ef_construction: HNSW parameters (``faiss-hnsw``).
    """

    def __init__(
        self,
        embeddings,
        labels,
        paths=None,
        backend: str = "auto",
        chunk_size: int = 4096,
        *,
        nlist: int | None = None,
        nprobe: int = 32,
        pq_m: int | None = None,
        refine: int = 4,
        hnsw_m: int = 32,
        ef_search: int = 128,
        ef_construction: int = 80,
    ) -> None:
        if isinstance(embeddings, torch.Tensor):
            embeddings = embeddings.detach().cpu().numpy()
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        emb = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
        lab = np.asarray(labels)
        if emb.ndim != 2:
            raise RankingError(
                f"embeddings must be a 2-D (N, d) array (got shape {emb.shape})"
            )
        if emb.shape[0] == 0 or emb.shape[1] == 0:
            raise RankingError(f"embeddings must be non-empty (got shape {emb.shape})")
        if lab.ndim != 1:
            raise RankingError(f"labels must be a 1-D array (got shape {lab.shape})")
        if len(lab) != len(emb):
            raise RankingError(
                f"embedding file has {len(emb)} embeddings but {len(lab)} labels (they must match)"
            )
        if lab.dtype.kind not in "iu":
            if (
                lab.dtype.kind == "f"
                and np.all(np.isfinite(lab))
                and np.all(lab == np.round(lab))
            ):
                pass
            else:
                raise RankingError(f"labels must be integers (got dtype {lab.dtype})")
        if not np.all(np.isfinite(emb)):
            bad = int(np.flatnonzero(~np.isfinite(emb).all(axis=1))[0])
            raise RankingError(
                f"embeddings contain NaN or Inf values (first bad row {bad})"
            )
        if paths is not None:
            paths = [str(p) for p in paths]
            if len(paths) != len(emb):
                raise RankingError(
                    f"embedding file has {len(emb)} embeddings but {len(paths)} paths (they must match)"
                )
        if backend not in BACKENDS:
            raise RankingError(
                f"unknown index backend {backend!r}; choose one of {', '.join(BACKENDS)}"
            )
        if int(chunk_size) < 1:
            raise RankingError(f"chunk_size must be >= 1 (got {chunk_size})")

        if not emb.flags.writeable:  # torch.from_numpy warns on read-only buffers
            emb = emb.copy()
        self.embeddings = emb
        self.labels = lab.astype(np.int64)
        self.paths = paths
        self.chunk_size = int(chunk_size)
        self.requested_backend = backend
        if backend == "auto":
            backend = "faiss" if faiss_available() else "torch"
        elif backend.startswith("faiss") and not faiss_available():
            raise RankingError(
                f"index backend {backend!r} needs faiss (pip install faiss-cpu)"
            )
        for name, value, low in (("nlist", nlist, 1), ("nprobe", nprobe, 1), ("pq_m", pq_m, 1),
                                 ("refine", refine, 1), ("hnsw_m", hnsw_m, 2), ("ef_search", ef_search, 1),
                                 ("ef_construction", ef_construction, 1)):
            if value is not None and int(value) < low:
                raise RankingError(f"index {name} must be >= {low} (got {value})")
        if backend == "faiss-ivfpq" and pq_m is not None and emb.shape[1] % int(pq_m):
            raise RankingError(
                f"index pq_m={pq_m} must divide the embedding size {emb.shape[1]} "
                f"(e.g. {default_pq_m(emb.shape[1])})"
            )
        self.backend = backend
        self.nlist = nlist
        self.pq_m = None if pq_m is None else int(pq_m)
        self.refine = int(refine)
        self.nprobe = int(nprobe)
        self.hnsw_m = int(hnsw_m)
        self.ef_search = int(ef_search)
        self.ef_construction = int(ef_construction)

        self._x = torch.from_numpy(self.embeddings)  # shares memory
        self._xx = torch.einsum("ij,ij->i", self._x, self._x)  # ||x||^2
        self._faiss_index = None
        self._faiss_quantizer = None

    # ------------------------------------------------------------------ basic properties
    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def __repr__(self) -> str:
        return (
            f"EmbeddingIndex(n={len(self)}, dim={self.dim}, backend={self.backend!r})"
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write ``embeddings`` (float32 N x d), ``labels`` (int64 N), ``paths`` (str, N or 0 when
        there are no paths) to an ``.npz`` file, atomically (temporary file + ``os.replace``)."""
        path = Path(path)
        paths = np.array(self.paths if self.paths is not None else [], dtype=str)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, embeddings=self.embeddings, labels=self.labels, paths=paths)
        return path

    @classmethod
    def load(cls, path, backend: str = "auto", **kwargs) -> EmbeddingIndex:
        """Read an index written by :meth:`save`. Problems raise a one-line ``RankingError``."""
        path = Path(path)
        if not path.is_file():
            raise RankingError(f"embedding file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in NPZ_KEYS if k not in z.files]
                if missing:
                    raise RankingError(
                        f"embedding file {path} lacks key(s) {', '.join(missing)} "
                        f"(expected {', '.join(NPZ_KEYS)})"
                    )
                emb, lab, paths = z["embeddings"], z["labels"], z["paths"]
        except RankingError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise RankingError(
                f"embedding file {path} cannot be read: {exc}".replace("\n", " ")
            ) from None
        path_list = None if paths.size == 0 else [str(p) for p in paths.tolist()]
        try:
            return cls(emb, lab, path_list, backend=backend, **kwargs)
        except RankingError as exc:
            raise RankingError(f"{path}: {exc}") from None

    # ------------------------------------------------------------------ queries
    def _prepare(self, queries, k, exclude, name):
        if isinstance(queries, torch.Tensor):
            queries = queries.detach().cpu().numpy()
        q = np.asarray(queries, dtype=np.float32)
        single = q.ndim == 1
        if single:
            q = q[None, :]
        if q.ndim != 2:
            raise RankingError(
                f"queries must be (d,) or (Q, d) (got shape {np.shape(queries)})"
            )
        if q.shape[1] != self.dim:
            raise RankingError(
                f"query dimension {q.shape[1]} does not match the index dimension {self.dim}"
            )
        if not np.all(np.isfinite(q)):
            raise RankingError("queries contain NaN or Inf values")
        q = np.ascontiguousarray(q)
        if exclude is not None:
            if isinstance(exclude, torch.Tensor):
                exclude = exclude.detach().cpu().numpy()
            exclude = np.atleast_1d(np.asarray(exclude))
            if exclude.dtype.kind not in "iu":
                raise RankingError(
                    f"exclude must hold integer database indices (got {exclude.dtype})"
                )
            exclude = exclude.astype(np.int64)
            if exclude.shape != (len(q),):
                raise RankingError(
                    f"exclude must have one index per query ({len(q)}), got shape {exclude.shape}"
                )
            if len(exclude) and (exclude.min() < 0 or exclude.max() >= len(self)):
                raise RankingError(f"exclude indices must be in [0, {len(self) - 1}]")
        kmax = len(self) - (1 if exclude is not None else 0)
        if (
            isinstance(k, bool)
            or not isinstance(k, (int, np.integer))
            or not 1 <= k <= kmax
        ):
            extra = " minus the excluded item" if exclude is not None else ""
            raise RankingError(
                f"{name}: k={k} must be between 1 and {kmax} (index size{extra})"
            )
        return q, int(k), exclude, single

    def topk(self, queries, k: int, exclude=None):
        """The k nearest database items of each query.

        Args:
            queries: (d,) or (Q, d).
            k: 1 <= k <= len(index) (minus 1 when ``exclude`` is given).
            exclude: optional (Q,) int array; ``exclude[i]`` is dropped from query i's result
                (e.g. the query's own index when the queries are database items).

        Returns:
            ``(indices int64, distances float32)``, each (Q, k) (or (k,) for a 1-D query), sorted by
            ascending exact Euclidean distance, ties by ascending index.
        """
        q, k, exclude, single = self._prepare(queries, k, exclude, "topk")
        if self.backend == "torch":
            idx, dist = self._torch_search(q, k, exclude, largest=False)
        else:
            idx, dist = self._faiss_search(q, k, exclude)
        return (idx[0], dist[0]) if single else (idx, dist)

    def bottomk(self, queries, k: int, exclude=None):
        """The k farthest database items of each query, sorted by descending exact distance (ties
        by ascending index). Same arguments and conventions as :meth:`topk`; always uses the torch
        path whatever the backend."""
        q, k, exclude, single = self._prepare(queries, k, exclude, "bottomk")
        idx, dist = self._torch_search(q, k, exclude, largest=True)
        return (idx[0], dist[0]) if single else (idx, dist)

    # ------------------------------------------------------------------ torch path
    def _exact_sorted(self, q, cand, k, largest, bad=None):
        """Exact distances of candidate ids ``cand`` (B, C) for queries ``q`` (B, d); returns the
        best k by (exact distance, index) as numpy arrays. Entries flagged in ``bad`` (B, C) are
        pushed to the end.

        Plain numpy (single-threaded): right after a FAISS search, FAISS's own OpenMP threads are
        still spinning, and a multi-threaded re-rank would compete with them for the cores."""
        q = np.asarray(q, dtype=np.float32)
        cand = np.asarray(cand, dtype=np.int64)
        n_sub = max(1, (64 * 1024 * 1024) // max(1, cand.shape[1] * self.dim * 4))  # ~64 MB gathers
        dists = np.empty(cand.shape, dtype=np.float32)
        for s in range(0, cand.shape[0], n_sub):
            diff = self.embeddings[cand[s : s + n_sub]]
            diff -= q[s : s + n_sub, None, :]
            np.sqrt(np.einsum("bcd,bcd->bc", diff, diff), out=dists[s : s + n_sub])
        if bad is not None:
            dists[np.asarray(bad)] = -math.inf if largest else math.inf
        # sort by index first, then stable sort by distance -> ties resolved by lower index
        order = np.argsort(cand, axis=1, kind="stable")
        cand = np.take_along_axis(cand, order, 1)
        dists = np.take_along_axis(dists, order, 1)
        order = np.argsort(-dists if largest else dists, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(cand, order, 1), np.take_along_axis(dists, order, 1)

    def _torch_search(self, q, k, exclude, largest):
        n = len(self)
        # a few extra candidates guard against float32 rounding in the matmul expansion
        n_cand = min(n, k + max(8, k // 4) + (1 if exclude is not None else 0))
        out_idx = np.empty((len(q), k), dtype=np.int64)
        out_dist = np.empty((len(q), k), dtype=np.float32)
        with torch.no_grad():
            for s in range(0, len(q), self.chunk_size):
                q_t = torch.from_numpy(q[s : s + self.chunk_size])
                d2 = torch.addmm(
                    self._xx.unsqueeze(0), q_t, self._x.T, beta=1.0, alpha=-2.0
                )
                d2.add_(torch.einsum("ij,ij->i", q_t, q_t).unsqueeze(1))
                ex_t = None
                if exclude is not None:
                    ex_t = torch.from_numpy(exclude[s : s + self.chunk_size])
                    d2.scatter_(1, ex_t[:, None], -math.inf if largest else math.inf)
                cand = torch.topk(
                    d2, n_cand, dim=1, largest=largest, sorted=False
                ).indices
                del d2
                bad = None if ex_t is None else (cand == ex_t[:, None]).numpy()
                idx, dist = self._exact_sorted(q[s : s + self.chunk_size], cand.numpy(), k, largest, bad)
                out_idx[s : s + len(q_t)] = idx
                out_dist[s : s + len(q_t)] = dist
        return out_idx, out_dist

    # ------------------------------------------------------------------ faiss path
    def _build_faiss(self):
        if self._faiss_index is not None:
            return self._faiss_index
        faiss = _import_faiss()
        n, d = self.embeddings.shape
        if self.backend == "faiss":
            index = faiss.IndexFlatL2(d)
        elif self.backend in IVF_BACKENDS:
            nlist = max(1, min(int(self.nlist or default_nlist(n)), n))
            quantizer = faiss.IndexFlatL2(d)
            if self.backend == "faiss-ivf":
                index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
            else:  # 8-bit codes (fewer bits when there are fewer than 256 training vectors)
                nbits = max(1, min(8, int(math.log2(n))))
                index = faiss.IndexIVFPQ(quantizer, d, nlist, self.pq_m or default_pq_m(d), nbits)
            index.train(self.embeddings)
            index.nprobe = max(1, min(self.nprobe, nlist))
            self._faiss_quantizer = quantizer  # keep the quantizer alive
        elif self.backend == "faiss-hnsw":
            index = faiss.IndexHNSWFlat(d, self.hnsw_m)
            index.hnsw.efConstruction = self.ef_construction
        else:  # pragma: no cover - guarded in __init__
            raise RankingError(f"unknown index backend {self.backend!r}")
        index.add(self.embeddings)
        if self.backend in ("faiss", "faiss-ivf") and _faiss_gpus(faiss):
            # FAISS built with CUDA and a GPU present: search there (flat and IVF). IVF-PQ stays on
            # the CPU (GPU IVF-PQ accepts only some code sizes) and so does HNSW (CPU-only).
            # Never run here: no session of this project had a GPU.
            self._faiss_gpu = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._faiss_gpu, 0, index)
        self._faiss_index = index
        return index

    def _faiss_search(self, q, k, exclude):
        index = self._build_faiss()
        if self.backend == "faiss-hnsw":
            index.hnsw.efSearch = max(self.ef_search, k + 1)
        # exact search: a few extra candidates guard against rounding in faiss's squared distances
        # IVF-PQ: its distances are approximate, so refine x k candidates are re-ranked exactly
        margin = {"faiss": max(8, k // 4), "faiss-ivfpq": (self.refine - 1) * k}.get(self.backend, 0)
        kk = min(len(self), k + margin + (1 if exclude is not None else 0))
        out_idx = np.empty((len(q), k), dtype=np.int64)
        out_dist = np.empty((len(q), k), dtype=np.float32)
        for s in range(0, len(q), self.chunk_size):
            qc = q[s : s + self.chunk_size]
            _, ids = index.search(qc, kk)
            ids = np.asarray(ids, dtype=np.int64)
            missing = ids < 0  # approximate indexes may return fewer than kk results
            ids[missing] = 0
            if exclude is not None:
                missing |= ids == exclude[s : s + self.chunk_size, None]
            idx, dist = self._exact_sorted(qc, ids, k, False, missing)
            if np.isinf(dist).any():
                raise RankingError(
                    f"approximate backend {self.backend!r} returned fewer than k={k} results; "
                    "raise nprobe / ef_search"
                )
            out_idx[s : s + len(qc)] = idx
            out_dist[s : s + len(qc)] = dist
        return out_idx, out_dist
