"""Search at scale: exact vs IVF-Flat vs IVF-PQ vs HNSW over millions of synthetic embeddings.

    python benchmarks/bench_search_scale.py [--n 1000000 10000000 --dims 128 200 --q 1000 --k 30
                                             --out benchmarks/results/search_scale.json]

For each database size n and dimension d:

* **data**: n + q L2-normalised vectors (like the project's embeddings) drawn from a seeded
  mixture of ``--clusters`` Gaussians, generated in chunks straight into float32.
* **exact**: ``faiss.knn`` (brute force through BLAS, what ``IndexFlatL2`` does); its top-k ids
  are the ground truth for recall@k. Its memory is the float32 vectors themselves, n * d * 4.
* **IVF-Flat** and **IVF-PQ** from ``faiss.index_factory`` (``IVF{nlist}_HNSW32,Flat`` and
  ``IVF{nlist}_HNSW32,PQ{m}``: an HNSW coarse quantizer, as FAISS recommends from ~1M vectors
  on). The coarse centroids are trained once (k-means, 10 iterations, on ``--train-per-list`` x
  nlist vectors) and shared by both. IVF-PQ is searched as it is (codes only, approximate
  distances) and with the candidates re-ranked by exact distance (``refine`` x k of them: what
  ``EmbeddingIndex(backend="faiss-ivfpq")`` does; needs the float vectors in RAM or on disk).
* **HNSW** (``HNSW32,Flat``) where n <= ``--hnsw-max-n``. Its build is the slowest; beyond the cap
  the row gives the build rate measured at the largest n built and the time it implies (marked
  ``estimate``), not a measured build.

Each row: build seconds (training included), search ms per query (the q queries as one batch,
all FAISS threads; batched throughput, not single-query latency), recall@k against the exact
top-k, and memory: the index's resident-set growth while it was built (measured; /proc) and its
size per vector (codes and ids; for HNSW the vectors plus its graph's arrays).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def synthetic(n: int, q: int, d: int, clusters: int, seed: int, spread: float = 0.5, chunk: int = 250_000):
    """(database (n, d), queries (q, d)) float32, L2-normalised, from a seeded Gaussian mixture;
    generated in chunks, so peak memory is the output plus one chunk."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d)).astype(np.float32)
    out = np.empty((n + q, d), dtype=np.float32)
    for s in range(0, n + q, chunk):
        m = min(chunk, n + q - s)
        block = out[s : s + m]
        rng.standard_normal(size=(m, d), dtype=np.float32, out=block)
        block *= np.float32(spread)
        block += centers[rng.integers(0, clusters, size=m)]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return out[:n], out[n:]


def recall_at(ids: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids.tolist(), truth.tolist())]))


