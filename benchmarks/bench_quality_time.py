"""Quality per wall-clock: val precision@30 against training time, two ways to fine-tune.

* profile: the run profile as it is (e.g. ``cpu``: the first 7 stages frozen, their outputs
  computed once; each step trains only the top of the network). Its curve starts after the
  time spent computing the frozen-stage outputs of the 100,000 training images, which this
  script measures (into memory, the on-disk stage cache is not used).
* full fine-tune: the same profile with every stage trainable (``freeze_stages=0``, no stage
  cache): the naive recipe. Images come from the same uint8 cache; on a CPU the per-image
  PIL + DataLoader path of the course notes is no faster (``bench_train.py``).

Both use the same pretrained backbone, input size, head initialisation, loss, miner,
optimiser, learning rate and batch. Each trains for ``--budget-min`` minutes of training
time (the full fine-tune that plus the profile's frozen-stage pass, so both curves end at the
same minute); its cosine schedule is sized to the budget from the step time measured on a few
probe steps. Every ``--eval-every-min`` minutes of training (and at the start and the end) the
clock stops and precision@30 is measured: ``--val-queries`` seeded val images against a
seeded database of ``--db-per-class`` training images per class (exact search). That
protocol is cheaper than the full one (all 10,000 val queries against all 100,000 training
images) so its numbers are not the report's; both curves use the same protocol.

    python benchmarks/bench_quality_time.py --data-dir data/tiny-imagenet-200 --profile cpu \\
        --budget-min 12 --eval-every-min 4 --val-queries 1000 --db-per-class 50

(the profile's ``env`` settings are applied by re-executing the script when they are missing).
Prints a table and writes JSON and a PNG plot (default ``benchmarks/results/quality_time.*``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch


from ranking_lib.core.config import RunConfig
from ranking_lib.core.settings import apply_env, resolve
from ranking_lib.data import TinyImageNet, load_or_build_cache
from ranking_lib.core.errors import RankingError
from ranking_lib.retrieval.index import EmbeddingIndex
from ranking_lib.retrieval.metrics import precision_at_k
from ranking_lib.models.model import build_model
from ranking_lib.run_settings import make_trainer, model_kwargs
from ranking_lib.triplets.samplers import TripletSampler
from ranking_lib.models.stage_cache import compute_stage_features
from ranking_lib.training.trainer import resolve_device
from ranking_lib.models.inference import ModelInputs, embed_images
from ranking_lib.workflow import initial_model

K = 30


def eval_subsets(train_labels: np.ndarray, n_val: int, db_per_class: int, n_val_total: int, seed: int):
    rng = np.random.default_rng(seed)
    smallest = int(np.bincount(train_labels).min())
    if db_per_class > smallest:
        raise RankingError(f"--db-per-class {db_per_class} exceeds the smallest class ({smallest} training images)")
    db = np.sort(np.concatenate([rng.choice(np.flatnonzero(train_labels == c), size=db_per_class, replace=False)
                                 for c in np.unique(train_labels)]))
    val = np.sort(rng.choice(n_val_total, size=min(n_val, n_val_total), replace=False))
    return db, val


def precision30(net, db_inputs, db_labels, q_inputs, q_labels, batch_size: int, device: str) -> float:
    zdb = embed_images(net, db_inputs, batch_size, device, progress=False)
    zq = embed_images(net, q_inputs, batch_size, device, progress=False)
    idx, _ = EmbeddingIndex(zdb, db_labels).topk(zq, K)
    return precision_at_k(db_labels[idx], q_labels, K)


def train_curve(name: str, cfg: RunConfig, wnids, inputs, labels, triplets, evalset, budget_s: float,
                every_s: float, t_offset: float, probe_steps: int, run_dir: Path) -> dict:
    """Train `cfg` for `budget_s` seconds of training time; evaluate every `every_s` seconds."""
    # probe: a few steps on a throw-away copy size the cosine schedule to the budget
    probe = make_trainer(cfg.replace(steps=10**6), initial_model(cfg, wnids), inputs, labels, triplets,
                         run_dir=run_dir / "probe")
    probe.model.train()
    probe.step_loss(0).item()
    t0 = time.perf_counter()
    for s in range(1, probe_steps + 1):
        probe.step_loss(s).item()
    step_s = (time.perf_counter() - t0) / probe_steps
    del probe
    steps = max(cfg.warmup_steps + 1, int(budget_s / step_s))
    cfg = cfg.replace(steps=steps)
    trainer = make_trainer(cfg, initial_model(cfg, wnids), inputs, labels, triplets, run_dir=run_dir / name)
    print(f"[{name}] probe {step_s * 1000:.0f} ms/step -> cosine schedule over {steps} steps "
          f"({budget_s / 60:.1f} min budget)", flush=True)

    points, train_s, eval_s, next_eval = [], 0.0, 0.0, 0.0
    step = 0
    while True:
        if train_s >= next_eval or step >= steps or train_s >= budget_s:
            t = time.perf_counter()
            p = precision30(trainer.model, *evalset, cfg.embed_batch_size, cfg.device)
            eval_s += time.perf_counter() - t
            points.append({"train_min": (t_offset + train_s) / 60, "step": step, "precision@30": p})
            print(f"[{name}] {points[-1]['train_min']:6.2f} min  step {step:6d}  P@30 {p:6.2f}", flush=True)
            trainer.model.train()
            next_eval += every_s
            if step >= steps or train_s >= budget_s:
                break
        t = time.perf_counter()
        trainer.step_loss(step).item()
        train_s += time.perf_counter() - t
        step += 1
    return {"name": name, "steps_planned": steps, "steps_done": step, "probe_ms_per_step": step_s * 1000,
            "train_s": train_s, "offset_s": t_offset, "eval_s": eval_s,
            "triplets_per_s": step * cfg.batch_size / train_s if train_s else 0.0, "points": points}


def plot(curves: list[dict], info: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for c in curves:
        xs = [p["train_min"] for p in c["points"]]
        ys = [p["precision@30"] for p in c["points"]]
        ax.plot(xs, ys, marker="o", label=c["label"])
    ax.axhline(60, color="grey", ls=":", lw=1, label="course target (60 %, full protocol)")
    ax.set_xlabel("training wall-clock (min; profile includes the frozen-stage pass)")
    ax.set_ylabel("val precision@30 (%)")
    ax.set_title(f"{info['backbone']} {info['input_size']} px, batch {info['batch_size']}, "
                 f"{info['torch_threads']} CPU threads", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main(argv: list[str] | None = None, reexec: bool = False) -> int:
    try:
        return run(argv, reexec)
    except RankingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(argv: list[str] | None, reexec: bool) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--max-classes", type=int, default=200)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--input-size", type=int, default=None, help="input pixels (default: the profile's)")
    ap.add_argument("--budget-min", type=float, default=15.0, help="training minutes per curve")
    ap.add_argument("--eval-every-min", type=float, default=3.0)
    ap.add_argument("--val-queries", type=int, default=2000)
    ap.add_argument("--db-per-class", type=int, default=100)
    ap.add_argument("--probe-steps", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/quality_time.json")
    args = ap.parse_args(argv)
    for name in ("budget_min", "eval_every_min", "val_queries", "db_per_class", "probe_steps"):
        if getattr(args, name) <= 0:
            raise RankingError(f"--{name.replace('_', '-')} must be > 0 (got {getattr(args, name)})")

    given = {"data_dir": args.data_dir, "max_classes": args.max_classes, "cache_dir": args.cache_dir,
             "input_size": args.input_size}
    resolved = resolve(args.profile, {**{k: v for k, v in given.items() if v is not None},
                                      "run_dir": "/tmp/bench_quality_time"})
    # as a script: re-executed once with the profile's env; a caller of main() keeps its process
    apply_env(resolved.env, sys.argv if reexec else None)
    cfg = resolved.config
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    ds = TinyImageNet(cfg.data_dir, max_classes=cfg.max_classes)
    train = load_or_build_cache(ds, "train", cfg.cache_dir)
    val = load_or_build_cache(ds, "val", cfg.cache_dir)
    triplets = TripletSampler(train.labels, seed=cfg.seed).sample(cfg.num_triplets)
    db_ids, q_ids = eval_subsets(train.labels, args.val_queries, args.db_per_class, len(val), cfg.seed)
    db_lab, q_lab = train.labels[db_ids], val.labels[q_ids]
    run_dir = Path(cfg.run_dir)
    curves = []

    # 1) the profile (frozen stages cached): its clock starts with the frozen-stage pass
    if cfg.cache_stage_features:
        net = build_model(**model_kwargs(cfg))
        t = time.perf_counter()
        feats = compute_stage_features(net, train.images, batch_size=cfg.embed_batch_size, device=device,
                                       progress=False)
        build_s = time.perf_counter() - t
        print(f"[profile] frozen-stage outputs of {len(train)} training images: {build_s:.0f} s", flush=True)
        q_feats = compute_stage_features(net, val.images[q_ids], batch_size=cfg.embed_batch_size, device=device,
                                         progress=False)
        evalset = (ModelInputs(feats[db_ids], "stage_features"), db_lab, ModelInputs(q_feats, "stage_features"), q_lab)
        c = train_curve("profile", cfg, train.wnids, ModelInputs(feats, "stage_features"), train.labels, triplets, evalset, args.budget_min * 60,
                        args.eval_every_min * 60, build_s, args.probe_steps, run_dir)
        c["label"] = f"{args.profile} profile (first {cfg.freeze_stages} stages frozen + cached)"
        c["stage_pass_s"] = build_s
        curves.append(c)
        del feats, q_feats

    # 2) naive full fine-tune: every stage trainable, no stage cache
    full = cfg.replace(freeze_stages=0, cache_stage_features=False)
    evalset = (np.asarray(train.images[db_ids]), db_lab, np.asarray(val.images[q_ids]), q_lab)
    # same end on the clock: the full fine-tune also gets the minutes of the frozen-stage pass
    full_budget = args.budget_min * 60 + sum(c.get("stage_pass_s", 0.0) for c in curves)
    c = train_curve("full", full, train.wnids, train.images, train.labels, triplets, evalset, full_budget,
                    args.eval_every_min * 60, 0.0, args.probe_steps, run_dir)
    c["label"] = "full fine-tune (all stages trainable)"
    curves.append(c)

    info = {"profile": args.profile, "backbone": cfg.backbone, "input_size": cfg.input_size,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "miner": cfg.miner, "gap": cfg.gap,
            "budget_min": args.budget_min, "eval_every_min": args.eval_every_min,
            "val_queries": len(q_ids), "db_images": len(db_ids),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "malloc_env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")}}
    print(f"\nval precision@30 ({info['val_queries']} val queries vs {info['db_images']} training images) "
          f"against training minutes; {info['torch_threads']} threads")
    print("| curve | minutes | step | P@30 |\n|---|---:|---:|---:|")
    for c in curves:
        for p in c["points"]:
            print(f"| {c['name']} | {p['train_min']:.1f} | {p['step']} | {p['precision@30']:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"info": info, "curves": curves}, indent=2) + "\n")
    plot(curves, info, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    from benchmark_card import write_benchmark_card

    print(f"wrote {write_benchmark_card('bench_quality_time', out, argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(reexec=True))
