"""The paper's method, measured: every ablation row (`ranking_lib.reporting.ablation.ROWS`) trained from
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

Equal wall time: ``--equal-time multiscale online`` repeats measured rows whose steps cost more
than the profile's, with ``steps * profile train_s / row train_s`` steps (rows
``<row>@equal-time``), so every recipe gets the same training time.

``--step-cost step_cost.json`` (from ``bench_step_cost.py``) takes the time-per-step ratios from
a measurement made with nothing else on the CPU instead.

``--frozen`` adds the row ``frozen``: the untrained network (``--model baseline``) of the profile
row's run dir, embedded and evaluated (no training). Rows record the class-level columns and the
similarity beyond the label (`ablation.SEMANTIC`: WordNet-graded neighbours, WordNet triplets,
near-duplicate recall), which ``evaluate`` computes by default.

Val once for the reduced-budget rows: ``--val-tuned frozen profile multiscale`` re-embeds each
measured row's run dir and evaluates it with val on (``embed|evaluate --config RUN/config.json
--evaluate-val``), recorded under ``tuned_val_rows``.

Full budget, val once: ``--val course profile`` runs ``python -m ranking_lib all`` with the
profile as it is (its own steps and input size, val evaluated) plus the row's overrides, and
records the val metrics under ``val_rows``; ``--val-from profile=RUN_DIR`` records a run made
earlier with that command instead (its config.json must match the row's, or it is refused).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ranking_lib.reporting import ablation
from ranking_lib.core.fileio import read_json, write_json
from ranking_lib.core.runcard import portable_arg

REPO = Path(__file__).resolve().parents[1]


def shown(sub: str, args: list[str]) -> str:
    """A row's command as another checkout types it: `sub` (``all``, ``embed|evaluate``) and the
    arguments it ran with, paths inside or beside the checkout relative (``runcard.portable_arg``)."""
    return f"python -m ranking_lib {sub} " + shlex.join(portable_arg(a) for a in args if a != "--quiet")

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


def run(cmd: list[str], log) -> None:
    log.write("$ " + shlex.join(cmd) + "\n")
    log.flush()
    r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if r.returncode:
        raise SystemExit(f"error: {shlex.join(cmd)} exited with {r.returncode} (see {log.name})")


def tune_flags(args) -> list[str]:
    """The flags every reduced-budget row shares: the profile at ``args.input_size`` px and
    ``args.steps`` steps, trained without the held-out images, val not evaluated, exact search
    (no query-time re-ranking: the rows compare what training learns)."""
    base = ["--profile", args.profile, "--data-dir", str(Path(args.data_dir).resolve()),
            "--holdout-per-class", str(args.holdout_per_class), "--no-evaluate-val",
            "--input-size", str(args.input_size), "--steps", str(args.steps), "--rerank", "none", "--quiet"]
    if args.cache_dir:
        base += ["--cache-dir", str(Path(args.cache_dir).resolve())]
    if getattr(args, "max_classes", None) is not None:  # bench_step_cost.py's subset
        base += ["--max-classes", str(args.max_classes)]
    return base


def equal_time_steps(steps: int, profile_row: dict, row: dict, step_cost: dict | None = None) -> int:
    """Steps that give `row` the profile's training time at `steps` steps: from the ratio of
    seconds per step measured by bench_step_cost.py when given, else from the two rows' own
    training times."""
    ratio = step_cost["ratio_to_profile"] if step_cost else row["train_s"] / profile_row["train_s"]
    return max(1, round(steps / ratio))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out-dir", default="runs/ablation")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--profile", default="cpu")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--holdout-per-class", type=int, default=50)
    p.add_argument("--rows", nargs="*", default=list(ablation.ROWS), choices=list(ablation.ROWS))
    p.add_argument("--equal-time", nargs="+", default=[], choices=list(ablation.ROWS), metavar="ROW",
                   help="re-run these measured rows at the profile's training time")
    p.add_argument("--step-cost", default=None, metavar="JSON",
                   help="for --equal-time: each row's time per step relative to the profile's, from "
                        "bench_step_cost.py (default: from the measured rows' training times)")
    p.add_argument("--val", nargs="+", default=[], choices=list(ablation.ROWS), metavar="ROW",
                   help="full-budget runs of these rows, evaluated on val once")
    p.add_argument("--val-from", nargs="+", default=[], metavar="ROW=RUN_DIR",
                   help="record finished full-budget runs as val rows (config checked)")
    p.add_argument("--val-tuned", nargs="+", default=[], choices=[*ablation.EXTRA_ROWS, *ablation.ROWS],
                   metavar="ROW", help="the measured reduced-budget rows (and 'frozen') re-embedded and evaluated "
                                       "with val on, once each (recorded under tuned_val_rows)")
    p.add_argument("--frozen", action="store_true",
                   help="also record the frozen pretrained backbone (--model baseline of the profile row's run)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / ablation.RESULTS_FILE))
    p.add_argument("--again", action="store_true", help="re-run rows already in the results file")
    args = p.parse_args(argv)

    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = tune_flags(args)
    results_path = Path(args.results)
    results = ablation.load(results_path) or {"rows": []}
    from ranking_lib.core.settings import resolve

    wnids = (Path(args.data_dir) / "wnids.txt").read_text().split()
    classes = min(len(wnids), resolve(args.profile).config.max_classes or len(wnids))
    results.setdefault("hardware", hardware())  # the sweep's machine; every row records its own
    results.update(split="tune", profile=args.profile,
                   data=f"{Path(args.data_dir).resolve().name}, {classes} classes",
                   budget=f"{args.profile} profile at {args.input_size} px, {args.steps} steps", steps=args.steps,
                   base_command=shown("STEP", base))
    py = [sys.executable, "-m", "ranking_lib"]
    log = open(out / "ablation.log", "a")

    todo = [n for n in args.rows if args.again or not ablation.row(results, n)]
    todo_equal = [n for n in args.equal_time if args.again or not ablation.row(results, n + ablation.EQUAL_TIME)]
    if todo or todo_equal:
        # shared inputs first: image cache, frozen-stage features, golden features (timed apart;
        # the first sweep's time is kept, later ones find them cached)
        t0 = time.perf_counter()
        golden = any(resolve(args.profile, {**ablation.ROWS[n][0], "data_dir": args.data_dir}).config.uses_relevance
                     for n in todo + todo_equal)  # relevance-weighted rows read golden features
        warm = base + ["--run-dir", str(out / "_warm"), "--out-of-class-fraction", "0.5" if golden else "1.0",
                       "--steps", "1"]
        run(py + ["prepare"] + warm, log)
        run(py + ["sample"] + warm, log)   # golden features, where a row needs them
        run(py + ["train"] + warm + ["--no-resume"], log)  # frozen-stage features
        results.setdefault("shared_s", round(time.perf_counter() - t0, 1))

    def measure(name: str, overrides: dict) -> None:
        run_dir = out / name
        cmd = base + ["--run-dir", str(run_dir)] + ablation.override_flags(overrides)
        t = time.perf_counter()
        run(py + ["sample"] + cmd, log)
        t_train = time.perf_counter()
        run(py + ["train", "--no-resume"] + cmd, log)
        train_s = time.perf_counter() - t_train
        run(py + ["embed"] + cmd, log)
        run(py + ["evaluate"] + cmd, log)
        wall = time.perf_counter() - t
        metrics = read_json(run_dir / "metrics_trained.json", "metrics")["tune"]
        entry = {"name": name, "overrides": overrides, "wall_s": round(wall, 1), "train_s": round(train_s, 1),
                 "hardware": hardware(),
                 "command": shown("all", cmd),
                 "metrics": {k: metrics[k] for k in ablation.COLUMNS if k in metrics}}
        results["rows"] = [r for r in results["rows"] if r["name"] != name] + [entry]
        write_json(results_path, results)
        print(f"{name}: tune P@30 {entry['metrics']['precision@30']:.2f}  ({wall / 60:.1f} min)", flush=True)

    for name in args.rows:
        if name not in todo:
            print(f"{name}: already measured, skipped (--again re-runs it)")
            continue
        measure(name, ablation.ROWS[name][0])

    if args.frozen and (args.again or not ablation.row(results, "frozen")):
        run_dir = out / "profile"  # the profile row's triplets and config; the untrained network
        if not (run_dir / "config.json").is_file():
            raise SystemExit("error: --frozen needs the measured 'profile' row first (its run dir)")
        cmd = base + ["--run-dir", str(run_dir), "--model", "baseline"]
        t = time.perf_counter()
        run(py + ["embed"] + cmd, log)
        run(py + ["evaluate"] + cmd, log)
        metrics = read_json(run_dir / "metrics_baseline.json", "metrics")["tune"]
        entry = {"name": "frozen", "overrides": {}, "model": "baseline", "wall_s": round(time.perf_counter() - t, 1),
                 "train_s": 0.0, "hardware": hardware(),
                 "command": shown("embed|evaluate", cmd),
                 "metrics": {k: metrics[k] for k in ablation.COLUMNS if k in metrics}}
        results["rows"] = [r for r in results["rows"] if r["name"] != "frozen"] + [entry]
        write_json(results_path, results)
        print(f"frozen: tune P@30 {entry['metrics']['precision@30']:.2f}", flush=True)

    for name in args.equal_time:
        ref, measured = ablation.row(results, "profile"), ablation.row(results, name)
        cost = None
        if args.step_cost:  # the ratio measured apart: the row itself need not have run at full steps
            cost = ablation.row(read_json(args.step_cost, "--step-cost file"), name)
            if cost is None:
                raise SystemExit(f"error: --step-cost {args.step_cost} has no row {name!r}")
        elif ref is None or measured is None:
            raise SystemExit(f"error: --equal-time {name} needs the measured 'profile' and {name!r} rows first "
                             "(or --step-cost)")
        steps = equal_time_steps(args.steps, ref, measured, cost)
        if name not in todo_equal:
            print(f"{name}{ablation.EQUAL_TIME}: already measured, skipped (--again re-runs it)")
            continue
        measure(name + ablation.EQUAL_TIME, {**ablation.ROWS[name][0], "steps": steps})

    full = ["--profile", args.profile, "--data-dir", str(Path(args.data_dir).resolve()), "--quiet"]
    if args.cache_dir:
        full += ["--cache-dir", str(Path(args.cache_dir).resolve())]
    profile_cfg = resolve(args.profile).config
    results["val_budget"] = (f"{args.profile} profile: {profile_cfg.input_size} px, {profile_cfg.steps:,} steps, "
                             f"{classes} classes")

    def record_val(name: str, run_dir: Path, wall_s: float | None, command: str) -> None:
        from ranking_lib.core.config import RunConfig
        from ranking_lib.training.checkpoint import resume_differences

        overrides = ablation.ROWS[name][0]
        saved = RunConfig.load(run_dir / "config.json")
        want = resolve(args.profile, {**overrides, "data_dir": str(Path(args.data_dir).resolve())}).config
        diff = resume_differences(saved.to_dict(), want.to_dict())
        if diff:
            raise SystemExit(f"error: {run_dir} was not made with row {name!r}'s settings: " +
                             ", ".join(f"{k}={a!r} (row: {b!r})" for k, (a, b) in diff.items()))
        metrics = read_json(run_dir / "metrics_trained.json", "metrics")
        if "val" not in metrics:
            raise SystemExit(f"error: {run_dir} has no val metrics (evaluate it with val on)")
        summary = read_json(run_dir / "train_summary.json", "training summary")
        entry = {"name": name, "overrides": overrides, "train_s": round(summary["wall_s"], 1),
                 "wall_s": None if wall_s is None else round(wall_s, 1), "hardware": hardware(),
                 "command": command,
                 "metrics": {k: metrics["val"][k] for k in ablation.COLUMNS if k in metrics["val"]}}
        results["val_rows"] = [r for r in results.get("val_rows", []) if r["name"] != name] + [entry]
        write_json(results_path, results)
        print(f"{name}: val P@30 {entry['metrics']['precision@30']:.2f} (full budget)", flush=True)

    for name in args.val_tuned:
        measured = ablation.row(results, name)
        if measured is None:
            raise SystemExit(f"error: --val-tuned {name} needs the measured {name!r} row first")
        if ablation.row(results, name, "tuned_val_rows") and not args.again:
            print(f"{name}: val of the reduced-budget row already measured, skipped (--again re-runs it)")
            continue
        frozen = name in ablation.EXTRA_ROWS
        run_dir = out / ("profile" if frozen else name)
        model = ["--model", "baseline"] if frozen else []
        cmd = ["--config", str(run_dir / "config.json"), "--evaluate-val", "--quiet", *model]
        t = time.perf_counter()
        run(py + ["embed"] + cmd, log)
        run(py + ["evaluate"] + cmd, log)
        metrics = read_json(run_dir / f"metrics_{'baseline' if frozen else 'trained'}.json", "metrics")
        entry = {"name": name, "overrides": measured["overrides"], "model": measured.get("model", "trained"),
                 "wall_s": round(time.perf_counter() - t, 1),
                 "hardware": hardware(),
                 "command": shown("embed|evaluate", cmd),
                 "metrics": {k: metrics["val"][k] for k in ablation.COLUMNS if k in metrics["val"]}}
        results["tuned_val_rows"] = [r for r in results.get("tuned_val_rows", []) if r["name"] != name] + [entry]
        write_json(results_path, results)
        print(f"{name}: val P@30 {entry['metrics']['precision@30']:.2f} (reduced budget)", flush=True)

    for spec in args.val_from:
        name, _, run_dir = spec.partition("=")
        if name not in ablation.ROWS or not run_dir:
            raise SystemExit(f"error: --val-from expects ROW=RUN_DIR with ROW one of {', '.join(ablation.ROWS)}")
        card = Path(run_dir, "run_card.json")  # the command that made the run (a report's card), else the run dir
        made = read_json(card, "run card").get("command") if card.is_file() else None
        record_val(name, Path(run_dir), None, made or f"(recorded from {portable_arg(str(Path(run_dir).resolve()))})")
    for name in args.val:
        if ablation.row(results, name, "val_rows") and not args.again:
            print(f"{name}: val row already measured, skipped (--again re-runs it)")
            continue
        run_dir = out / f"val-{name}"
        t = time.perf_counter()
        cmd = full + ["--run-dir", str(run_dir)] + ablation.override_flags(ablation.ROWS[name][0])
        run(py + ["all"] + cmd, log)
        record_val(name, run_dir, time.perf_counter() - t, shown("all", cmd))
    order = list(ablation.EXTRA_ROWS) + list(ablation.ROWS)

    def position(r):
        base = r["name"].removesuffix(ablation.EQUAL_TIME)
        return (order.index(base) if base in order else len(order), r["name"])

    results["rows"].sort(key=position)
    results.get("val_rows", []).sort(key=position)
    results.get("tuned_val_rows", []).sort(key=position)
    write_json(results_path, results)
    print(ablation.table(results).round(2).to_string())
    ablation.plot_out_of_class(results, results_path.with_name("ablation_out_of_class.png"))
    from benchmark_card import card_name, write_benchmark_card

    name = card_name("bench_ablation", results_path)  # ablation_fine.json: bench_ablation-fine
    print(f"wrote {write_benchmark_card(name, results_path, argv, script='bench_ablation')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