def rerank(x: np.ndarray, q: np.ndarray, cand: np.ndarray, k: int) -> np.ndarray:
    """The k of each query's candidate ids closest by exact distance (ids < 0 are dropped last)."""
    out = np.empty((len(q), k), dtype=np.int64)
    for i in range(len(q)):
        c = cand[i][cand[i] >= 0]
        d2 = ((x[c] - q[i]) ** 2).sum(1)
        out[i] = c[np.argsort(d2, kind="stable")[:k]]
    return out


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_size(args, n: int, d: int, hnsw_rate: dict) -> list[dict]:
    import faiss

    from ranking_lib.retrieval.faiss_index import default_pq_m

    t_gen, (x, q) = timed(lambda: synthetic(n, args.q, d, args.clusters, args.seed))
    print(f"n={n:,} d={d}: data generated in {t_gen:.1f} s ({x.nbytes / 2**30:.2f} GiB)", flush=True)
    k, rows = args.k, []

    def row(method, build_s, search_s, ids, rss_delta, bytes_per_vector, **extra):
        r = {"n": n, "dim": d, "method": method, "build_s": round(build_s, 2),
             "search_ms_per_query": round(1000 * search_s / len(q), 4),
             f"recall@{k}": None if ids is None else round(recall_at(ids, truth), 4),
             "rss_delta_mib": None if rss_delta is None else round(rss_delta / 2**20, 1),
             "bytes_per_vector": round(bytes_per_vector, 1), **extra}
        rows.append(r)
        rec = "" if ids is None else f"recall@{k} {r[f'recall@{k}']:.4f}"
        print(f"  {method:40s} build {build_s:8.1f} s  search {r['search_ms_per_query']:8.3f} ms/q  {rec}  "
              f"{r['bytes_per_vector']:.0f} B/vector", flush=True)
        return r

    t_exact, (_, truth) = timed(lambda: faiss.knn(q, x, k))
    row("exact (faiss.knn = IndexFlatL2)", 0.0, t_exact, truth, None, d * 4)

    nlist = args.nlist or (4096 if n <= 2_000_000 else 8192)
    sample = np.random.default_rng(args.seed + 1).choice(n, size=min(n, args.train_per_list * nlist), replace=False)
    xt = x[np.sort(sample)]

    # IVF-Flat: trains the coarse centroids (shared with IVF-PQ below)
    before = rss_bytes()
    ivf = faiss.index_factory(d, f"IVF{nlist}_HNSW32,Flat")
    t_train, _ = timed(lambda: ivf.train(xt))
    t_add, _ = timed(lambda: ivf.add(x))
    ivf_rss = rss_bytes() - before
    centroids = faiss.downcast_index(ivf.quantizer).reconstruct_n(0, nlist)
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        t, (_, ids) = timed(lambda: ivf.search(q, k))
        row(f"IVF{nlist}_HNSW32,Flat nprobe={nprobe}", t_train + t_add, t, ids, ivf_rss, d * 4 + 8,
            train_s=round(t_train, 2), nlist=nlist, nprobe=nprobe)
    del ivf

    # IVF-PQ: same centroids (so its training is the PQ codebooks only), pq_m bytes per vector
    m = args.pq_m or default_pq_m(d)
    before = rss_bytes()
    ivfpq = faiss.index_factory(d, f"IVF{nlist}_HNSW32,PQ{m}")
    ivfpq.do_polysemous_training = False  # as in EmbeddingIndex: the factory turns it on, nothing here uses it
    ivfpq.quantizer.add(centroids)
    t_train, _ = timed(lambda: ivfpq.train(xt))
    t_add, _ = timed(lambda: ivfpq.add(x))
    pq_rss = rss_bytes() - before
    for nprobe in args.nprobe:
        ivfpq.nprobe = nprobe
        t, (_, ids) = timed(lambda: ivfpq.search(q, k))
        row(f"IVF{nlist}_HNSW32,PQ{m} nprobe={nprobe}", t_train + t_add, t, ids, pq_rss, m + 8,
            train_s=round(t_train, 2), nlist=nlist, nprobe=nprobe, pq_m=m)
        t, (_, cand) = timed(lambda: ivfpq.search(q, args.refine * k))
        t_r, ids = timed(lambda: rerank(x, q, cand, k))
        row(f"IVF{nlist}_HNSW32,PQ{m} nprobe={nprobe} + exact re-rank of {args.refine}k", t_train + t_add, t + t_r, ids, pq_rss, m + 8 + d * 4,
            nlist=nlist, nprobe=nprobe, pq_m=m, refine=args.refine, note="float vectors kept for the re-rank")
    del ivfpq

    if n <= args.hnsw_max_n:
        before = rss_bytes()
        hnsw = faiss.index_factory(d, "HNSW32,Flat")
        hnsw.hnsw.efConstruction = args.ef_construction
        t_build, _ = timed(lambda: hnsw.add(x))
        h_rss = rss_bytes() - before
        h_bytes = d * 4 + (hnsw.hnsw.neighbors.size() * 4 + hnsw.hnsw.levels.size() * 4) / n
        hnsw_rate[d] = (n, n / t_build, round(h_bytes, 1))
        for ef in args.ef_search:
            hnsw.hnsw.efSearch = max(ef, k)
            t, (_, ids) = timed(lambda: hnsw.search(q, k))
            row(f"HNSW32,Flat efSearch={ef}", t_build, t, ids, h_rss, h_bytes,
                ef_construction=args.ef_construction, ef_search=ef)
        del hnsw
    elif d in hnsw_rate:
        built_n, rate, _ = hnsw_rate[d]
        # HNSW insertion cost grows ~log n per vector, so n / rate underestimates; scale by the log ratio
        est = n / rate * (np.log(n) / np.log(built_n))
        rows.append({"n": n, "dim": d, "method": "HNSW32,Flat (not built)", "build_s": round(float(est), 0),
                     "estimate": True, "bytes_per_vector": hnsw_rate[d][2],
                     "note": f"build time estimated from {rate:,.0f} vectors/s measured at n={built_n:,}"})
        print(f"  HNSW32,Flat not built: about {est / 60:.0f} min at the rate measured at n={built_n:,}", flush=True)
    return rows


