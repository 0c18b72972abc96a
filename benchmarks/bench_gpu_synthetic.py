"""The `gpu` profile's training and embedding at full Tiny ImageNet size on synthetic images:
speed and memory only, no data to carry.

    python benchmarks/bench_gpu_synthetic.py --images 100000 --classes 200 --seconds 120 --device cuda
    python benchmarks/bench_gpu_synthetic.py --images 2000 --classes 10 --seconds 3 --device cpu --out x.json

`--images` random uint8 64x64 RGB images in `--classes` classes (seeded) are generated where the
benchmark runs, as the decoded cache would hold them; the profile's network, optimiser, batch
size, input size, bf16 autocast, batch-hard mining and uint8 cache on the device then train
through `Trainer` (its own step) for `--seconds`, and the network embeds every image with the
profile's embedding batch. Measured: the first training steps (CUDA kernel loading, the
allocator's growth and, with ``--cudnn-benchmark on`` as the profile runs, cuDNN's autotuning of
every convolution shape) against the steady rate; steps/s and triplets/s; peak GPU memory of
training and of embedding (``torch.cuda.max_memory_allocated`` / ``_reserved``); embedding
images/s; and exact Euclidean top-30 of `--queries` queries over all the embeddings on the
device in torch (the expansion ``||q||^2 - 2 q.x + ||x||^2`` and ``topk``, in query chunks),
beside the same search by `EmbeddingIndex` (backend torch, on the CPU) and whether their top-30
sets agree. The head starts from random weights (the synthetic classes are no ImageNet classes);
that does not change the cost of a step.

The images are noise: nothing here measures, or says anything about, retrieval quality.
Prints a table and writes ``benchmarks/results/gpu_synthetic.json`` with a run card beside it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ranking_lib.core.devices import resolve_device
from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import write_json
from ranking_lib.core.settings import resolve

ROOT = Path(__file__).resolve().parents[1]

K = 30


def synthetic_images(n: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` random uint8 (64, 64, 3) images and their labels, every class used (seeded)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % classes
    rng.shuffle(labels)
    return images, labels


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"peak_allocated_gib": None, "peak_reserved_gib": None}
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 3)}


def bench_training(cfg, images, labels, seconds: float, cudnn_benchmark: bool, first: int = 3) -> tuple[dict, object]:
    """The first `first` steps timed one by one, then steady steps for `seconds`."""
    from ranking_lib.models.model import build_model
    from ranking_lib.run_settings import make_trainer, model_kwargs
    from ranking_lib.triplets.samplers import TripletSampler

    triplets = TripletSampler(labels, seed=cfg.seed).sample(max(len(labels), cfg.batch_size))
    device = resolve_device(cfg.device)
    reset_peak(device)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-synthetic-") as tmp:
        trainer = make_trainer(cfg, build_model(**model_kwargs(cfg)), images, labels, triplets, run_dir=tmp)
        torch.backends.cudnn.benchmark = cudnn_benchmark and device.type == "cuda"
        trainer.model.train()
        first_s = []
        for s in range(first):
            t0 = time.perf_counter()
            float(trainer.step_loss(s))
            first_s.append(time.perf_counter() - t0)
        steps, t0 = 0, time.perf_counter()
        while True:
            loss = trainer.step_loss(first + steps)
            steps += 1
            if steps % 10 == 0 or device.type != "cuda":
                float(loss)  # waits for the device
                if time.perf_counter() - t0 >= seconds:
                    break
        float(loss)
        wall = time.perf_counter() - t0
    rate = steps / wall
    return {"first_steps_s": [round(x, 3) for x in first_s], "warmup_excess_s": round(sum(first_s) - first / rate, 3),
            "steps": steps, "seconds": round(wall, 2), "steps_per_s": round(rate, 3),
            "triplets_per_s": round(rate * cfg.batch_size, 1), **peak_gib(device)}, trainer.model


def bench_embedding(cfg, model, images) -> tuple[dict, np.ndarray]:
    """Embed every image with the profile's batch: the first batch apart (autotuning of the
    inference shapes), then all of them."""
    from ranking_lib.models.inference import embed_images

    device = resolve_device(cfg.device)
    model.eval()
    reset_peak(device)
    bs = cfg.embed_batch_size
    t0 = time.perf_counter()
    embed_images(model, images[:bs], bs, cfg.device, progress=False, bf16_cpu=cfg.bf16_cpu)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    z = embed_images(model, images, bs, cfg.device, progress=False, bf16_cpu=cfg.bf16_cpu)
    wall = time.perf_counter() - t0
    return {"images": len(images), "batch_size": bs, "first_batch_s": round(first, 3), "seconds": round(wall, 2),
            "images_per_s": round(len(images) / wall, 1), **peak_gib(device)}, z


def device_topk(z: np.ndarray, queries: np.ndarray, k: int, device: torch.device, chunk: int = 4096) -> np.ndarray:
    """Exact Euclidean top-k on `device` in torch: ids (Q, k), nearest first."""
    x = torch.from_numpy(z).to(device)
    xx = torch.einsum("ij,ij->i", x, x)
    out = []
    with torch.no_grad():
        for s in range(0, len(queries), chunk):
            q = torch.from_numpy(queries[s:s + chunk]).to(device)
            d2 = torch.addmm(xx.unsqueeze(0), q, x.T, beta=1.0, alpha=-2.0)
            d2.add_(torch.einsum("ij,ij->i", q, q).unsqueeze(1))
            out.append(torch.topk(d2, k, dim=1, largest=False, sorted=True).indices)
        ids = torch.cat(out).cpu().numpy()
    return ids


def bench_search(z: np.ndarray, labels: np.ndarray, n_queries: int, device: torch.device) -> dict:
    """Top-K of the first `n_queries` embeddings over all of them: on the device, and by EmbeddingIndex."""
    from ranking_lib.retrieval.index import EmbeddingIndex

    queries = np.ascontiguousarray(z[:n_queries])
    device_topk(z[:1024], queries[:8], K, device)  # first use of the kernels, not timed
    sync(device)
    t0 = time.perf_counter()
    ids = device_topk(z, queries, K, device)
    sync(device)
    dev_s = time.perf_counter() - t0
    index = EmbeddingIndex(z, labels, backend="torch")
    t0 = time.perf_counter()
    ref, _ = index.topk(queries, K)
    cpu_s = time.perf_counter() - t0
    same = float(np.mean([set(a) == set(b) for a, b in zip(ids.tolist(), ref.tolist())]))
    return {"database": len(z), "dim": int(z.shape[1]), "queries": len(queries), "k": K,
            "device_torch_s": round(dev_s, 4), "device_queries_per_s": round(len(queries) / dev_s, 1),
            "index_cpu_torch_s": round(cpu_s, 4), "same_topk_sets": round(same, 4)}


def config(args):
    over = {"device": args.device, "max_classes": None, "head_init": "random", "pretrained": not args.no_pretrained}
    for key in ("batch_size", "input_size", "embed_batch_size"):
        if getattr(args, key) is not None:
            over[key] = getattr(args, key)
    return resolve(args.profile, over).config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100_000, help="synthetic images (default 100,000, as Tiny ImageNet's train)")
    p.add_argument("--classes", type=int, default=200, help="classes (default 200)")
    p.add_argument("--seconds", type=float, default=120.0, help="seconds of steady training (default 120)")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--profile", default="gpu", help="the profile whose recipe is timed (default gpu)")
    p.add_argument("--batch-size", type=int, help="override the profile's batch size")
    p.add_argument("--input-size", type=int, help="override the profile's input size")
    p.add_argument("--embed-batch-size", type=int, help="override the profile's embedding batch")
    p.add_argument("--queries", type=int, default=10_000, help="search queries (default 10,000, as Tiny ImageNet's val)")
    p.add_argument("--cudnn-benchmark", choices=["on", "off"], default="on",
                   help="cuDNN autotuning during training (on: as the profile runs)")
    p.add_argument("--no-pretrained", action="store_true", help="random backbone weights (no weights package needed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_synthetic.json"))
    args = p.parse_args(argv)
    try:
        if args.images < 2 * args.classes or args.classes < 2:
            raise RankingError(f"--images {args.images} must be at least twice --classes {args.classes} (>= 2)")
        if not (args.seconds > 0 and 0 < args.queries <= args.images):
            raise RankingError("--seconds must be > 0 and --queries between 1 and --images")
        cfg = config(args)
        device = resolve_device(cfg.device)
    except (RankingError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    phases = {}
    t0 = time.perf_counter()
    images, labels = synthetic_images(args.images, args.classes, args.seed)
    phases["generate"] = time.perf_counter() - t0
    train, model = bench_training(cfg, images, labels, args.seconds, args.cudnn_benchmark == "on")
    phases["train"] = time.perf_counter() - t0 - sum(phases.values())
    embed, z = bench_embedding(cfg, model, images)
    phases["embed"] = time.perf_counter() - t0 - sum(phases.values())
    search = bench_search(z, labels, args.queries, device)
    phases["search"] = time.perf_counter() - t0 - sum(phases.values())
    result = {"what": "speed and memory of the profile's recipe on synthetic noise images; no quality is measured",
              "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "profile": args.profile, "images": args.images, "classes": args.classes,
              "batch_size": cfg.batch_size, "input_size": cfg.input_size, "bf16": bool(cfg.amp and device.type == "cuda"),
              "cudnn_benchmark": args.cudnn_benchmark if device.type == "cuda" else "n/a (CPU)", "pretrained": cfg.pretrained, "torch": torch.__version__,
              "train": train, "embed": embed, "search": search}
    write_json(args.out, result)
    print_table(result)
    from benchmark_card import write_benchmark_card

    print(f"wrote {args.out}\nwrote {write_benchmark_card('bench_gpu_synthetic', args.out, argv, phases=phases)}")
    return 0


def print_table(r: dict) -> None:
    t, e, s = r["train"], r["embed"], r["search"]
    mem = (lambda d: f"{d['peak_allocated_gib']:.2f} GiB allocated, {d['peak_reserved_gib']:.2f} reserved"
           if d["peak_allocated_gib"] is not None else "n/a (CPU)")
    rows = [("device", f"{r['gpu'] or r['device']} (torch {r['torch']}, {'bf16' if r['bf16'] else 'fp32'})"),
            ("data", f"{r['images']:,} synthetic 64x64 images, {r['classes']} classes, {r['input_size']} px input"),
            ("first training steps", f"{', '.join(f'{x:.2f}' for x in t['first_steps_s'])} s "
                                     f"({t['warmup_excess_s']:.2f} s over the steady rate; cuDNN autotuning {r['cudnn_benchmark']})"),
            ("training", f"{t['steps_per_s']:.2f} steps/s, {t['triplets_per_s']:,.0f} triplets/s "
                         f"(batch {r['batch_size']}, {t['steps']} steps in {t['seconds']:.1f} s)"),
            ("training memory", mem(t)),
            ("embedding", f"{e['images_per_s']:,.0f} images/s ({e['images']:,} in {e['seconds']:.1f} s; "
                          f"first batch {e['first_batch_s']:.2f} s)"),
            ("embedding memory", mem(e)),
            ("exact top-30 search", f"{s['queries']:,} queries over {s['database']:,} x {s['dim']}: "
                                    f"{s['device_torch_s']:.3f} s on {r['device']} in torch, "
                                    f"{s['index_cpu_torch_s']:.3f} s EmbeddingIndex on the CPU "
                                    f"(same top-30 sets: {100 * s['same_topk_sets']:.1f} %)")]
    print("\n| measured | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    raise SystemExit(main())
