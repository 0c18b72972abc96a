"""Does a budgeted report end on time when the machine gets busier half-way?

Runs the whole report (``report/run_pipeline.py``, as ``make report`` does) under its time
budget and, once `--load-at` of the budget has passed, starts a known competing load: a process
pinned to one core (`--load-core`) that keeps it busy for `--load-minutes`. The training loop's
re-planner (``ranking_lib/training/budget.py``) should see its rate drop and move the end of the
schedule, so that the report still ends within its budget. ``--load-minutes 0`` is the quiet run.

    python benchmarks/bench_budget_load.py --profile cpu --data-dir data/tiny-imagenet-200 \\
        --run-dir runs/cpu-loaded --load-at 0.5 --load-minutes 10

Prints the end-to-end time against the budget, the schedule's moves, and the evaluation's
estimate against its measured time (from the run card), with the CPU's flags; writes JSON
(default benchmarks/results/budget_load.json) and a card beside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from ranking_lib.core.fileio import write_json
from benchmark_card import card_name, write_benchmark_card
from ranking_lib.core.runcard import cpu_info

REPO = Path(__file__).resolve().parents[1]


SPIN = """
import os, sys, time
core, seconds = int(sys.argv[1]), float(sys.argv[2])
try:
    os.sched_setaffinity(0, {core})
except (AttributeError, OSError):
    pass
end, x = time.monotonic() + seconds, 0
while time.monotonic() < end:
    x = (x * 1103515245 + 12345) & 0xFFFFFFFF
"""


def start_load(core: int, seconds: float) -> subprocess.Popen:
    """A competing process pinned to `core` that keeps it busy for `seconds` (a plain Python loop,
    no threads of its own), started now; it ends by itself."""
    return subprocess.Popen([sys.executable, "-c", SPIN, str(core), str(seconds)])


def run(args: argparse.Namespace, extra: list[str]) -> dict:
    budget_s = args.budget_minutes * 60
    cmd = [sys.executable, "report/run_pipeline.py", "--profile", args.profile, "--run-dir", args.run_dir,
           "--set", f"budget_minutes={args.budget_minutes:g}",
           *(["--data-dir", args.data_dir] if args.data_dir else []), *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    load, load_started = None, None
    while proc.poll() is None:
        if load is None and args.load_minutes > 0 and time.perf_counter() - t0 >= args.load_at * budget_s:
            load_started = time.perf_counter() - t0
            load = start_load(args.load_core, args.load_minutes * 60)
            print(f"bench: load started at {load_started:.0f} s on core {args.load_core} "
                  f"for {args.load_minutes:g} min", flush=True)
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    if load is not None:
        load.terminate()
        load.wait()
    card_path = Path(REPO, args.run_dir, "run_card.json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    model, flags = cpu_info()
    summary = card.get("train_summary") or {}
    return {
        "returncode": proc.returncode, "wall_s": round(wall, 1), "budget_s": budget_s,
        "over_budget_pct": round(100 * (wall - budget_s) / budget_s, 2),
        "load": {"at_s": None if load_started is None else round(load_started, 1), "minutes": args.load_minutes,
                 "core": args.load_core},
        "budget_check": card.get("budget_check"), "replans": summary.get("replans"),
        "steps": summary.get("steps"), "metrics": card.get("metrics"), "phases": card.get("phases"),
        "cpu": {"model": model, "flags": [f for f in flags if f.startswith(("avx", "amx"))]},
        "command": cmd,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="cpu", help="the profile to run (default cpu)")
    p.add_argument("--data-dir", help="the dataset (default: the profile's)")
    p.add_argument("--run-dir", default="runs/budget-load", help="the run directory (started afresh by the runner)")
    p.add_argument("--budget-minutes", type=float, default=85.0, help="the whole report's budget (default 85)")
    p.add_argument("--load-at", type=float, default=0.5, help="start the load after this share of the budget")
    p.add_argument("--load-minutes", type=float, default=10.0, help="how long the load runs (0: a quiet run)")
    p.add_argument("--load-core", type=int, default=0, help="the core the load is pinned to")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "budget_load.json"), help="the JSON written")
    args, extra = p.parse_known_args(argv)
    if not 0 <= args.load_at <= 1 or args.load_minutes < 0 or args.budget_minutes <= 0:
        p.error("--load-at must lie in [0, 1], --load-minutes >= 0, --budget-minutes > 0")
    result = run(args, extra)
    b = result["budget_check"] or {}
    print(f"end to end {result['wall_s']:.0f} s against a budget of {result['budget_s']:.0f} s "
          f"({result['over_budget_pct']:+.1f} %); re-plans: {len(result['replans'] or [])}; "
          f"evaluation {b.get('evaluation_s')} s (estimated {b.get('evaluation_estimate_s')} s); "
          f"CPU {result['cpu']['model']} {' '.join(result['cpu']['flags'])}")
    write_json(args.out, result)
    print(f"wrote {args.out}")
    print(f"wrote {write_benchmark_card(card_name('bench_budget_load', args.out), args.out, argv if argv is not None else sys.argv[1:], script='bench_budget_load')}")
    return 0 if result["returncode"] == 0 else result["returncode"]


if __name__ == "__main__":
    sys.exit(main())