def markdown(rows: list[dict], k: int) -> str:
    lines = [f"| n | d | method | build s | search ms/query | recall@{k} | RSS growth MiB | bytes/vector |",
             "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        build = f"~{r['build_s']:.0f} (estimate)" if r.get("estimate") else f"{r['build_s']:.1f}"
        search = "" if "search_ms_per_query" not in r else f"{r['search_ms_per_query']:.3f}"
        rec = r.get(f"recall@{k}")
        rss = r.get("rss_delta_mib")
        lines.append(f"| {r['n']:,} | {r['dim']} | {r['method']} | {build} | {search} | "
                     f"{'' if rec is None else f'{rec:.4f}'} | {'' if rss is None else f'{rss:,.0f}'} | "
                     f"{r['bytes_per_vector']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1_000_000, 10_000_000], help="database sizes")
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 200], help="128 and the cpu profile's size")
    ap.add_argument("--q", type=int, default=1000, help="queries")
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--clusters", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4096 up to 2M vectors, else 8192)")
    ap.add_argument("--train-per-list", type=int, default=40, help="k-means training vectors per list")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--pq-m", type=int, default=None, help="IVF-PQ bytes per vector (default d/4's largest divisor)")
    ap.add_argument("--refine", type=int, default=4)
    ap.add_argument("--ef-construction", type=int, default=40)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--hnsw-max-n", type=int, default=1_000_000, help="largest n with an HNSW build")
    ap.add_argument("--out", default="benchmarks/results/search_scale.json")
    args = ap.parse_args(argv)
    for name in ("n", "dims", "nprobe", "ef_search"):
        if min(getattr(args, name)) < 1:
            ap.error(f"--{name.replace('_', '-')} values must be >= 1")
    if args.q < 1 or args.k < 1 or args.refine < 1:
        ap.error("--q, --k and --refine must be >= 1")

    import faiss

    env = {"faiss": faiss.__version__, "numpy": np.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "faiss_omp_threads": faiss.omp_get_max_threads()}
    print(f"sizes {args.n} dims {args.dims} q={args.q} k={args.k} clusters={args.clusters} | "
          f"faiss {env['faiss']}, {env['faiss_omp_threads']} threads", flush=True)
    rows, hnsw_rate = [], {}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for n in sorted(args.n):
        for d in args.dims:
            rows.extend(run_size(args, n, d, hnsw_rate))
            tmp = out.with_suffix(".tmp")  # after every size, so a long sweep keeps what it measured
            tmp.write_text(json.dumps({"params": vars(args), "env": env, "results": rows}, indent=2) + "\n")
            tmp.replace(out)
    print()
    print(markdown(rows, args.k))
    print(f"\nwrote {out}")
    from benchmark_card import write_benchmark_card

    print(f"wrote {write_benchmark_card('bench_search_scale', out, argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
