"""Training throughput (triplets/s): the project's path vs a naive path, same run, same model.

* naive: a `DataLoader` over triplets that opens and decodes the three JPEGs with PIL for
  every triplet, then three separate forward passes (Q, P, N) per step;
* project: triplets index the decoded uint8 cache; Q, P and N go through the network as one
  batch of 3B (frozen BatchNorm, channels-last);
* project + stage cache (optional, ``--freeze-stages K``): the frozen stages' outputs are
  precomputed once (the time to build them is reported separately) and each step runs only
  the top of the network.

    python benchmarks/bench_train.py --data-dir data/tiny-imagenet-200 --max-classes 200 \
        --input-size 128 --batch-size 32 --steps 10 --freeze-stages 7

Prints a table and writes JSON (default benchmarks/results/train_throughput.json).
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
from PIL import Image


from ranking_lib.core.config import RunConfig
from ranking_lib.data import TinyImageNet, load_or_build_cache
from ranking_lib.core.devices import cpu_has_bf16
from ranking_lib.models.inference import ModelInputs
from ranking_lib.training.losses import RankingLoss
from ranking_lib.models.model import build_model
from ranking_lib.run_settings import make_trainer, model_kwargs
from ranking_lib.triplets.samplers import TripletSampler


class JpegTriplets(torch.utils.data.Dataset):
    """The naive data path: decode three JPEG files per triplet, every time."""

    def __init__(self, root: Path, paths: list[str], triplets: np.ndarray) -> None:
        self.root, self.paths, self.triplets = root, paths, triplets

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, i: int):
        out = []
        for j in self.triplets[i]:
            img = Image.open(self.root / self.paths[j]).convert("RGB")
            out.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()))
        return tuple(out)


def time_naive(cfg: RunConfig, root: Path, paths: list[str], triplets: np.ndarray, steps: int, workers: int) -> float:
    net = build_model(**model_kwargs(cfg.replace(freeze_bn=False))).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = RankingLoss(cfg.gap)
    loader = torch.utils.data.DataLoader(JpegTriplets(root, paths, triplets), batch_size=cfg.batch_size,
                                         shuffle=True, num_workers=workers, drop_last=True)
    it = iter(loader)
    q, p, n = next(it)  # warm-up step, not timed
    loss_fn(net(q), net(p), net(n)).backward()
    t0 = time.perf_counter()
    for _ in range(steps):
        q, p, n = next(it)
        loss = loss_fn(net(q), net(p), net(n))  # three separate forward passes
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def time_project(cfg: RunConfig, inputs: np.ndarray, labels: np.ndarray, triplets: np.ndarray, steps: int,
                 run_dir: Path) -> float:
    trainer = make_trainer(cfg, build_model(**model_kwargs(cfg)), inputs, labels, triplets, run_dir=run_dir)
    trainer.model.train()
    trainer.step_loss(0).item()  # warm-up
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        trainer.step_loss(s).item()
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--max-classes", type=int, default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--freeze-stages", type=int, default=0, help="also time the stage-cache path with K frozen stages")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bf16", action="store_true", help="also time bf16 CPU autocast (where the CPU has it) "
                    "against fp32, and the frozen-stage pass in both, in the same run")
    ap.add_argument("--env-profile", help="run with this profile's env (e.g. cpu: its allocator settings)")
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = ap.parse_args(argv)
    if args.env_profile:  # settings read at process start: re-executed once with them
        from ranking_lib.core.settings import apply_env, resolve

        apply_env(resolve(args.env_profile).env, sys.argv if argv is None else None)

    ds = TinyImageNet(args.data_dir, max_classes=args.max_classes)
    cache = load_or_build_cache(ds, "train", args.cache_dir)
    triplets = TripletSampler(cache.labels, seed=0).sample(max(10_000, args.batch_size * (args.steps + 2)))
    cfg = RunConfig(data_dir=args.data_dir, backbone=args.backbone, input_size=args.input_size,
                    batch_size=args.batch_size, device=args.device, augment=False, miner="none", lr=1e-3)
    run_dir = Path("/tmp/bench_train_run")
    rows = []
    naive = time_naive(cfg, ds.root, cache.paths, triplets, args.steps, args.workers)
    rows.append({"path": f"naive (PIL per image, DataLoader x{args.workers} workers, 3 forwards)", "triplets_per_s": naive})
    proj = time_project(cfg, cache.images, cache.labels, triplets, args.steps, run_dir)
    rows.append({"path": "project (uint8 cache, one 3B batch, frozen BN)", "triplets_per_s": proj})
    if args.freeze_stages:
        from ranking_lib.models.stage_cache import load_or_build_stage_features

        scfg = cfg.replace(freeze_stages=args.freeze_stages, cache_stage_features=True)
        net = build_model(**model_kwargs(scfg))
        t0 = time.perf_counter()
        feats = ModelInputs(load_or_build_stage_features(net, cache, pretrained=True, device=net.head.weight.device),
                            "stage_features")
        build_s = time.perf_counter() - t0
        sp = time_project(scfg, feats, cache.labels, triplets, args.steps, run_dir)
        rows.append({"path": f"project + stage cache (first {args.freeze_stages} stages frozen)",
                     "triplets_per_s": sp, "stage_cache_build_s": build_s})
        if args.bf16:
            from ranking_lib.models.stage_cache import compute_stage_features

            bcfg = scfg.replace(bf16_cpu=True)
            n = min(len(cache), 2048)  # the frozen-stage pass on the same images, fp32 then bf16
            pass_s = {}
            for bf in (False, True):
                t0 = time.perf_counter()
                compute_stage_features(net, cache.images[:n], device="cpu", progress=False, bf16_cpu=bf)
                pass_s[bf] = time.perf_counter() - t0
            bp = time_project(bcfg, feats, cache.labels, triplets, args.steps, run_dir)
            rows.append({"path": f"project + stage cache, bf16 autocast (first {args.freeze_stages} frozen)",
                         "triplets_per_s": bp, "bf16_vs_fp32_step": bp / sp,
                         "stage_pass_img_per_s_fp32": n / pass_s[False], "stage_pass_img_per_s_bf16": n / pass_s[True],
                         "bf16_vs_fp32_stage_pass": pass_s[False] / pass_s[True]})
    for r in rows:
        r["vs_naive"] = r["triplets_per_s"] / naive
    info = {"backbone": args.backbone, "input_size": args.input_size, "batch_size": args.batch_size,
            "steps": args.steps, "device": str(cfg.device), "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "malloc_env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")},
            "cpu_has_bf16": cpu_has_bf16()}
    print(f"training throughput: {args.backbone}, {args.input_size}px, batch {args.batch_size}, {args.steps} steps, "
          f"{info['torch_threads']} threads, cuda={info['cuda']}")
    print("| path | triplets/s | vs naive |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['path']} | {r['triplets_per_s']:.1f} | {r['vs_naive']:.2f}x |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    from benchmark_card import write_benchmark_card

    print(f"wrote {write_benchmark_card('bench_train', out, argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
