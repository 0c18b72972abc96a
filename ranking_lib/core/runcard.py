"""Run cards: what a run or a benchmark measured, with how and where, in a few KB of JSON.

A pipeline run (``python -m ranking_lib all``, ``report/run_pipeline.py``) writes
``run_card.json`` into its run directory at its end; a benchmark writes ``<results>.card.json``
beside its results JSON. A card holds no embeddings or weights:

    {"card_version": 1, "kind": "pipeline" | "benchmark", "name": ..., "command": "...",
     "created": "2025-...Z", "wall_s": ..., "phases": {"prepare": s, "train": s, ...},
     "config": {...resolved RunConfig...}, "metrics": {model: {split: {metric: value}}},
     "train_summary": {...}, "machine": {...}, "git": {"commit": ..., "dirty": ...},
     "reconstructed": false}

Cards of the runs the documentation cites are kept in ``docs/runs/<name>/card.json``. A card
``"reconstructed": true`` was assembled afterwards from what the run's report or RESULTS.md
printed (its ``"source"`` says where), not written by the run itself.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import write_json
from ranking_lib.core.names import MODELS
from ranking_lib.core.paths import REPO

CARD_NAME = "run_card.json"
CARD_VERSION = 1
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")


def cpu_info() -> tuple[str | None, list[str]]:
    """(CPU model name, its flags) from ``/proc/cpuinfo``; (processor string, []) elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or None, []
    model, flags = None, []
    for line in text.splitlines():
        if model is None and line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        elif not flags and line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
    return model, flags


