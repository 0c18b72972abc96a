"""Training time per step of ablation rows on this machine, against the profile's row.

    python benchmarks/bench_step_cost.py --data-dir data/tiny-imagenet-200 --cache-dir <cache> \\
        --rows profile multiscale online --input-size 128 --steps 300

Each row runs ``python -m ranking_lib sample`` and ``train --no-resume`` (the ablation's base
flags: ``--profile cpu --holdout-per-class 50 --no-evaluate-val`` and the budget, plus the
row's overrides) in ``<out-dir>/<row>``, one row after the other, and reads the training loop's
own time from ``train_summary.json`` (caches are built before the first row and not counted).
The ratio to the profile's seconds per step is what ``bench_ablation.py --equal-time`` needs to
give a row the profile's training time: ``bench_ablation.py --step-cost <this JSON>`` takes it
from here instead of from the sweep's rows (whose times may have shared the CPU).
Prints a table and writes ``benchmarks/results/step_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench_ablation import REPO, hardware, run, tune_flags  # beside this script: python puts its folder first

from ranking_lib.reporting import ablation
from ranking_lib.core.fileio import write_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--max-classes", type=int, default=None, help="the first N classes only (default: all)")
    p.add_argument("--out-dir", default="runs/step_cost")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--holdout-per-class", type=int, default=50)
    p.add_argument("--rows", nargs="+", default=["profile", "multiscale", "online"], choices=list(ablation.ROWS))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "step_cost.json"))
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if "profile" not in args.rows:
        args.rows.insert(0, "profile")

    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = tune_flags(args)
    py = [sys.executable, "-m", "ranking_lib"]
    log = open(out / "step_cost.log", "a")
    rows = []
    for name in args.rows:
        cmd = base + ["--run-dir", str(out / name)] + ablation.override_flags(ablation.ROWS[name][0])
        run(py + ["sample"] + cmd, log)
        run(py + ["train", "--no-resume"] + cmd, log)
        wall = json.loads((out / name / "train_summary.json").read_text())["wall_s"]
        rows.append({"name": name, "overrides": ablation.ROWS[name][0], "steps": args.steps,
                     "train_s": round(wall, 2), "s_per_step": wall / args.steps})
        print(f"{name}: {wall:.1f} s for {args.steps} steps ({1000 * wall / args.steps:.0f} ms/step)", flush=True)
    ref = rows[0]["s_per_step"]
    for r in rows:
        r["ratio_to_profile"] = round(r["s_per_step"] / ref, 3)
    write_json(Path(args.out), {"hardware": hardware(), "profile": args.profile, "input_size": args.input_size,
                                "steps": args.steps, "rows": rows})
    print(f"\n{'row':14s} {'ms/step':>8s} {'x profile':>9s}   ({hardware()}, {args.input_size} px)")
    for r in rows:
        print(f"{r['name']:14s} {1000 * r['s_per_step']:8.0f} {r['ratio_to_profile']:9.3f}")
    print(f"wrote {args.out}")
    from benchmark_card import card_name, write_benchmark_card

    name = card_name("bench_step_cost", args.out)  # step_cost_backbone.json: bench_step_cost-backbone
    print(f"wrote {write_benchmark_card(name, args.out, argv, script='bench_step_cost')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
