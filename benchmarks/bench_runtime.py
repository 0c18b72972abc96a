"""CPU runtimes side by side: the frozen-stage pass, the embedding pass and the training step.

    python benchmarks/bench_runtime.py --env-profile cpu                 # this CPU as it is
    python benchmarks/bench_runtime.py --env-profile cpu --isa avx2      # oneDNN and ATen held to AVX2

Inference (img/s, random 64 px uint8 images, the `cpu` profile's network: EfficientNet-Lite0 at
192 px, first 7 stages frozen):

* ``frozen_pass``: uint8 images -> resized, normalised -> stages [0, 7) -> the stage maps (what
  `stage_cache` computes once per image);
* ``embed_from_stage``: stage maps -> stages [7, 9) -> pooled -> head -> L2-normalised embedding
  (the embedding passes of the `cpu` profile).

Each workload runs on torch eager (NCHW and channels-last, fp32 and bf16 autocast where the CPU
has native bf16), ``torch.compile``, ONNX Runtime and OpenVINO (fp32, and bf16 where native), the
runtimes that are installed. Rounds are interleaved (every runtime once per round, best round
kept), so the ratios come from one run on the same machine state. Every row's output is compared
with torch fp32 NCHW on the same batch (smallest cosine over the images, largest absolute
difference).

Training (steps/s of the `cpu` profile's step from random stage features: batch 64 triplets,
192 px, freeze_stages 7, AdamW, batch-hard mining), fp32 and bf16, and a `torch.profiler` table of
where one bf16 step's time goes.

``--isa avx2`` re-executes itself with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``: torch
then computes as on a CPU with AVX2 and FMA only (no AVX-512, no native bf16 rows). ONNX Runtime
and OpenVINO pick their kernels from cpuid and cannot be held back this way; they are left out
of such a run.

The machine in every row: CPU model and the flags that matter (avx2, avx512f, avx512_bf16,
amx_bf16), threads, load average. Prints a table and writes ``docs/figures/runtime.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ISA_ENV = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}
KEY_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_info() -> dict:
    model, flags = platform.processor() or "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    return {"cpu": model, "flags": [f for f in KEY_FLAGS if f in flags], "cores": os.cpu_count()}


def machine(isa: str | None) -> dict:
    import torch

    info = cpu_info()
    info.update(threads=torch.get_num_threads(), torch=torch.__version__,
                isa=isa or "native", load_avg_1min=round(os.getloadavg()[0], 2))
    return info


def machine_words(m: dict) -> str:
    isa = "" if m["isa"] == "native" else f", held to {m['isa'].upper()}"
    return f"{m['cpu']} [{' '.join(m['flags'])}], {m['threads']} threads{isa}, load {m['load_avg_1min']}"


# ---------------------------------------------------------------------------------- inference
def build_net(input_size: int, freeze_stages: int, channels_last: bool):
    import torch

    from ranking_lib.models.model import EmbeddingNet

    torch.manual_seed(0)  # the same (random) head in every layout
    return EmbeddingNet("efficientnet_lite0", embedding_dim=200, pretrained=True, input_size=input_size,
                        normalize=True, freeze_stages=freeze_stages, channels_last=channels_last).eval()


def modules(net):
    import torch

    class FrozenPass(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, images):  # uint8 (N, 64, 64, 3) -> (N, C, h, w)
            return self.net.backbone.forward_stages(self.net.preprocess(images), 0, self.net.freeze_stages)

    class FromStage(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, maps):  # float (N, C, h, w) -> (N, dim)
            return self.net.embed_features(self.net.features_from_stage(maps))

    return {"frozen_pass": FrozenPass().eval(), "embed_from_stage": FromStage().eval()}


def torch_runner(module, bf16: bool, compiled: bool = False):
    import torch

    fn = torch.compile(module) if compiled else module

    def run(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return fn(torch.from_numpy(x)).float().numpy()
    return run


def export_onnx(module, example, path: Path) -> Path:
    import torch

    with torch.inference_mode():
        torch.onnx.export(module, (torch.from_numpy(example),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
    return path


def ort_runner(onnx_path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"x": x})[0]


def openvino_runner(onnx_path: Path, threads: int, precision: str):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
                                   "PERFORMANCE_HINT": "LATENCY"})
    req = compiled.create_infer_request()

    def run(x):
        req.infer({0: x})
        return req.get_output_tensor(0).data.copy()
    return run


def have(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def inference_rows(args, native_bf16: bool, threads: int) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 64, 64, 3), dtype=np.uint8)
    nets = {cl: modules(build_net(args.input_size, args.freeze_stages, cl)) for cl in (False, True)}
    with __import__("torch").inference_mode():
        maps = np.concatenate([nets[False]["frozen_pass"](__import__("torch").from_numpy(images[i:i + args.batch]))
                               .numpy() for i in range(0, len(images), args.batch)]).astype(np.float16)
    inputs = {"frozen_pass": images, "embed_from_stage": maps.astype(np.float32)}
    tmp = Path(tempfile.mkdtemp(prefix="bench_runtime_"))
    rows = []
    for work, data in inputs.items():
        if args.workloads and work not in args.workloads:
            continue
        runners: dict[str, tuple] = {}
        runners["torch eager fp32 NCHW"] = (torch_runner(nets[False][work], False), 0.0)
        runners["torch eager fp32 channels-last"] = (torch_runner(nets[True][work], False), 0.0)
        if native_bf16:
            runners["torch eager bf16 channels-last"] = (torch_runner(nets[True][work], True), 0.0)
        if "compile" in args.runtimes:
            for bf16 in ((False, True) if native_bf16 else (False,)):
                name = f"torch.compile {'bf16' if bf16 else 'fp32'} channels-last"
                t0 = time.perf_counter()
                run = torch_runner(nets[True][work], bf16, compiled=True)
                run(data[:args.batch])  # compiles
                runners[name] = (run, time.perf_counter() - t0)
        onnx = None
        if args.isa is None and ({"onnxruntime", "openvino"} & set(args.runtimes)):
            onnx = export_onnx(nets[False][work], data[:2], tmp / f"{work}.onnx")
        if onnx and "onnxruntime" in args.runtimes and have("onnxruntime"):
            t0 = time.perf_counter()
            runners["ONNX Runtime fp32"] = (ort_runner(onnx, threads), time.perf_counter() - t0)
        if onnx and "openvino" in args.runtimes and have("openvino"):
            for prec in (("f32", "bf16") if native_bf16 else ("f32",)):
                t0 = time.perf_counter()
                runners[f"OpenVINO {prec.replace('f32', 'fp32')}"] = (openvino_runner(onnx, threads, prec),
                                                                     time.perf_counter() - t0)
        ref = np.concatenate([runners["torch eager fp32 NCHW"][0](data[i:i + args.batch])
                              for i in range(0, len(data), args.batch)])
        best = {name: float("inf") for name in runners}
        outs = {}
        for name, (run, _) in runners.items():  # warm-up pass (allocations, kernel choice)
            run(data[:args.batch])
        for _ in range(args.rounds):
            for name, (run, _) in runners.items():
                t0 = time.perf_counter()
                out = [run(data[i:i + args.batch]) for i in range(0, len(data), args.batch)]
                best[name] = min(best[name], time.perf_counter() - t0)
                outs[name] = np.concatenate(out)
        base = len(data) / best["torch eager fp32 NCHW"]
        for name, (_, setup_s) in runners.items():
            a, b = outs[name].reshape(len(data), -1).astype(np.float64), ref.reshape(len(data), -1).astype(np.float64)
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
            ips = len(data) / best[name]
            rows.append({"workload": work, "runtime": name, "img_per_s": round(ips, 1),
                         "x_torch_fp32_nchw": round(ips / base, 3), "setup_s": round(setup_s, 1),
                         "min_cosine_to_torch_fp32": round(float(cos.min()), 6),
                         "max_abs_diff_to_torch_fp32": float(np.abs(a - b).max())})
            print(f"  {work:17s} {name:32s} {ips:8.1f} img/s  {ips / base:5.2f}x  cos>={cos.min():.5f}", flush=True)
    return rows


# ---------------------------------------------------------------------------------- training
def step_trainer(bf16: bool, channels_last: bool, run_dir: Path, n: int = 4000):
    import numpy as np
    import torch

    from ranking_lib.core import settings
    from ranking_lib.models.inference import ModelInputs
    from ranking_lib.models.model import build_model
    from ranking_lib.run_settings import model_kwargs
    from ranking_lib.run_settings import make_trainer

    cfg = settings.resolve("cpu", {"run_dir": str(run_dir), "steps": 100_000, "bf16_cpu": bf16,
                                   "channels_last": channels_last}).config
    torch.manual_seed(0)
    model = build_model(**model_kwargs(cfg))
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((n, 192, 6, 6)).astype(np.float16)
    labels = np.repeat(np.arange(200), n // 200)
    q = rng.integers(0, n, 20_000)
    trip = np.stack([q, (q // 20) * 20 + rng.integers(0, 20, len(q)), rng.integers(0, n, len(q))], 1)
    trainer = make_trainer(cfg, model, ModelInputs(feats, "stage_features"), labels, trip, run_dir=run_dir)
    model.train()
    return trainer


def training_rows(args, native_bf16: bool) -> tuple[list[dict], list[dict]]:
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="bench_runtime_step_"))
    variants = {"fp32 channels-last": (False, True), "fp32 NCHW": (False, False)}
    if native_bf16:
        variants["bf16 channels-last"] = (True, True)
    trainers = {name: step_trainer(bf16, cl, tmp / name.replace(" ", "_")) for name, (bf16, cl) in variants.items()}
    step = {name: 0 for name in trainers}
    best = {name: float("inf") for name in trainers}
    for name, t in trainers.items():  # warm-up
        for _ in range(3):
            t.step_loss(step[name])
            step[name] += 1
    for _ in range(args.rounds):
        for name, t in trainers.items():
            t0 = time.perf_counter()
            for _ in range(args.step_steps):
                loss = t.step_loss(step[name])
                step[name] += 1
            float(loss)
            best[name] = min(best[name], (time.perf_counter() - t0) / args.step_steps)
    base = 1 / best["fp32 channels-last"]
    rows = [{"workload": "train_step", "runtime": f"torch eager {name}", "steps_per_s": round(1 / s, 3),
             "x_torch_fp32_cl": round(1 / s / base, 3), "ms_per_step": round(1000 * s, 1)} for name, s in best.items()]
    for r in rows:
        print(f"  train_step        {r['runtime']:32s} {r['steps_per_s']:8.3f} steps/s  {r['x_torch_fp32_cl']:5.2f}x",
              flush=True)
    # where the time of one step goes (the profile's precision on this CPU)
    name = "bf16 channels-last" if native_bf16 else "fp32 channels-last"
    t = trainers[name]
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.profile_steps):
            t.step_loss(step[name])
            step[name] += 1
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    shares: dict[str, float] = {}
    for e in prof.key_averages():
        k = e.key
        part = ("optimizer (AdamW)" if k.startswith("Optimizer.step") else None)
        if part:
            shares[part] = shares.get(part, 0) + e.cpu_time_total
            continue
        part = ("convolution backward" if k == "aten::convolution_backward" else
                "convolution forward" if k in ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution") else
                "batch norm backward" if "batch_norm_backward" in k else
                "other backward ops" if "backward" in k else
                "copies and casts" if k in ("aten::copy_", "aten::to", "aten::_to_copy") else None)
        if part:
            shares[part] = shares.get(part, 0) + e.self_cpu_time_total
    print("  shares: " + ", ".join(f"{k} {100 * v / total:.1f} %" for k, v in sorted(shares.items(), key=lambda kv: -kv[1])))
    ops_shares = {k: round(v / total, 4) for k, v in shares.items()}
    ops = []
    for e in sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)[:15]:
        ops.append({"op": e.key, "shapes": str(e.input_shapes)[:120], "ms_per_step":
                    round(e.self_cpu_time_total / 1000 / args.profile_steps, 2),
                    "share": round(e.self_cpu_time_total / total, 4), "calls_per_step": e.count // args.profile_steps})
    print(f"\n  where a step's time goes ({name}, {args.profile_steps} steps under torch.profiler):")
    for o in ops:
        print(f"    {100 * o['share']:5.1f} %  {o['ms_per_step']:8.2f} ms  {o['op']:38s} {o['shapes'][:90]}")
    del torch
    return rows, {"variant": name, "shares": ops_shares, "top_ops": ops}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--input-size", type=int, default=192)
    p.add_argument("--freeze-stages", type=int, default=7)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--step-steps", type=int, default=10, help="timed training steps per round")
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--runtimes", nargs="+", default=["compile", "onnxruntime", "openvino"],
                   choices=["compile", "onnxruntime", "openvino"], help="beside torch eager")
    p.add_argument("--workloads", nargs="+", choices=["frozen_pass", "embed_from_stage"], default=None)
    p.add_argument("--no-train", action="store_true", help="inference rows only")
    p.add_argument("--threads", type=int, default=None, help="threads of every runtime (default: torch's)")
    p.add_argument("--isa", choices=sorted(ISA_ENV), default=None)
    p.add_argument("--env-profile", default=None, help="apply this profile's env (the cpu profile's allocator)")
    p.add_argument("--out", default=None, help="JSON (default docs/figures/runtime.json, runtime_<isa>.json)")
    args = p.parse_args(argv)
    env = dict(ISA_ENV.get(args.isa, {}))
    if args.env_profile:
        from ranking_lib.core.settings import load_profile

        env.update({str(k): str(v) for k, v in (load_profile(args.env_profile).get("env") or {}).items()})
    if any(os.environ.get(k) != v for k, v in env.items()):  # read at process start: re-execute once
        os.environ.update(env)
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ))
    import torch

    from ranking_lib.core.devices import cpu_has_bf16

    if args.threads:
        torch.set_num_threads(args.threads)

    native_bf16 = cpu_has_bf16() and args.isa is None
    m = machine(args.isa)
    print(f"machine: {machine_words(m)}; torch {torch.__version__}", flush=True)
    rows = inference_rows(args, native_bf16, torch.get_num_threads())
    profile_ops = {}
    if not args.no_train:
        train, profile_ops = training_rows(args, native_bf16)
        rows += train
    m["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    for r in rows:
        r["machine"] = machine_words(m)
    out = Path(args.out or REPO / "docs" / "figures" / ("runtime.json" if args.isa is None else f"runtime_{args.isa}.json"))
    from ranking_lib.core.fileio import write_json

    write_json(out, {"machine": m, "settings": {k: v for k, v in vars(args).items() if k != "out"},
                     "env": env, "rows": rows, "step_profile": profile_ops,
                     "command": "python benchmarks/bench_runtime.py " + " ".join(argv if argv is not None else sys.argv[1:])})
    print(f"\n{'workload':17s} {'runtime':32s} {'rate':>10s} {'ratio':>7s}   ({machine_words(m)})")
    for r in rows:
        rate = f"{r['img_per_s']:.1f} img/s" if "img_per_s" in r else f"{r['steps_per_s']:.2f} st/s"
        ratio = r.get("x_torch_fp32_nchw", r.get("x_torch_fp32_cl"))
        print(f"{r['workload']:17s} {r['runtime']:32s} {rate:>12s} {ratio:6.2f}x")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
