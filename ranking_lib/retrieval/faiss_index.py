"""FAISS as the search backends use it: importing it when present, its GPUs, and the
``faiss.index_factory`` description of each FAISS backend with its default parameters."""

from __future__ import annotations

import math


def import_faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def faiss_gpus(faiss) -> int:
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
    return import_faiss() is not None


def factory_string(backend: str, n: int, d: int, *, nlist=None, pq_m=None, refine=1, hnsw_m=32) -> str:
    """The ``faiss.index_factory`` description of a FAISS backend for n vectors of d dimensions."""
    nlist = max(1, min(int(nlist or default_nlist(n)), n))
    nbits = max(1, min(8, int(math.log2(n))))  # fewer bits below 256 training vectors
    return {"faiss": "Flat", "faiss-ivf": f"IVF{nlist},Flat", "faiss-hnsw": f"HNSW{hnsw_m},Flat",
            "faiss-ivfpq": f"IVF{nlist},PQ{pq_m or default_pq_m(d)}x{nbits}" + (",Refine(Flat)" if refine > 1 else ""),
            }[backend]
