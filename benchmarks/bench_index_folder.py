"""Indexing a folder of images (``python -m ranking_lib index``): images/s, peak memory, the time
of a rerun when nothing changed, and ``duplicates`` on the index (its calibrated threshold).

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
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ranking_lib.core.fileio import write_json
from benchmark_card import write_benchmark_card
from ranking_lib.core.paths import BENCH_RESULTS
from ranking_lib.core.runcard import machine

ROOT = Path(__file__).resolve().parents[1]
REPORT = re.compile(r"^index .*: (?P<images>[\d,]+) images .*embedded (?P<embedded>[\d,]+) now.*; "
                    r"(?P<skipped>\d+) skipped; (?P<seconds>[\d.]+) s$", re.M)


def run_cli(cmd: list[str]) -> tuple[str, float, float]:
    """(stdout, wall s, peak RSS MB) of one ``python -m ranking_lib`` process; exits on failure."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "ranking_lib", *cmd], cwd=ROOT, stdout=out, stderr=err,
                                text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this process's own peak RSS (the CLI re-executes in place)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        sys.exit(f"error: {cmd[0]} failed (exit {proc.returncode}): {stderr.strip().splitlines()[-1:]}")
    return stdout, wall, usage.ru_maxrss / 1024


def index_once(images: Path, run_dir: Path, profile: str, model: str) -> dict:
    """One ``index`` process: its wall time, the report's numbers and the process's peak RSS."""
    stdout, wall, peak = run_cli(["index", "--profile", profile, "--run-dir", str(run_dir), "--images", str(images),
                                  "--name", "bench", "--model", model, "--quiet"])
    m = REPORT.search(stdout)
    if m is None:
        sys.exit(f"error: no report line in the index output: {stdout[-500:]}")
    num = {k: int(v.replace(",", "")) for k, v in m.groupdict().items() if k != "seconds"}
    return {"wall_s": round(wall, 2), "index_s": float(m["seconds"]), **num,
            "peak_rss_mb": round(peak, 1)}


def duplicates(run_dir: Path, profile: str, queries: int) -> dict:
    """``duplicates`` on the index: the threshold calibrated on `queries` val images of the
    profile's data (precision and recall over image pairs there) and the groups it finds."""
    stdout, wall, _ = run_cli(["duplicates", "--profile", profile, "--run-dir", str(run_dir), "--index", "bench",
                               "--near-dup-queries", str(queries), "--quiet"])
    calib = json.loads(next(run_dir.glob("near_dup_threshold_*.json")).read_text())
    groups = re.search(r"^(\d+) group\(s\) of near-duplicates, (\d+) images", stdout, re.M)
    return {"wall_s": round(wall, 2), "calibration": calib, "groups": int(groups[1]), "images_in_groups": int(groups[2]),
            "first_groups": [ln.strip() for ln in stdout.splitlines() if re.match(r"^  \d+: ", ln)][:10]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="the folder to index (read recursively)")
    p.add_argument("--profile", default="sample", help="settings profile of the network (default sample)")
    p.add_argument("--model", default="baseline", choices=("trained", "baseline"),
                   help="the network (trained needs --run-dir with a checkpoint; default baseline)")
    p.add_argument("--run-dir", help="the run whose network indexes (default: a temporary run directory)")
    p.add_argument("--near-dup-queries", type=int, default=1000,
                   help="then run 'duplicates', its threshold calibrated on this many val images of the profile's "
                        "data (0: skip)")
    p.add_argument("--name", default="bench_index_folder", help="the card's name (docs/runs/<name>)")
    p.add_argument("--out", default=str(BENCH_RESULTS / "index_folder.json"), help="results JSON")
    args = p.parse_args(argv)
    images = Path(args.images).resolve()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        run_dir = Path(args.run_dir) if args.run_dir else Path(tmp) / "run"
        full = index_once(images, run_dir, args.profile, args.model)
        again = index_once(images, run_dir, args.profile, args.model)
        dups = duplicates(run_dir, args.profile, args.near_dup_queries) if args.near_dup_queries else None
    mach = machine()
    results = {
        "what": "python -m ranking_lib index: a whole folder, then a rerun with nothing changed",
        "images_dir": str(images), "profile": args.profile, "model": args.model,
        "full": {**full, "images_per_s": round(full["embedded"] / full["index_s"], 1)},
        "rerun_unchanged": again, "duplicates": dups, "load_average_before": [round(x, 2) for x in load_before],
        "machine": mach,
    }
    out = Path(args.out)
    write_json(out, results)
    card = write_benchmark_card(args.name, out, argv if argv is not None else sys.argv[1:], script="bench_index_folder",
                                phases={"index": full["wall_s"], "rerun_unchanged": again["wall_s"]})
    print(f"CPU: {mach.get('cpu_model')} ({mach.get('cores')} cores; flags {', '.join(mach.get('cpu_flags') or [])}); "
          f"load average before {load_before[0]:.2f}")
    print(f"{'run':<18}{'images':>8}{'embedded':>10}{'index s':>9}{'wall s':>8}{'img/s':>8}{'peak MB':>9}")
    for label, r in (("whole folder", results["full"]), ("rerun, unchanged", again)):
        rate = f"{r['images_per_s']:.1f}" if "images_per_s" in r else "-"
        print(f"{label:<18}{r['images']:>8,}{r['embedded']:>10,}{r['index_s']:>9.1f}{r['wall_s']:>8.1f}{rate:>8}"
              f"{r['peak_rss_mb'] or 0:>9.0f}")
    if dups:
        c = dups["calibration"]
        print(f"duplicates: threshold {c['threshold']:.4f} (pair precision {c['precision']:.1f} %, recall "
              f"{c['recall']:.1f} % on {c['images']} val images and their copies); {dups['groups']} groups, "
              f"{dups['images_in_groups']} images")
    print(f"results: {out}; card: {card}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
