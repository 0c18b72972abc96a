"""Memory of each `EmbeddingIndex` backend: what the index holds for its database.

    python benchmarks/bench_index_memory.py [--n 1000000 --d 128 --out benchmarks/results/index_memory.json]

Builds every backend over n seeded Gaussian vectors of d dimensions with the project's default
index parameters (nlist = default_nlist(n), pq_m = default_pq_m(d), refine 4, HNSW M 32) and
reports ``EmbeddingIndex.nbytes()``: the float32 copy the index keeps (torch, faiss, and any
backend with ``keep_vectors=True``), its norms, the labels, and the FAISS index's serialised size
(codes, ids, centroids, graph, refine vectors), i.e. computed from the FAISS index sizes, not from
the process's resident set. Build seconds are measured too (nothing else should run).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ranking_lib.retrieval.faiss_index import factory_string
from ranking_lib.retrieval.index import EmbeddingIndex

ROWS = (  # (label, backend, options)
    ("torch", "torch", {}),
    ("faiss (exact)", "faiss", {}),
    ("faiss-ivf", "faiss-ivf", {}),
    ("faiss-ivfpq, refine 1", "faiss-ivfpq", {"refine": 1}),
    ("faiss-ivfpq, refine 4", "faiss-ivfpq", {"refine": 4}),
    ("faiss-hnsw", "faiss-hnsw", {}),
    ("faiss-ivfpq, refine 1, keep_vectors", "faiss-ivfpq", {"refine": 1, "keep_vectors": True}),
)


def measure(n: int, d: int, seed: int = 0, rows=ROWS) -> list[dict]:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    labels = np.zeros(n, dtype=np.int64)
    out = []
    for label, backend, opts in rows:
        t0 = time.perf_counter()
        index = EmbeddingIndex(x, labels, backend=backend, **opts)
        index.topk(x[:2], 1)  # anything built lazily is built now
        build = time.perf_counter() - t0
        nbytes = index.nbytes()
        spec = factory_string(backend, n, d, refine=opts.get("refine", 4)) if backend.startswith("faiss-") else "-"
        out.append({"backend": label, "factory": spec, "n": n, "d": d, "bytes": nbytes,
                    "bytes_per_vector": round(nbytes / n, 1), "mib": round(nbytes / 2**20, 1),
                    "keeps_vectors": index.keeps_vectors, "build_s": round(build, 2)})
        print(f"{label:40s} {spec:28s} {nbytes / 2**20:9.1f} MiB {nbytes / n:8.1f} B/vector "
              f"build {build:7.2f} s", flush=True)
        del index
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| backend | FAISS index | float32 copy kept | MiB | bytes/vector | build s |",
             "|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['factory']} | {'yes' if r['keeps_vectors'] else 'no'} | "
                     f"{r['mib']:,.1f} | {r['bytes_per_vector']:.1f} | {r['build_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/index_memory.json")
    args = ap.parse_args(argv)
    if args.n < 300 or args.d < 4:
        ap.error("--n must be >= 300 and --d >= 4")
    from ranking_lib.core.fileio import write_json
    from benchmark_card import write_benchmark_card
    from ranking_lib.core.runcard import machine

    mach = machine()
    print(f"n={args.n} d={args.d} | {mach['cpu_model']} ({', '.join(mach['cpu_flags'])}), {mach['cores']} cores, "
          f"faiss {mach['faiss']}", flush=True)
    rows = measure(args.n, args.d, args.seed)
    out = Path(args.out)
    write_json(out, {"params": vars(args), "machine": mach, "results": rows})
    print()
    print(markdown(rows))
    print(f"\nwrote {out}")
    print(f"wrote {write_benchmark_card('bench_index_memory', out, argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
