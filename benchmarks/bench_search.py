"""Benchmark exact / approximate Euclidean top-k search on clustered random embeddings.

Compares the project's `EmbeddingIndex` (torch and faiss backends) with scikit-learn's brute-force
`NearestNeighbors` and a raw `faiss.IndexFlatL2`, and measures build + search time and recall@k of
the approximate `faiss-ivf` / `faiss-hnsw` backends.

    python benchmarks/bench_search.py [--n 100000 --q 2000 --k 30 --dims 128 1280 --seed 0
                                       --out benchmarks/results/search.json]

Exact methods are timed as the best of 2 runs after a warm-up run on a few queries; "same set" is
the fraction of queries whose top-k id set equals the torch backend's (the reference, which
re-ranks candidates by exactly recomputed distances). Approximate backends are built and searched
once; their time includes the build.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch


from ranking_lib.retrieval.index import EmbeddingIndex


def clustered(n: int, q: int, d: int, clusters: int, seed: int):
    """Database and query points drawn from the same mixture of `clusters` isotropic Gaussians."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d)).astype(np.float32)
    scale = np.float32(
        0.5
    )  # within-cluster spread relative to between-centre distances

    def draw(m):
        lab = rng.integers(0, clusters, size=m)
        return centers[lab] + scale * rng.normal(size=(m, d)).astype(np.float32), lab

    x, labels = draw(n)
    queries, _ = draw(q)
    return x, labels, queries


def best_of(fn, repeats=2, warmup=None):
    if warmup is not None:
        warmup()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def same_sets(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([set(x) == set(y) for x, y in zip(a.tolist(), b.tolist())]))


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(
        np.mean(
            [len(set(x) & set(y)) / k for x, y in zip(approx.tolist(), exact.tolist())]
        )
    )


def run_dim(args, d: int) -> list[dict]:
    import faiss
    from sklearn.neighbors import NearestNeighbors

    x, labels, q = clustered(args.n, args.q, d, args.clusters, args.seed)
    k, warm_q = args.k, q[: min(len(q), 100)]
    rows = []

    def record(method, seconds, ids, ref, build_s=0.0, approx=False):
        row = {
            "dim": d,
            "method": method,
            "build_s": round(build_s, 3),
            "search_s": round(seconds, 6),
            "queries_per_s": round(len(q) / seconds, 1) if seconds > 0 else None,
        }
        if ref is not None:
            row["recall@k" if approx else "same_set"] = (
                recall(ids, ref) if approx else same_sets(ids, ref)
            )
        rows.append(row)
        print(
            f"  d={d:5d} {method:28s} build {build_s:7.2f}s  search {seconds:7.2f}s",
            flush=True,
        )

    t_index = EmbeddingIndex(x, labels, backend="torch")
    t_s, (ref, _) = best_of(
        lambda: t_index.topk(q, k), warmup=lambda: t_index.topk(warm_q, k)
    )
    record("EmbeddingIndex torch", t_s, ref, None)
    rows[-1]["same_set"] = 1.0

    f_index = EmbeddingIndex(x, labels, backend="faiss")
    f_s, (f_ids, _) = best_of(
        lambda: f_index.topk(q, k), warmup=lambda: f_index.topk(warm_q, k)
    )
    record("EmbeddingIndex faiss", f_s, f_ids, ref)

    raw = faiss.IndexFlatL2(d)
    raw.add(x)
    r_s, (_, r_ids) = best_of(
        lambda: raw.search(q, k), warmup=lambda: raw.search(warm_q, k)
    )
    record("faiss IndexFlatL2 (raw)", r_s, r_ids, ref)

    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x)
    s_s, s_ids = best_of(
        lambda: nn.kneighbors(q, return_distance=False),
        warmup=lambda: nn.kneighbors(warm_q, return_distance=False),
    )
    record("sklearn NearestNeighbors brute", s_s, s_ids, ref)

    for backend, params in (
        ("faiss-ivf", {"nlist": args.nlist, "nprobe": args.nprobe}),
        ("faiss-hnsw", {"hnsw_m": args.hnsw_m, "ef_search": args.ef_search}),
    ):
        t0 = time.perf_counter()
        idx = EmbeddingIndex(x, labels, backend=backend, **params)  # approximate indexes build here
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        a_ids, _ = idx.topk(q, k)
        search = time.perf_counter() - t0
        if backend == "faiss-ivf":
            params = {
                "nlist": idx.faiss_index.nlist,
                "nprobe": idx.faiss_index.nprobe,
            }
        label = f"EmbeddingIndex {backend} ({', '.join(f'{p}={v}' for p, v in params.items())})"
        record(label, search, a_ids, ref, build_s=build, approx=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| dim | method | build s | search s | queries/s | same top-k set / recall@k |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "recall@k" in r:
            acc = f"recall {r['recall@k']:.4f}"
        else:
            acc = f"same {r['same_set']:.4f}"
        lines.append(
            f"| {r['dim']} | {r['method']} | {r['build_s']:.2f} | {r['search_s']:.2f} "
            f"| {r['queries_per_s']} | {acc} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=100_000, help="database size")
    ap.add_argument("--q", type=int, default=2000, help="number of queries")
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 1280])
    ap.add_argument("--clusters", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--nlist", type=int, default=None, help="IVF lists (default ~4 sqrt(n))"
    )
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-search", type=int, default=128)
    ap.add_argument("--out", default="benchmarks/results/search.json")
    args = ap.parse_args(argv)

    import faiss
    import sklearn

    env = {
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "faiss_omp_threads": faiss.omp_get_max_threads(),
    }
    print(
        f"n={args.n} q={args.q} k={args.k} dims={args.dims} clusters={args.clusters} | "
        f"torch threads {env['torch_threads']}, faiss omp threads {env['faiss_omp_threads']}",
        flush=True,
    )
    rows = []
    for d in args.dims:
        rows.extend(run_dim(args, d))
    table = markdown(rows)
    print()
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"params": vars(args), "env": env, "results": rows}, indent=2) + "\n"
    )
    print(f"\nwrote {out}")
    from benchmark_card import write_benchmark_card

    print(f"wrote {write_benchmark_card('bench_search', out, argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
