"""Kill -9 and resume: does a training run killed at a random moment end where an uninterrupted
run ends? Prints the largest weight, loss and embedding differences over several kills.

For each trial the `train` command runs in a subprocess and gets SIGKILL after a seeded number
of logged steps (anywhere: mid-step, mid-log write or mid-checkpoint); `train` is then run again
(it resumes from the last checkpoint), possibly killed again, until it finishes. The result is
compared with one uninterrupted run of the same settings.

    python benchmarks/bench_kill_resume.py --data-dir ../shared/tiny-imagenet-sample --trials 3

Prints a table and writes JSON (default benchmarks/results/kill_resume.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ranking_lib.training.checkpoint import read_checkpoint
from ranking_lib.core.fileio import write_json

REPO = Path(__file__).resolve().parents[1]


def cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ranking_lib", *args], cwd=REPO, capture_output=True, text=True, **kw)


def logged_steps(run: Path) -> int:
    try:
        return max(0, len((run / "loss_log.csv").read_text().splitlines()) - 1)
    except OSError:
        return 0


def train_with_kills(flags: list[str], run: Path, kill_after: list[int]) -> int:
    """Run `train`, SIGKILL it after each count of newly logged steps in `kill_after`; finish it."""
    kills = 0
    for n in kill_after:
        start = logged_steps(run)
        proc = subprocess.Popen([sys.executable, "-m", "ranking_lib", "train", *flags], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None and logged_steps(run) < start + n:
            time.sleep(0.01)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        elif proc.returncode != 0:
            raise SystemExit(f"train failed: {proc.stderr.read().strip().splitlines()[-1]}")
    done = cli(["train", *flags])
    if done.returncode != 0:
        raise SystemExit(f"train failed: {done.stderr.strip()}")
    return kills


def compare(a: Path, b: Path) -> dict:
    sa, sb = read_checkpoint(a / "checkpoints" / "last.pt"), read_checkpoint(b / "checkpoints" / "last.pt")
    w = max(float((sa["model"][k].float() - sb["model"][k].float()).abs().max()) if sa["model"][k].numel() else 0.0
            for k in sa["model"])
    la = np.loadtxt(a / "loss_log.csv", delimiter=",", skiprows=1, usecols=(0, 1))
    lb = np.loadtxt(b / "loss_log.csv", delimiter=",", skiprows=1, usecols=(0, 1))
    same_steps = la.shape == lb.shape and bool((la[:, 0] == lb[:, 0]).all())
    out = {"step": int(sb["step"]), "max_weight_diff": w, "log_rows_equal": same_steps,
           "max_loss_diff": float(np.abs(la[:, 1] - lb[:, 1]).max()) if same_steps else None}
    for split in ("train", "val"):
        za = np.load(a / f"embeddings_trained_{split}.npz")["embeddings"]
        zb = np.load(b / f"embeddings_trained_{split}.npz")["embeddings"]
        out[f"max_embedding_diff_{split}"] = float(np.abs(za - zb).max())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--profile", default="sample", help="base settings (default: sample)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--checkpoint-every", type=int, default=7)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--kills", type=int, default=2, help="kills per trial")
    p.add_argument("--seed", type=int, default=0, help="seeds the kill points")
    p.add_argument("--work-dir", help="default: a temporary directory")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "kill_resume.json"))
    args = p.parse_args(argv)
    if args.trials < 1 or args.kills < 1 or args.steps < 2:
        p.error("--trials and --kills must be >= 1 and --steps >= 2")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="kill_resume_"))
    base = ["--profile", args.profile, "--data-dir", args.data_dir, "--cache-dir", str(work / "cache"),
            "--steps", str(args.steps), "--checkpoint-every", str(args.checkpoint_every), "--log-every", "1",
            "--quiet"]
    ref = work / "ref"
    for step in ("prepare", "sample", "train", "embed"):
        r = cli([step, *base, "--run-dir", str(ref)])
        if r.returncode != 0:
            raise SystemExit(f"{step} failed: {r.stderr.strip()}")
    rng = np.random.default_rng(args.seed)
    rows = []
    for t in range(args.trials):
        run = work / f"trial{t}"
        shutil.rmtree(run, ignore_errors=True)
        flags = [*base, "--run-dir", str(run)]
        for r in (cli(["sample", *flags]),):
            if r.returncode != 0:
                raise SystemExit(f"sample failed: {r.stderr.strip()}")
        kill_after = [int(k) for k in rng.integers(1, max(2, args.steps // (args.kills + 1)), size=args.kills)]
        t0 = time.perf_counter()
        kills = train_with_kills(flags, run, kill_after)
        r = cli(["embed", *flags])
        if r.returncode != 0:
            raise SystemExit(f"embed failed: {r.stderr.strip()}")
        row = {"trial": t, "kill_after_logged_steps": kill_after, "kills": kills, **compare(ref, run),
               "wall_s": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| trial | kills (after n logged steps) | final step | max weight diff | loss log | "
          "max loss diff | max emb. diff train / val |")
    print("|---:|---|---:|---:|---|---:|---|")
    for r in rows:
        print(f"| {r['trial']} | {r['kills']} ({', '.join(map(str, r['kill_after_logged_steps']))}) | {r['step']} | "
              f"{r['max_weight_diff']:.3g} | {'same rows' if r['log_rows_equal'] else 'DIFFERENT'} | "
              f"{r['max_loss_diff']:.3g} | {r['max_embedding_diff_train']:.3g} / {r['max_embedding_diff_val']:.3g} |")
    write_json(args.out, {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                      "torch": torch.__version__},
                          "settings": vars(args), "results": rows})
    print(f"wrote {args.out}")
    from benchmark_card import write_benchmark_card

    print(f"wrote {write_benchmark_card('bench_kill_resume', args.out, argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