def machine() -> dict[str, Any]:
    """CPU model and the flags that matter here, cores, library versions, threads, bf16."""
    import torch

    from ranking_lib.core.devices import cpu_has_bf16

    model, flags = cpu_info()
    try:
        import faiss

        faiss_version = getattr(faiss, "__version__", "unknown")
        faiss_threads = faiss.omp_get_max_threads()
    except ImportError:
        faiss_version = faiss_threads = None
    return {
        "cpu_model": model,
        "cpu_flags": [f for f in FLAGS_OF_INTEREST if f in flags],
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": faiss_version,
        "faiss_threads": faiss_threads,
        "python": platform.python_version(),
        "bf16_native": cpu_has_bf16(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def bf16_used(config: dict | None, mach: dict) -> bool | None:
    """Whether the run's network ran in bf16 (None when the card has no config)."""
    if not config:
        return None
    device = str(config.get("device", "cpu"))
    if device.startswith("cuda") or (device == "auto" and mach.get("cuda")):
        return bool(config.get("amp", True))
    return bool(config.get("bf16_cpu")) and bool(mach.get("bf16_native"))


def machine_class(card: dict) -> str:
    """What results depend on beyond the recipe: architecture, GPU or CPU, bf16 or fp32."""
    m = card.get("machine") or {}
    where = m.get("cuda") or m.get("arch") or "unknown machine"
    bf16 = card.get("bf16")
    return f"{where}, {'bf16' if bf16 else 'fp32' if bf16 is not None else 'precision unknown'}"


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """The checkout's commit and whether its tracked files differ from it (None without git).
    A copy of a checkout without its ``.git`` (a tree shipped to another machine) can name its
    commit in ``RANKING_GIT_COMMIT``; whether the copy differs from it is then unknown (None)."""
    git = shutil.which("git")
    if git is None or not (repo / ".git").exists():
        return {"commit": os.environ.get("RANKING_GIT_COMMIT") or None, "dirty": None}
    try:
        commit = subprocess.run([git, "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run([git, "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(status.strip())}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_metrics(run_dir: Path) -> dict[str, dict]:
    """{model: {split: metrics}} from the run's ``metrics_<model>.json`` (their config left out)."""
    out = {}
    for m in MODELS:
        d = _read_json(run_dir / f"metrics_{m}.json")
        if isinstance(d, dict):
            out[m] = {k: v for k, v in d.items() if isinstance(v, dict) and k != "config"}
    return out


EVALUATION_PHASES = ("03", "04", "05", "report")
"""The phases (notebook name prefixes, and the PDF) that a whole-pipeline budget's evaluation
estimate stands for."""


def budget_check(phases: dict[str, float], train_summary: Any) -> dict | None:
    """A budgeted run's promise against what happened: the whole budget and the wall time, the
    evaluation's estimate and the evaluation's measured time, the training loop's planned and
    measured seconds, the schedule's moves. None without a budget in `train_summary`."""
    b = train_summary.get("budget") if isinstance(train_summary, dict) else None
    if not isinstance(b, dict):
        return None
    evaluation = [v for k, v in phases.items() if k.startswith(EVALUATION_PHASES)]
    budget_min = b.get("budget_minutes")
    return {
        "budget_s": None if budget_min is None else round(budget_min * 60, 1),
        "wall_s": round(sum(phases.values()), 1),
        "evaluation_estimate_s": round(float(b.get("evaluation_s", 0.0)), 1) if budget_min is not None else None,
        "evaluation_s": round(sum(evaluation), 1) if evaluation else None,
        "training_planned_s": round(float(b.get("train_minutes", 0.0)) * 60, 1),
        "training_loop_s": round(float(train_summary.get("loop_s") or 0.0) + float(b.get("calibration_s", 0.0)), 1),
        "replans": len(train_summary.get("replans") or []),
    }


def build_card(run_dir: str | Path, *, command: str, phases: dict[str, float], kind: str = "pipeline",
               config: dict | None = None, name: str | None = None, extra: dict | None = None) -> dict:
    """A pipeline run's card from what its run directory holds now (config.json as trained,
    metrics_<model>.json, train_summary.json) and the phases' wall times."""
    run = Path(run_dir)
    saved = _read_json(run / "config.json")
    config = saved if isinstance(saved, dict) else config
    mach = machine()
    card = {
        "card_version": CARD_VERSION, "kind": kind, "name": name or run.resolve().name, "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": round(sum(phases.values()), 1), "phases": {k: round(v, 1) for k, v in phases.items()},
        "config": config, "metrics": run_metrics(run), "train_summary": _read_json(run / "train_summary.json"),
        "machine": mach, "bf16": bf16_used(config, mach), "git": git_state(), "reconstructed": False,
    }
    check = budget_check(phases, card["train_summary"])
    if check is not None:
        card["budget_check"] = check
    card.update(extra or {})
    return card


def write_card(run_dir: str | Path, **kwargs) -> Path:
    """Build and atomically write ``run_card.json`` in `run_dir` (see `build_card`)."""
    path = Path(run_dir) / CARD_NAME
    write_json(path, build_card(run_dir, **kwargs))
    return path


def portable_arg(arg: str, repo: Path = REPO) -> str:
    """A command-line argument as another checkout would type it: an absolute path inside the
    checkout or beside it (``/home/me/project/data``, ``/home/me/shared``) relative to the
    checkout (``data``, ``../shared``); anything else unchanged."""
    if not arg.startswith("/"):
        return arg
    path, root = Path(os.path.normpath(arg)), repo.resolve()
    for base, prefix in ((root, ""), (root.parent, "../")):
        if path == base or base in path.parents:
            rel = path.relative_to(base).as_posix()
            return (prefix + rel) if rel != "." else (prefix.rstrip("/") or ".")
    return arg


def load_card(path: str | Path) -> dict:
    """A card from its file, or a one-line `RankingError`."""
    path = Path(path)
    if path.is_dir():
        path = path / (CARD_NAME if (path / CARD_NAME).is_file() else "card.json")
    if not path.is_file():
        raise RankingError(f"run card not found: {path}")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise RankingError(f"run card {path} is not valid JSON ({e})") from None
    if not isinstance(card, dict) or "metrics" not in card and card.get("kind") != "benchmark":
        raise RankingError(f"run card {path} has no 'metrics'")
    return card
