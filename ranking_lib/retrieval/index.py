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
* ``"faiss"``: exact, ``faiss.knn`` over the kept vectors (no second copy); on a GPU an
  ``index_factory("Flat")`` index moved there.
* ``"faiss-ivf"`` / ``"faiss-ivfpq"`` / ``"faiss-hnsw"``: approximate FAISS indexes built with
  ``faiss.index_factory`` (see `faiss_index.factory_string`): ``IVF{nlist},Flat`` with ``nprobe``;
  ``IVF{nlist},PQ{pq_m}x{nbits}`` (``pq_m`` bytes per vector), plus ``Refine(Flat)`` when
  ``refine > 1``, whose ``refine x k`` candidates are re-ranked by exact distance;
  ``HNSW{hnsw_m},Flat`` with ``ef_search`` / ``ef_construction``. They are built at construction
  and keep no float32 copy of their own: the vectors live once, inside FAISS (IVF-Flat, HNSW,
  the refine stage), or not at all (IVF-PQ without refine: ``pq_m`` + 8 bytes per vector).
  ``keep_vectors=True`` keeps the float32 copy anyway. Sharded databases far beyond memory:
  ``benchmarks/bench_search_scale.py`` and RESULTS.md.
* ``"auto"``: ``"faiss"`` when FAISS can be imported, else ``"torch"``.

Returned distances are exact for the returned ids (they equal the torch backend's) and results are
sorted by (exact distance, index), except for IVF-PQ without refine and without kept vectors,
whose distances are FAISS's PQ estimates. ``bottomk`` always uses the torch path (FAISS has no
farthest-neighbour search for L2), over the vectors ``embeddings`` gives.

``embeddings`` is the (N, d) float32 array: the kept copy, else reconstructed from FAISS's exact
storage, else (IVF-PQ codes only) read again from the ``.npz`` the index was loaded from.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import atomic_path
from ranking_lib.core.registry import Registry
from ranking_lib.retrieval.faiss_index import default_pq_m, factory_string, faiss_available, faiss_gpus, import_faiss

BACKENDS: Registry[bool] = Registry("search_backend")
"""Search backend name -> whether it is approximate (the config field ``search_backend``)."""
BACKENDS.add("auto", False)
BACKENDS.add("torch", False)
BACKENDS.add("faiss", False)
BACKENDS.add("faiss-ivf", True)
BACKENDS.add("faiss-ivfpq", True)
BACKENDS.add("faiss-hnsw", True)
APPROXIMATE = tuple(name for name in BACKENDS if BACKENDS.get(name))
IVF_BACKENDS = ("faiss-ivf", "faiss-ivfpq")
NPZ_KEYS = ("embeddings", "labels", "paths")
# lowest allowed value of each index parameter
PARAM_MIN = {"nlist": 1, "nprobe": 1, "pq_m": 1, "refine": 1, "hnsw_m": 2, "ef_search": 1, "ef_construction": 1}


def _as_numpy(a):
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a


def _database_problem(emb: np.ndarray, lab: np.ndarray, paths) -> str | None:
    """Why a database cannot be indexed (one line), or None."""
    if emb.ndim != 2:
        return f"embeddings must be a 2-D (N, d) array (got shape {emb.shape})"
    if 0 in emb.shape:
        return f"embeddings must be non-empty (got shape {emb.shape})"
    if lab.ndim != 1:
        return f"labels must be a 1-D array (got shape {lab.shape})"
    for name, other in (("labels", lab), ("paths", paths)):
        if other is not None and len(other) != len(emb):
            return f"embedding file has {len(emb)} embeddings but {len(other)} {name} (they must match)"
    if lab.dtype.kind not in "iu" and not (lab.dtype.kind == "f" and np.all(np.isfinite(lab))
                                           and np.all(lab == np.round(lab))):
        return f"labels must be integers (got dtype {lab.dtype})"
    if not np.all(np.isfinite(emb)):
        return f"embeddings contain NaN or Inf values (first bad row {int(np.flatnonzero(~np.isfinite(emb).all(axis=1))[0])})"
    return None


