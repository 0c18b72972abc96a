"""What a faster training step would buy: the `cpu` profile's step (64 triplets from the frozen
stages' outputs, 192 px) timed as committed and with each lever on top, on this CPU.

    python benchmarks/bench_step_levers.py                    # this CPU as it is
    python benchmarks/bench_step_levers.py --isa avx2         # oneDNN and ATen held to AVX2, fp32

Levers: ``fp32`` (no bf16 autocast), ``no-channels-last``, ``fused-adamw`` (torch's fused CPU
AdamW), ``compile`` (``torch.compile`` of the trained stages' forward; its compile time apart).
``--isa avx2`` runs the same rows in a child process whose oneDNN and ATen kernels are held to
AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``, ``ATEN_CPU_CAPABILITY=avx2``) and without bf16, as an AVX2-only
CPU runs the profile: the instruction set of that class, not its cores or memory. The step's
inputs are random stage maps of the right shape (the step's cost does not depend on their
values); the rows run interleaved, `--rounds` times, and each keeps its best round. Also lists
the operators that take most of the profile's step (``torch.profiler``). Prints a table with the
CPU's flags and writes JSON (default benchmarks/results/step_levers.json) and a card beside it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmark_card import card_name, write_benchmark_card
from ranking_lib.core.fileio import write_json
from ranking_lib.core.runcard import cpu_info
from ranking_lib.core.settings import resolve
from ranking_lib.models.inference import ModelInputs
from ranking_lib.models.model import build_model
from ranking_lib.models.stage_cache import stage_features_shape
from ranking_lib.run_settings import make_trainer, model_kwargs

LEVERS = ("profile", "fp32", "no-channels-last", "fused-adamw", "compile")
LEVER_SETTINGS = {"fp32": {"bf16_cpu": False}, "no-channels-last": {"channels_last": False},
                  "fused-adamw": {"optimizer": "adamw_fused"}}  # the levers that are run settings; compile is not
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def trainer_for(lever: str, base, n_images: int, run_dir: str):
    """The profile's trainer with `lever` on top, over random stage maps of `n_images` images."""
    cfg = base.replace(**LEVER_SETTINGS.get(lever, {}))
    net = build_model(**model_kwargs(cfg))
    shape = stage_features_shape(net, np.zeros((1, 64, 64, 3), np.uint8))[1:]
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((n_images, *shape), dtype=np.float32).astype(np.float16)
    labels = np.arange(n_images) % 200
    triplets = rng.integers(0, n_images, size=(4096, 3))
    trainer = make_trainer(cfg, net, ModelInputs(maps, "stage_features"), labels, triplets, run_dir=run_dir)
    if lever == "compile":
        trainer.model.features_from_stage = torch.compile(trainer.model.features_from_stage)
    trainer.model.train()
    return trainer


def timed_steps(trainer, first: int, steps: int) -> float:
    """Steps per second of `steps` steps from step `first`."""
    t0 = time.perf_counter()
    for s in range(first, first + steps):
        loss = trainer.step_loss(s)
    float(loss)
    return steps / (time.perf_counter() - t0)


def top_ops(trainer, first: int, steps: int = 5, k: int = 8) -> list[dict]:
    """The `k` operators with the most self CPU time over `steps` profiled steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for s in range(first, first + steps):
            trainer.step_loss(s)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "share_pct": round(100 * e.self_cpu_time_total / total, 1)} for e in events[:k]]


def measure(args) -> dict:
    base = resolve("cpu", {"data_dir": "unused"}).config
    if args.isa == "avx2":
        base = base.replace(bf16_cpu=False)  # the AVX2-only class runs fp32
    levers = [lv for lv in args.levers if not (args.isa == "avx2" and lv == "fp32")]
    with tempfile.TemporaryDirectory(prefix="bench-step-levers-") as tmp:
        trainers, setup_s = {}, {}
        for lv in levers:
            t0 = time.perf_counter()
            trainers[lv] = trainer_for(lv, base, args.images, str(Path(tmp, lv)))
            timed_steps(trainers[lv], 0, args.warmup)  # compiles, allocations, oneDNN's kernel choice
            setup_s[lv] = round(time.perf_counter() - t0, 1)
        best = dict.fromkeys(levers, 0.0)
        for r in range(args.rounds):
            for lv in levers:
                best[lv] = max(best[lv], timed_steps(trainers[lv], args.warmup + r * args.steps, args.steps))
        ops = top_ops(trainers["profile"], args.warmup + args.rounds * args.steps)
    ref = best["profile"]
    rows = [{"lever": lv, "steps_per_s": round(best[lv], 3), "x_profile": round(best[lv] / ref, 3),
             "setup_s": setup_s[lv]} for lv in levers]
    model, flags = cpu_info()
    return {"isa": args.isa, "bf16": base.bf16_cpu, "input_size": base.input_size, "batch_size": base.batch_size,
            "freeze_stages": base.freeze_stages, "threads": torch.get_num_threads(), "rounds": args.rounds,
            "steps_per_round": args.steps, "rows": rows, "top_ops_profile": ops,
            "cpu": {"model": model, "flags": [f for f in flags if f.startswith(("avx", "amx"))]},
            "env": {k: os.environ.get(k) for k in AVX2_ENV}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--isa", choices=("native", "avx2"), default="native",
                   help="native: this CPU as it is; avx2: kernels held to AVX2 and fp32, as the AVX2-only class runs")
    p.add_argument("--levers", nargs="+", choices=LEVERS, default=list(LEVERS), help="the rows (profile always first)")
    p.add_argument("--images", type=int, default=2048, help="random stage maps to draw batches from (default 2048)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per row first (default 5)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row and round (default 20)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each row keeps its best (default 3)")
    p.add_argument("--out", default=None, help="the JSON written (default benchmarks/results/step_levers[_avx2].json)")
    args = p.parse_args(argv)
    if min(args.images, args.warmup, args.steps, args.rounds) < 1:
        p.error("--images, --warmup, --steps and --rounds must be >= 1")
    args.levers = ["profile"] + [lv for lv in args.levers if lv != "profile"]
    out = Path(args.out or f"benchmarks/results/step_levers{'_avx2' if args.isa == 'avx2' else ''}.json")
    given = argv if argv is not None else sys.argv[1:]
    if args.isa == "avx2" and os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
        # the kernels' instruction set is chosen when torch loads: a child process with it held
        code = subprocess.call([sys.executable, __file__, *given, "--out", str(out)], env={**os.environ, **AVX2_ENV})
        if code == 0:  # the card names the command as typed
            print(f"wrote {write_benchmark_card(card_name('bench_step_levers', out), out, given, script='bench_step_levers')}")
        return code
    result = measure(args)
    print(f"{'lever':18s} {'steps/s':>8s} {'x profile':>9s} {'setup s':>8s}   ({result['cpu']['model']}; "
          f"{' '.join(result['cpu']['flags'])}; isa {args.isa}, bf16 {result['bf16']})")
    for r in result["rows"]:
        print(f"{r['lever']:18s} {r['steps_per_s']:8.2f} {r['x_profile']:9.3f} {r['setup_s']:8.1f}")
    print("profile's step, most self CPU time: " + ", ".join(f"{o['op']} {o['share_pct']:.0f} %"
                                                            for o in result["top_ops_profile"][:5]))
    write_json(out, result)
    print(f"wrote {out}")
    if args.isa == "native":  # the avx2 child's card is written by its parent
        print(f"wrote {write_benchmark_card(card_name('bench_step_levers', out), out, given, script='bench_step_levers')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
