"""Time per pick of the explorer page (``ranking_lib.explore``) on a finished run.

    python benchmarks/bench_explore.py --run-dir runs/x [--picks 100 --uploads 5 --seed 0
                                                        --out docs/figures/explore.json]

Measured in one process, as the page's kernel runs it:

* open: the first ``QueryExplorer`` on the run (image caches, the trained model's index and val
  embeddings), then the baseline's (loaded once, then kept);
* pick: one val image ranked by both models (top-k and bottom-k against the whole training set),
  the search alone and the whole page update (``ExplorerApp.show_val``: both searches, the
  result HTML with its 4k+1 inline images, the widgets' values set), over `picks` random val
  images;
* find: the class search of a name prefix (``class_choices``);
* upload: an image embedded by both networks and ranked (the first includes loading them).

The browser's drawing of the page is not included (it runs on the viewer's machine). Prints a
table with the CPU, writes JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from ranking_lib.core.fileio import write_json

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu() -> dict:
    model, flags, model_seen = platform.processor() or "CPU", set(), False
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model_seen:
                model, model_seen = line.split(":", 1)[1].strip(), True
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in FLAGS if f in flags]}


def stats(seconds: list[float]) -> dict:
    ms = 1000 * np.asarray(seconds)
    return {"n": int(len(ms)), "median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
            "max_ms": float(ms.max())}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--picks", type=int, default=100)
    ap.add_argument("--uploads", type=int, default=5)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "explore.json")
    args = ap.parse_args(argv)

    from ranking_lib.core.errors import RankingError
    from ranking_lib.explore import ExplorerApp, QueryExplorer

    try:
        t_open, ex = timed(lambda: QueryExplorer(args.run_dir, "trained", args.k))
    except RankingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t_base, avail = timed(ex.available_models)
    models = [m for m, why in avail.items() if why is None]
    rng = np.random.default_rng(args.seed)
    ids = rng.choice(len(ex.val), size=min(args.picks, len(ex.val)), replace=False)

    search = [timed(lambda i=i: [ex.query_val(i, m) for m in models])[0] for i in ids]
    app = ExplorerApp(args.run_dir, k=args.k)
    page = [timed(lambda i=i: app.show_val(int(i)))[0] for i in ids]
    if app.text.startswith("error:"):
        print(app.text, file=sys.stderr)
        return 2
    names = [ex.val.class_names[int(c)][:3] for c in rng.choice(len(ex.val.class_names), size=len(ids))]
    find = [timed(lambda t=t: ex.class_choices(t))[0] for t in names]
    uploads = []
    for i in rng.choice(len(ex.val), size=max(args.uploads, 1)):
        img = np.asarray(ex.val.images[int(i)])
        uploads.append(timed(lambda img=img: [ex.query_pixels(img, "upload.png", m) for m in models])[0])

    md = ex.model_data("trained")
    result = {
        "run_dir": str(args.run_dir), "cpu": cpu(), "load_average_1min": os.getloadavg()[0], "models": models, "k": args.k,
        "train_images": len(ex.train), "val_images": len(ex.val), "classes": len(ex.val.class_names),
        "embedding_dim": int(md.db.dim), "search_backend": ex.cfg.search_backend,
        "open_s": {"trained": t_open, "baseline": t_base},
        "pick_search": stats(search), "pick_page": stats(page), "find": stats(find),
        "upload_first_s": uploads[0], "upload": stats(uploads[1:]) if len(uploads) > 1 else None,
    }
    c = result["cpu"]
    print(f"explorer on {args.run_dir}: {len(ex.train)} training / {len(ex.val)} val images, "
          f"{result['classes']} classes, {result['embedding_dim']}-d, models {', '.join(models)}, k={args.k}")
    print(f"CPU: {c['model']}, {c['cores']} cores, flags: {' '.join(c['flags']) or '-'}; "
          f"load average {result['load_average_1min']:.1f}")
    print(f"open: {t_open:.2f} s (caches + trained), baseline +{t_base:.2f} s")
    print(f"{'step':<34}{'n':>5}{'median ms':>12}{'p95 ms':>10}{'max ms':>10}")
    rows = [("pick: search, both models", result["pick_search"]), ("pick: page update (server side)", result["pick_page"]),
            ("find class (3-letter prefix)", result["find"])]
    if result["upload"]:
        rows.append(("upload: embed + search, both", result["upload"]))
    for name, s in rows:
        print(f"{name:<34}{s['n']:>5}{s['median_ms']:>12.1f}{s['p95_ms']:>10.1f}{s['max_ms']:>10.1f}")
    print(f"first upload (loads the networks): {uploads[0]:.2f} s")
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