class EmbeddingIndex:
    """Euclidean k-NN over embeddings: exact (``torch``, ``faiss``) or approximate (``faiss-ivf``,
    ``faiss-ivfpq``, ``faiss-hnsw``).

    Args:
        embeddings: (N, d) array, converted to contiguous float32; must be finite, N >= 1.
        labels: (N,) integer class labels, stored as int64.
        paths: optional list of N image paths (stored as given, ``None`` stays ``None``).
        backend: one of ``BACKENDS`` (see the module docstring).
        chunk_size: number of queries processed at once (bounds memory to ~chunk_size x N floats).
        nlist, nprobe: IVF parameters (``faiss-ivf``, ``faiss-ivfpq``); nlist defaults to
            ``default_nlist(N)``.
        pq_m: IVF-PQ bytes per vector (sub-quantizers); must divide d; default ``default_pq_m(d)``.
        refine: IVF-PQ candidates per result (refine x k are re-ranked by exact distance; 1 = no
            refine stage, no float vectors).
        hnsw_m, ef_search, ef_construction: HNSW parameters (``faiss-hnsw``).
        keep_vectors: approximate backends also keep the float32 (N, d) array (exact backends
            always do).
    """

    def __init__(self, embeddings, labels, paths=None, backend: str = "auto", chunk_size: int = 4096, *,
                 nlist: int | None = None, nprobe: int = 32, pq_m: int | None = None, refine: int = 4,
                 hnsw_m: int = 32, ef_search: int = 128, ef_construction: int = 80,
                 keep_vectors: bool = False, source: str | Path | None = None) -> None:
        emb = np.ascontiguousarray(np.asarray(_as_numpy(embeddings), dtype=np.float32))
        lab = np.asarray(_as_numpy(labels))
        paths = None if paths is None else [str(p) for p in paths]
        problem = _database_problem(emb, lab, paths)
        if problem:
            raise RankingError(problem)
        params = dict(nlist=nlist, nprobe=nprobe, pq_m=pq_m, refine=refine, hnsw_m=hnsw_m,
                      ef_search=ef_search, ef_construction=ef_construction, chunk_size=chunk_size)
        for name, value in params.items():
            low = PARAM_MIN.get(name, 1)
            if value is not None and int(value) < low:
                label = name if name == "chunk_size" else f"index {name}"
                raise RankingError(f"{label} must be >= {low} (got {value})")
        BACKENDS.check(backend)
        if backend == "auto":
            backend = "faiss" if faiss_available() else "torch"
        elif backend.startswith("faiss") and not faiss_available():
            raise RankingError(f"index backend {backend!r} needs faiss (pip install faiss-cpu)")
        if backend == "faiss-ivfpq" and pq_m is not None and emb.shape[1] % int(pq_m):
            raise RankingError(f"index pq_m={pq_m} must divide the embedding size {emb.shape[1]} "
                               f"(e.g. {default_pq_m(emb.shape[1])})")
        self.backend = backend
        self.labels = lab.astype(np.int64)
        self.paths = paths
        self.chunk_size = int(chunk_size)
        self.nlist, self.pq_m = nlist, None if pq_m is None else int(pq_m)
        self.nprobe, self.refine = int(nprobe), int(refine)
        self.hnsw_m, self.ef_search, self.ef_construction = int(hnsw_m), int(ef_search), int(ef_construction)
        self._n, self._d = emb.shape
        self._source = None if source is None else Path(source)
        if not emb.flags.writeable:  # torch.from_numpy warns on read-only buffers
            emb = emb.copy()
        self._vectors = emb if keep_vectors or backend not in APPROXIMATE else None
        self._xx = None  # ||x||^2 of the kept vectors, computed on the first torch search
        self._faiss_index = None  # the FAISS index proper (IVF / HNSW / Flat); nprobe etc. set on it
        self._cpu_index = None  # the whole index (with its refine stage), on the CPU
        self._search_index = None  # what is searched: the whole index or its GPU copy
        if backend in APPROXIMATE:
            self._build_faiss(emb)

    # ------------------------------------------------------------------ basic properties
    def __len__(self) -> int:
        return self._n

    @property
    def dim(self) -> int:
        return self._d

    def __repr__(self) -> str:
        return f"EmbeddingIndex(n={len(self)}, dim={self.dim}, backend={self.backend!r})"

    @property
    def faiss_index(self):
        """The FAISS index proper (its ``nlist``, ``nprobe``, ``pq``, ``hnsw`` as FAISS set them), or
        None for the torch backend and exact search without an index."""
        return self._faiss_index

    @property
    def keeps_vectors(self) -> bool:
        """True when the index holds its own float32 (N, d) copy."""
        return self._vectors is not None

    @property
    def _exact_storage(self) -> bool:
        """True when FAISS itself stores the exact vectors (everything but IVF-PQ without refine)."""
        return self._cpu_index is not None and not (self.backend == "faiss-ivfpq" and self.refine <= 1)

    @property
    def embeddings(self) -> np.ndarray:
        """The (N, d) float32 database: the kept copy, else reconstructed from FAISS's exact storage
        (a new array each time), else read again from the file the index was loaded from."""
        if self._vectors is not None:
            return self._vectors
        if self._exact_storage:  # a torch tensor once faiss.contrib.torch_utils is imported (by other packages)
            v = self._cpu_index.reconstruct_n(0, self._n)
            return v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=np.float32)
        if self._source is not None:
            emb = _read_npz(self._source)[0].astype(np.float32)
            if emb.shape != (self._n, self._d):
                raise RankingError(f"embedding file {self._source} changed since the index was built")
            return emb
        raise RankingError(f"a {self.backend!r} index without refine keeps only PQ codes; build it with "
                           "keep_vectors=True (or load it from its file) to get its vectors")

    def nbytes(self) -> int:
        """Bytes the index holds for its database: kept vectors, their norms, labels and the FAISS
        index (its serialised size)."""
        total = self.labels.nbytes + sum(a.nbytes for a in (self._vectors, self._xx) if a is not None)
        if self._cpu_index is not None:
            total += len(import_faiss().serialize_index(self._cpu_index))
        return total

    # ------------------------------------------------------------------ persistence
    def save(self, path, meta: dict | None = None) -> Path:
        """Write ``embeddings`` (float32 N x d), ``labels`` (int64 N), ``paths`` (str, N or 0 when
        there are no paths) to an ``.npz`` file, atomically (temporary file + ``os.replace``).
        ``meta``, a JSON object (what the embeddings were computed from), is stored as a JSON
        string under ``meta`` and read back by :meth:`load` as ``index.meta``."""
        path = Path(path)
        paths = np.array(self.paths if self.paths is not None else [], dtype=str)
        extra = {} if meta is None else {"meta": np.array(json.dumps(meta))}
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, embeddings=self.embeddings, labels=self.labels, paths=paths, **extra)
        return path

    @classmethod
    def load(cls, path, backend: str = "auto", **kwargs) -> EmbeddingIndex:
        """Read an index written by :meth:`save`. Problems raise a one-line ``RankingError``."""
        path = Path(path)
        emb, lab, paths = _read_npz(path)
        path_list = None if paths.size == 0 else [str(p) for p in paths.tolist()]
        try:
            index = cls(emb, lab, path_list, backend=backend, source=path, **kwargs)
        except RankingError as exc:
            raise RankingError(f"{path}: {exc}") from None
        index.meta = read_meta(path)
        return index

    # ------------------------------------------------------------------ queries
    def _prepare(self, queries, k, exclude, name):
        q = np.asarray(_as_numpy(queries), dtype=np.float32)
        single = q.ndim == 1
        q = q[None, :] if single else q
        if q.ndim != 2:
            raise RankingError(f"queries must be (d,) or (Q, d) (got shape {np.shape(queries)})")
        if q.shape[1] != self.dim:
            raise RankingError(f"query dimension {q.shape[1]} does not match the index dimension {self.dim}")
        if not np.all(np.isfinite(q)):
            raise RankingError("queries contain NaN or Inf values")
        q = np.ascontiguousarray(q)
        if exclude is not None:
            exclude = np.atleast_1d(np.asarray(_as_numpy(exclude)))
            if exclude.dtype.kind not in "iu":
                raise RankingError(f"exclude must hold integer database indices (got {exclude.dtype})")
            exclude = exclude.astype(np.int64)
            if exclude.shape != (len(q),):
                raise RankingError(f"exclude must have one index per query ({len(q)}), got shape {exclude.shape}")
            if len(exclude) and (exclude.min() < 0 or exclude.max() >= len(self)):
                raise RankingError(f"exclude indices must be in [0, {len(self) - 1}]")
        kmax = len(self) - (1 if exclude is not None else 0)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= kmax:
            extra = " minus the excluded item" if exclude is not None else ""
            raise RankingError(f"{name}: k={k} must be between 1 and {kmax} (index size{extra})")
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
    def _rows(self, ids: np.ndarray, vectors=None) -> np.ndarray:
        """Exact float32 vectors of database ids (any shape) -> (*ids.shape, d), a new array."""
        if vectors is None:
            vectors = self._vectors
        if vectors is not None:
            return vectors[ids]
        return self._cpu_index.reconstruct_batch(ids.reshape(-1)).reshape(*ids.shape, self._d)

    def _sorted(self, cand, dists, k, largest, bad=None):
        """The best k of candidates ``cand`` (B, C) with distances ``dists`` by (distance, index);
        entries flagged in ``bad`` (B, C) are pushed to the end."""
        if bad is not None:
            dists[np.asarray(bad)] = -math.inf if largest else math.inf
        # sort by index first, then stable sort by distance -> ties resolved by lower index
        order = np.argsort(cand, axis=1, kind="stable")
        cand = np.take_along_axis(cand, order, 1)
        dists = np.take_along_axis(dists, order, 1)
        order = np.argsort(-dists if largest else dists, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(cand, order, 1), np.take_along_axis(dists, order, 1)

    def _exact_sorted(self, q, cand, k, largest, bad=None, vectors=None):
        """Exact distances of candidate ids ``cand`` (B, C) for queries ``q`` (B, d), then
        :meth:`_sorted`.

        Plain numpy (single-threaded): right after a FAISS search, FAISS's own OpenMP threads are
        still spinning, and a multi-threaded re-rank would compete with them for the cores."""
        q = np.asarray(q, dtype=np.float32)
        cand = np.asarray(cand, dtype=np.int64)
        n_sub = max(1, (64 * 1024 * 1024) // max(1, cand.shape[1] * self.dim * 4))  # ~64 MB gathers
        dists = np.empty(cand.shape, dtype=np.float32)
        for s in range(0, cand.shape[0], n_sub):
            diff = self._rows(cand[s : s + n_sub], vectors)
            diff -= q[s : s + n_sub, None, :]
            np.sqrt(np.einsum("bcd,bcd->bc", diff, diff), out=dists[s : s + n_sub])
        return self._sorted(cand, dists, k, largest, bad)

    def _torch_search(self, q, k, exclude, largest):
        n = len(self)
        vectors = self.embeddings  # a temporary full array for approximate backends without vectors
        x = torch.from_numpy(vectors)
        xx = self._xx if self._vectors is not None else None
        if xx is None:
            xx = torch.einsum("ij,ij->i", x, x)  # ||x||^2
            if self._vectors is not None:
                self._xx = xx
        # a few extra candidates guard against float32 rounding in the matmul expansion
        n_cand = min(n, k + max(8, k // 4) + (1 if exclude is not None else 0))
        out_idx = np.empty((len(q), k), dtype=np.int64)
        out_dist = np.empty((len(q), k), dtype=np.float32)
        with torch.no_grad():
            for s in range(0, len(q), self.chunk_size):
                q_t = torch.from_numpy(q[s : s + self.chunk_size])
                d2 = torch.addmm(xx.unsqueeze(0), q_t, x.T, beta=1.0, alpha=-2.0)
                d2.add_(torch.einsum("ij,ij->i", q_t, q_t).unsqueeze(1))
                ex_t = None
                if exclude is not None:
                    ex_t = torch.from_numpy(exclude[s : s + self.chunk_size])
                    d2.scatter_(1, ex_t[:, None], -math.inf if largest else math.inf)
                cand = torch.topk(d2, n_cand, dim=1, largest=largest, sorted=False).indices
                del d2
                bad = None if ex_t is None else (cand == ex_t[:, None]).numpy()
                idx, dist = self._exact_sorted(q[s : s + self.chunk_size], cand.numpy(), k, largest, bad, vectors)
                out_idx[s : s + len(q_t)] = idx
                out_dist[s : s + len(q_t)] = dist
        return out_idx, out_dist

    # ------------------------------------------------------------------ faiss path
    def _build_faiss(self, vectors: np.ndarray):
        faiss = import_faiss()
        n, d = vectors.shape
        spec = factory_string(self.backend, n, d, nlist=self.nlist, pq_m=self.pq_m, refine=self.refine,
                              hnsw_m=self.hnsw_m)
        index = faiss.index_factory(d, spec)
        core = faiss.downcast_index(index.base_index) if spec.endswith("Refine(Flat)") else index
        if self.backend == "faiss-hnsw":
            core.hnsw.efConstruction = self.ef_construction
        if self.backend == "faiss-ivfpq":
            core.do_polysemous_training = False  # the factory turns it on; 10x the training time, unused
        index.train(vectors)
        index.add(vectors)
        if self.backend in IVF_BACKENDS:
            core.nprobe = max(1, min(self.nprobe, core.nlist))
            if self.backend == "faiss-ivf":
                core.make_direct_map()  # exact vectors by id (8 bytes per vector)
        if spec.endswith("Refine(Flat)"):
            index.k_factor = float(self.refine)
        search = index
        if self.backend in ("faiss", "faiss-ivf") and faiss_gpus(faiss):
            # FAISS built with CUDA and a GPU present: search there (flat and IVF). IVF-PQ stays on
            # the CPU (GPU IVF-PQ accepts only some code sizes) and so does HNSW (CPU-only).
            # Not run yet: the one GPU run of this project had no FAISS installed.
            self._faiss_gpu = faiss.StandardGpuResources()
            search = faiss.index_cpu_to_gpu(self._faiss_gpu, 0, index)
        self._faiss_index, self._search_index = core, search
        self._cpu_index = index  # reconstructs vectors (the GPU copy need not)

    def _faiss_search(self, q, k, exclude):
        faiss = import_faiss()
        if self.backend == "faiss" and self._search_index is None and faiss_gpus(faiss):
            self._build_faiss(self._vectors)
        if self.backend == "faiss-hnsw":
            self._faiss_index.hnsw.efSearch = max(self.ef_search, k + 1)
        # exact search: a few extra candidates guard against rounding in faiss's squared distances
        margin = max(8, k // 4) if self.backend == "faiss" else 0
        kk = min(len(self), k + margin + (1 if exclude is not None else 0))
        exact = self._vectors is not None or self._exact_storage
        out_idx = np.empty((len(q), k), dtype=np.int64)
        out_dist = np.empty((len(q), k), dtype=np.float32)
        for s in range(0, len(q), self.chunk_size):
            qc = q[s : s + self.chunk_size]
            if self._search_index is None:  # exact on the CPU: brute force over the kept vectors
                d2, ids = faiss.knn(qc, self._vectors, kk)
            else:
                d2, ids = self._search_index.search(qc, kk)
            ids = np.asarray(ids, dtype=np.int64)
            missing = ids < 0  # approximate indexes may return fewer than kk results
            ids[missing] = 0
            if exclude is not None:
                missing |= ids == exclude[s : s + self.chunk_size, None]
            if exact:
                idx, dist = self._exact_sorted(qc, ids, k, False, missing)
            else:  # IVF-PQ codes only: FAISS's estimated distances
                dist = np.sqrt(np.maximum(np.asarray(d2, dtype=np.float32), 0))
                idx, dist = self._sorted(ids, dist, k, False, missing)
            if np.isinf(dist).any():
                raise RankingError(f"approximate backend {self.backend!r} returned fewer than k={k} results; "
                                   "raise nprobe / ef_search")
            out_idx[s : s + len(qc)] = idx
            out_dist[s : s + len(qc)] = dist
        return out_idx, out_dist


def read_meta(path: Path) -> dict:
    """The ``meta`` object :meth:`EmbeddingIndex.save` stored in `path` ({} for files without one)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                return {}
            meta = json.loads(str(z["meta"]))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise RankingError(f"embedding file {path}: its meta entry cannot be read ({exc})".replace("\n", " ")) from None
    if not isinstance(meta, dict):
        raise RankingError(f"embedding file {path}: its meta entry is not a JSON object")
    return meta


def _read_npz(path: Path):
    """(embeddings, labels, paths) of an ``.npz`` written by :meth:`EmbeddingIndex.save`."""
    if not path.is_file():
        raise RankingError(f"embedding file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise RankingError(f"embedding file {path} lacks key(s) {', '.join(missing)} "
                                   f"(expected {', '.join(NPZ_KEYS)})")
            return z["embeddings"], z["labels"], z["paths"]
    except RankingError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise RankingError(f"embedding file {path} cannot be read: {exc}".replace("\n", " ")) from None
