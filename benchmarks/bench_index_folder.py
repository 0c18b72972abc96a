"""Indexing a folder of images (``python -m ranking_lib index``): images/s, peak memory, and the
time of a rerun when nothing changed.

    python benchmarks/bench_index_folder.py --images ../shared/tiny-imagenet-sample \
        [--profile sample --model baseline --run-dir RUN --out benchmarks/results/index_folder.json]

Each index runs as its own ``python -m ranking_lib index`` process (startup, imports and model
loading included in its wall time); peak memory is that process's maximum resident set size.
The folder is read as a plain folder (every image under it, recursively). Without --run-dir the
index goes into a temporary run directory (then only ``--model baseline``, the frozen pretrained
network, which needs no checkpoint). Prints a table with the CPU and its flags, writes JSON and
its card.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ranking_lib.core.fileio import write_json
from ranking_lib.core.runcard import BENCH_RESULTS, machine, write_benchmark_card

ROOT = Path(__file__).resolve().parents[1]
REPORT = re.compile(r"^index .*: (?P<images>[\d,]+) images .*embedded (?P<embedded>[\d,]+) now.*; "
                    r"(?P<skipped>\d+) skipped; (?P<seconds>[\d.]+) s$", re.M)


def index_once(images: Path, run_dir: Path, profile: str, model: str, extra: list[str]) -> dict:
    """One ``index`` process: its wall time, the report's numbers and the process's peak RSS."""
    cmd = [sys.executable, "-m", "ranking_lib", "index", "--profile", profile, "--run-dir", str(run_dir),
           "--images", str(images), "--name", "bench", "--model", model, "--quiet", *extra]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this process's own peak RSS (the CLI re-executes in place)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        sys.exit(f"error: index failed (exit {proc.returncode}): {stderr.strip().splitlines()[-1:]}")
    m = REPORT.search(stdout)
    if m is None:
        sys.exit(f"error: no report line in the index output: {stdout[-500:]}")
    num = {k: int(v.replace(",", "")) for k, v in m.groupdict().items() if k != "seconds"}
    return {"wall_s": round(wall, 2), "index_s": float(m["seconds"]), **num,
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="the folder to index (read recursively)")
    p.add_argument("--profile", default="sample", help="settings profile of the network (default sample)")
    p.add_argument("--model", default="baseline", choices=("trained", "baseline"),
                   help="the network (trained needs --run-dir with a checkpoint; default baseline)")
    p.add_argument("--run-dir", help="the run whose network indexes (default: a temporary run directory)")
    p.add_argument("--name", default="bench_index_folder", help="the card's name (docs/runs/<name>)")
    p.add_argument("--out", default=str(BENCH_RESULTS / "index_folder.json"), help="results JSON")
    args = p.parse_args(argv)
    images = Path(args.images).resolve()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        run_dir = Path(args.run_dir) if args.run_dir else Path(tmp) / "run"
        full = index_once(images, run_dir, args.profile, args.model, [])
        again = index_once(images, run_dir, args.profile, args.model, [])
    mach = machine()
    results = {
        "what": "python -m ranking_lib index: a whole folder, then a rerun with nothing changed",
        "images_dir": str(images), "profile": args.profile, "model": args.model,
        "full": {**full, "images_per_s": round(full["embedded"] / full["index_s"], 1)},
        "rerun_unchanged": again, "load_average_before": [round(x, 2) for x in load_before],
        "machine": mach,
    }
    out = Path(args.out)
    write_json(out, results)
    card = write_benchmark_card(args.name, out, argv if argv is not None else sys.argv[1:],
                                phases={"index": full["wall_s"], "rerun_unchanged": again["wall_s"]})
    print(f"CPU: {mach.get('cpu_model')} ({mach.get('cores')} cores; flags {', '.join(mach.get('cpu_flags') or [])}); "
          f"load average before {load_before[0]:.2f}")
    print(f"{'run':<18}{'images':>8}{'embedded':>10}{'index s':>9}{'wall s':>8}{'img/s':>8}{'peak MB':>9}")
    for label, r in (("whole folder", results["full"]), ("rerun, unchanged", again)):
        rate = f"{r['images_per_s']:.1f}" if "images_per_s" in r else "-"
        print(f"{label:<18}{r['images']:>8,}{r['embedded']:>10,}{r['index_s']:>9.1f}{r['wall_s']:>8.1f}{rate:>8}"
              f"{r['peak_rss_mb'] or 0:>9.0f}")
    print(f"results: {out}; card: {card}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
