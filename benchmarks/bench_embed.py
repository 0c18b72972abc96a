"""Embedding throughput (images/s) of `EmbeddingNet` at several input sizes, and the effect of
channels-last memory format and of glibc allocator settings, each measured, not assumed.

    python benchmarks/bench_embed.py --sizes 64 128 224 --images 1024

Each configuration runs in a fresh subprocess (the allocator settings only act at process
start): MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736
MALLOC_TOP_PAD_=1073741824 ("malloc") vs the glibc defaults. Inputs are random uint8 64x64
images (speed does not depend on content). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from ranking_lib.core.settings import resolve

MALLOC_ENV = resolve("cpu").env  # the allocator settings live in profiles/cpu.yaml only
ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, numpy as np, torch
from ranking_lib.models.model import EmbeddingNet
from ranking_lib.models.inference import embed_images
size, n, bs, cl, dev, bf16 = {size}, {n}, {bs}, {cl}, {dev!r}, {bf16}
torch.manual_seed(0)
net = EmbeddingNet(input_size=size, channels_last=cl)
imgs = np.random.default_rng(0).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
embed_images(net, imgs[:bs], bs, dev, progress=False, bf16_cpu=bf16)          # warm-up
if dev != "cpu" and torch.cuda.is_available(): torch.cuda.synchronize()
t = time.perf_counter(); z = embed_images(net, imgs, bs, dev, progress=False, bf16_cpu=bf16)
if dev != "cpu" and torch.cuda.is_available(): torch.cuda.synchronize()
print(json.dumps({{"img_per_s": n / (time.perf_counter() - t), "threads": torch.get_num_threads()}}))
"""


def run_one(size: int, n: int, bs: int, channels_last: bool, malloc: bool, device: str, bf16: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    if malloc:
        env.update(MALLOC_ENV)
    code = CHILD.format(root=str(ROOT), size=size, n=n, bs=bs, cl=channels_last, dev=device, bf16=bf16)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", nargs="+", default=["base", "channels_last", "malloc", "both"],
                    choices=["base", "channels_last", "malloc", "both", "both+bf16"])
    ap.add_argument("--out", default="benchmarks/results/embed_throughput.json")
    args = ap.parse_args(argv)
    flags = {"base": (False, False, False), "channels_last": (True, False, False), "malloc": (False, True, False),
             "both": (True, True, False), "both+bf16": (True, True, True)}  # bf16: CPU autocast (devices.py)
    rows = []
    for size in args.sizes:
        n = args.images if size <= 128 else max(args.batch_size, args.images // 2)
        for v in args.variants:
            cl, ma, bf = flags[v]
            r = run_one(size, n, args.batch_size, cl, ma, args.device, bf)
            rows.append({"input_size": size, "variant": v, "channels_last": cl, "malloc_env": ma, "bf16_cpu": bf,
                         "images": n, **r})
            print(f"{size:>4}px {v:<14} {r['img_per_s']:8.1f} img/s", flush=True)
    print("\n| input | " + " | ".join(args.variants) + " |\n|---|" + "---:|" * len(args.variants))
    for size in args.sizes:
        vals = {r["variant"]: r["img_per_s"] for r in rows if r["input_size"] == size}
        print(f"| {size} px | " + " | ".join(f"{vals[v]:.1f}" for v in args.variants) + " |")
    from ranking_lib.core.devices import cpu_has_bf16
    from ranking_lib.core.fileio import write_json

    write_json(args.out, {"device": args.device, "cpu_count": os.cpu_count(), "batch_size": args.batch_size,
                          "cpu_has_bf16": cpu_has_bf16(), "rows": rows})
    from benchmark_card import write_benchmark_card

    print(f"wrote {write_benchmark_card('bench_embed', args.out, argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
