"""The paper's method, measured: every ablation row (`ranking_lib.ablation.ROWS`) trained from
one base recipe at one budget and scored on the tuning split (val never looked at).

    python benchmarks/bench_ablation.py --data-dir data/tiny-imagenet-200 --out-dir runs/ablation \\
        --input-size 128 --steps 3000

Each row runs ``python -m ranking_lib sample | train | embed | evaluate`` in its own run dir
with the base flags (``--profile cpu --holdout-per-class 50 --no-evaluate-val`` and the
budget) plus the row's overrides. Its wall time covers those four commands; the decoded
image cache, the frozen-stage features and the golden features are built once, before the
first row, and shared (their time is reported apart). Results are written after every row
(``benchmarks/results/ablation.json``, atomically), and rows already there are skipped
unless ``--again``: a killed sweep goes on where it stopped. The report reads the measured copy
in ``docs/figures/`` (copy the JSON and PNG there to publish a new sweep).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ranking_lib import ablation
from ranking_lib.fileio import write_json

REPO = Path(__file__).resolve().parents[1]


def hardware() -> str:
    model = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}"


def flags(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        name = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out.append(name if v else "--no-" + k.replace("_", "-"))
        else:
            out += [name, str(v)]
    return out


def run(cmd: list[str], log) -> None:
    log.write("$ " + shlex.join(cmd) + "\n")
    log.flush()
    r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if r.returncode:
        raise SystemExit(f"error: {shlex.join(cmd)} exited with {r.returncode} (see {log.name})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out-dir", default="runs/ablation")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--profile", default="cpu")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--holdout-per-class", type=int, default=50)
    p.add_argument("--rows", nargs="+", default=list(ablation.ROWS), choices=list(ablation.ROWS))
    p.add_argument("--results", default=str(ablation.RESULTS_PATH))
    p.add_argument("--again", action="store_true", help="re-run rows already in the results file")
    args = p.parse_args(argv)

    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = ["--profile", args.profile, "--data-dir", str(Path(args.data_dir).resolve()),
            "--holdout-per-class", str(args.holdout_per_class), "--no-evaluate-val",
            "--input-size", str(args.input_size), "--steps", str(args.steps), "--quiet"]
    if args.cache_dir:
        base += ["--cache-dir", str(Path(args.cache_dir).resolve())]
    results_path = Path(args.results)
    results = ablation.load(results_path) or {"rows": []}
    from ranking_lib.settings import resolve

    wnids = (Path(args.data_dir) / "wnids.txt").read_text().split()
    classes = min(len(wnids), resolve(args.profile).config.max_classes or len(wnids))
    results.update(split="tune", hardware=hardware(), profile=args.profile,
                   data=f"{Path(args.data_dir).resolve().name}, {classes} classes",
                   budget=f"{args.profile} profile at {args.input_size} px, {args.steps} steps",
                   base_command="python -m ranking_lib STEP " + shlex.join(base))
    py = [sys.executable, "-m", "ranking_lib"]
    log = open(out / "ablation.log", "a")

    # shared inputs first: image cache, frozen-stage features, golden features (timed apart)
    t0 = time.perf_counter()
    warm = base + ["--run-dir", str(out / "_warm"), "--out-of-class-fraction", "0.5", "--steps", "1"]
    run(py + ["prepare"] + warm, log)
    run(py + ["sample"] + warm, log)   # golden features
    run(py + ["train"] + warm + ["--no-resume"], log)  # frozen-stage features
    results["shared_s"] = round(time.perf_counter() - t0, 1)

    for name in args.rows:
        if ablation.row(results, name) and not args.again:
            print(f"{name}: already measured, skipped (--again re-runs it)")
            continue
        overrides = ablation.ROWS[name][0]
        run_dir = out / name
        cmd = base + ["--run-dir", str(run_dir)] + flags(overrides)
        t = time.perf_counter()
        run(py + ["sample"] + cmd, log)
        t_train = time.perf_counter()
        run(py + ["train", "--no-resume"] + cmd, log)
        train_s = time.perf_counter() - t_train
        run(py + ["embed"] + cmd, log)
        run(py + ["evaluate"] + cmd, log)
        wall = time.perf_counter() - t
        metrics = json.loads((run_dir / "metrics_trained.json").read_text())["tune"]
        entry = {"name": name, "overrides": overrides, "wall_s": round(wall, 1), "train_s": round(train_s, 1),
                 "command": "python -m ranking_lib all " + shlex.join(
                     [a for a in base if a != "--quiet"] + ["--run-dir", f"runs/ablation/{name}"] + flags(overrides)),
                 "metrics": {k: metrics[k] for k in ablation.COLUMNS if k in metrics}}
        results["rows"] = [r for r in results["rows"] if r["name"] != name] + [entry]
        write_json(results_path, results)
        print(f"{name}: tune P@30 {entry['metrics']['precision@30']:.2f}  ({wall / 60:.1f} min)", flush=True)
    order = list(ablation.ROWS)
    results["rows"].sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    write_json(results_path, results)
    print(ablation.table(results).round(2).to_string())
    ablation.plot_out_of_class(results, results_path.with_name("ablation_out_of_class.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
