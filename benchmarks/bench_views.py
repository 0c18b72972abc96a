"""What cached views cost: the frozen-stage pass of K views per image beside the stage cache.

    python benchmarks/bench_views.py --data-dir ../shared/tiny-imagenet-sample --images 1000 --views 2
    python benchmarks/bench_views.py --data-dir ../shared/tiny-imagenet-sample --images 1000 --isa avx2

On the first `--images` training images of the data (the `--profile`'s network, by default the
`cpu` profile's: EfficientNet-Lite0 at 192 px, 7 stages frozen, bf16 where native), one after the
other on the same machine state:

* ``stage_pass``: the stage cache's own pass (uint8 images -> the frozen stages' maps);
* ``view_making``: making one view of every image (`training.views.apply_views`, crop-and-rescale,
  colour, blur, JPEG-like blocks), alone;
* ``view_pass``: one view of every image through the frozen stages (what each of the K cached
  views costs: `load_or_build_view_features`);
* ``live_views``: the live path's cost per step, views of `--live-batch` 64 px images.

Reported per image and for the whole of Tiny ImageNet's 100,000 training images (an
extrapolation at the measured rate): the extra minutes and GiB of K cached views, against the
stage cache's own. ``--isa avx2`` re-executes itself with oneDNN and ATen held to AVX2 (fp32,
torch: the cpu profile's OpenVINO cannot be held back this way, so the AVX2 class's own runtime
is not what this row measures). The profile's env (the cpu profile's allocator settings) is
applied by re-executing once (from the command line; `main(argv)` keeps its caller's process). The machine (CPU model and flags, threads, load average at the start
and the end: a loaded machine slows every row alike) is in the JSON; a card beside it
(`benchmarks/benchmark_card.py`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ISA_ENV = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}
FULL_TRAIN_IMAGES = 100_000


def _timed(fn, repeats: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="a tiny-imagenet-200 layout (e.g. the 20-class sample)")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache (default the data's)")
    p.add_argument("--profile", default="cpu", help="the network and numerics of this profile (default cpu)")
    p.add_argument("--images", type=int, default=1000, help="training images measured (the first N)")
    p.add_argument("--views", type=int, default=2, help="K views per image to extrapolate for")
    p.add_argument("--live-batch", type=int, default=32, help="instance rows of one live step")
    p.add_argument("--isa", choices=sorted(ISA_ENV), default=None, help="hold oneDNN and ATen to this ISA")
    p.add_argument("--out", default=None, help="JSON (default benchmarks/results/views[_<isa>].json)")
    args = p.parse_args(argv)
    if args.images < 1 or args.views < 1 or args.live_batch < 1:
        print("error: --images, --views and --live-batch must be >= 1", file=sys.stderr)
        return 2
    env = dict(ISA_ENV.get(args.isa, {}))
    from ranking_lib.core.settings import load_profile

    env.update({str(k): str(v) for k, v in (load_profile(args.profile).get("env") or {}).items()})  # its allocator
    if any(os.environ.get(k) != v for k, v in env.items()):  # read at process start: re-execute once
        if argv is not None:  # a caller's process (tests) is never replaced: no env, no held ISA
            if args.isa:
                print("error: --isa works from the command line only (it re-executes the script)", file=sys.stderr)
                return 2
        else:
            os.environ.update(env)
            os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ))

    import numpy as np
    import torch

    from ranking_lib import workflow
    from ranking_lib.core.devices import uses_cpu_bf16
    from ranking_lib.core.errors import RankingError
    from ranking_lib.core.fileio import write_json
    from benchmark_card import write_benchmark_card
    from ranking_lib.core.runcard import machine
    from ranking_lib.core.settings import resolve
    from ranking_lib.models.model import build_model
    from ranking_lib.run_settings import model_kwargs
    from ranking_lib.models.runtimes import resolve_runtime
    from ranking_lib.models.stage_cache import compute_stage_features, stage_features_shape
    from ranking_lib.training.views import ViewImages, apply_views, step_view_params

    flags = {"data_dir": args.data_dir, "max_classes": None, "device": "cpu"}
    if args.cache_dir:
        flags["cache_dir"] = args.cache_dir
    if args.isa:  # the held-back CPU runs fp32 torch
        flags.update(bf16_cpu=False, frozen_runtime="torch")
    try:
        cfg = resolve(args.profile, flags).config
        cache = workflow.load_caches(cfg, progress=False, splits=("train",))["train"]
    except RankingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = min(args.images, len(cache))
    images = np.ascontiguousarray(cache.images[:n])
    net = build_model(**model_kwargs(cfg)).eval()
    bf16 = uses_cpu_bf16("cpu", cfg.bf16_cpu)
    runtime = resolve_runtime(cfg.frozen_runtime, "cpu", bf16)
    shape = stage_features_shape(net, images)
    bytes_per_image = int(np.prod(shape[1:])) * 2  # float16
    m = machine()
    m["isa"] = args.isa or "native"
    m["load_avg_1min"] = round(os.getloadavg()[0], 2)
    print(f"machine: {m['cpu_model']} [{' '.join(m['cpu_flags'])}], {m['torch_threads']} threads, "
          f"ISA {m['isa']}, load {m['load_avg_1min']}; {n} images, {cfg.input_size} px, "
          f"k={cfg.freeze_stages}, {runtime}, {'bf16' if bf16 else 'fp32'}", flush=True)

    def stage_pass(x):
        return compute_stage_features(net, x, batch_size=cfg.embed_batch_size, progress=False, bf16_cpu=cfg.bf16_cpu,
                                      runtime=runtime)

    stage_pass(images[:cfg.embed_batch_size])  # warm-up (kernel choice, OpenVINO's compile)
    t_stage, _ = _timed(lambda: stage_pass(images))
    t_make, _ = _timed(lambda: ViewImages(images, cfg.seed, 0)[0:n])
    t_view, _ = _timed(lambda: stage_pass(ViewImages(images, cfg.seed, 1)))
    live = torch.from_numpy(np.array(images[:args.live_batch]))
    params = step_view_params(cfg.seed, 0, len(live))
    t_live, _ = _timed(lambda: apply_views(live, params), repeats=5)
    m["load_avg_1min_end"] = round(os.getloadavg()[0], 2)

    per_image = {"stage_pass_ms": 1e3 * t_stage / n, "view_making_ms": 1e3 * t_make / n,
                 "view_pass_ms": 1e3 * t_view / n}
    full = {
        "images": FULL_TRAIN_IMAGES,
        "stage_cache_min": FULL_TRAIN_IMAGES * t_stage / n / 60,
        "stage_cache_gib": FULL_TRAIN_IMAGES * bytes_per_image / 2 ** 30,
        "views_extra_min": args.views * FULL_TRAIN_IMAGES * t_view / n / 60,
        "views_extra_gib": args.views * FULL_TRAIN_IMAGES * bytes_per_image / 2 ** 30,
    }
    result = {
        "config": {"profile": args.profile, "input_size": cfg.input_size, "freeze_stages": cfg.freeze_stages,
                   "backbone": cfg.backbone, "runtime": runtime, "bf16": bf16, "images": n, "views": args.views,
                   "live_batch": args.live_batch, "data_dir": str(args.data_dir)},
        "metrics": {"per_image": per_image, "stage_bytes_per_image": bytes_per_image,
                    "view_pass_over_stage_pass": t_view / t_stage,
                    "live_views_ms_per_step": 1e3 * t_live, "full_data_extrapolated": full},
        "machine": m,
    }
    print(f"per image: stage pass {per_image['stage_pass_ms']:.2f} ms, making a view {per_image['view_making_ms']:.3f} ms, "
          f"a view through the frozen stages {per_image['view_pass_ms']:.2f} ms "
          f"({t_view / t_stage:.2f}x the stage pass); {bytes_per_image / 1024:.1f} KiB per image and view")
    print(f"100,000 images (extrapolated): stage cache {full['stage_cache_min']:.1f} min, {full['stage_cache_gib']:.2f} GiB; "
          f"{args.views} cached views add {full['views_extra_min']:.1f} min and {full['views_extra_gib']:.2f} GiB")
    print(f"live views: {1e3 * t_live:.1f} ms per step of {len(live)} instance rows (64 px)")
    out = Path(args.out or REPO / "benchmarks" / "results" / ("views.json" if args.isa is None else f"views_{args.isa}.json"))
    write_json(out, result)
    write_benchmark_card("bench_views", out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
