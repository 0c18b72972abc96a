"""Checkpoints: written atomically, read without running code, checked against the model.

A checkpoint is read with ``torch.load(weights_only=True)``: only tensors and plain containers
(dict, list, tuple, str, numbers, None) are accepted, so a hostile file cannot run code.
It is serialised in memory first and then written with the space reserved, so a full disk
gives one line naming the file and the bytes needed, and the previous checkpoint stays intact.
A checkpoint made with other run-shaping settings than a run's is not resumed (`resume_differences`).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ranking_lib.core.errors import CheckpointError
from ranking_lib.core.fileio import write_bytes

FORMAT = "ranking_lib-checkpoint/1"

# Fields a resumed run may change: where files live, how often it logs, how it is evaluated.
# Every other field shapes the training run, so a checkpoint made with another value is not
# resumed (`steps` may grow: the run is extended and the change recorded).
RESUME_FREE_FIELDS = frozenset({
    "data_dir", "run_dir", "cache_dir", "skip_corrupt", "val_triplets", "device", "num_threads",
    "checkpoint_every", "log_every", "ks", "train_eval_queries", "embed_batch_size",
    "search_backend", "num_query_examples", "query_seed", "top_k_show", "channels_last", "steps",
    "evaluate_val", "flip_tta", "index_nlist", "index_nprobe", "index_pq_m", "index_refine", "index_hnsw_m",
    "index_ef_search", "train_minutes", "budget_minutes", "semantic_metrics", "near_dup_queries", "wordnet_dir", "rerank", "rerank_k", "rerank_alpha",
})


def resume_differences(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (checkpoint's value, `now`'s value)} for the run-shaping fields that differ (`saved`
    and `now`: a run's settings as ``RunConfig.to_dict`` writes them)."""
    out = {}
    for name in now:
        if name in RESUME_FREE_FIELDS or name not in saved:
            continue
        a, b = saved[name], now[name]
        if isinstance(a, list) or isinstance(b, list):
            a, b = list(a or []), list(b or [])
        if a != b:
            out[name] = (saved[name], now[name])
    return out


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` via a temp file + rename, so a crash never leaves half a file."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buf)
    return write_bytes(path, buf.getbuffer())


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (run the 'train' step first)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes: a copy or transfer was cut short); put the "
                              "whole file back, or start over with --no-resume")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        glob = next((ln for ln in lines if "GLOBAL" in ln), None)
        if glob:
            raise CheckpointError(f"refusing to load {path}: it holds objects other than tensors and plain "
                                  f"data, which could run code ({glob[:160]})") from None
        detail = next((ln for ln in lines if ln.startswith("Unsupported")), lines[-1] if lines else "")
        raise CheckpointError(f"cannot read checkpoint {path}: not a checkpoint file, or damaged ({detail})") from None
    except Exception as e:
        detail = f"{type(e).__name__}: {e}" if str(e) else f"{type(e).__name__}, the file ends early"
        raise CheckpointError(f"cannot read checkpoint {path}: not a checkpoint file, or damaged "
                              f"({detail})".splitlines()[0]) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ranking_lib checkpoint")
    return ckpt


# Architecture-record entries added later, with the value every older checkpoint had.
RECORD_DEFAULTS = {"architecture": "single"}


def load_model_state(model: torch.nn.Module, ckpt: dict[str, Any], path: str | Path = "checkpoint") -> None:
    """Load weights after checking the checkpoint was made for this architecture."""
    want = model.architecture()
    have = {**RECORD_DEFAULTS, **ckpt.get("architecture", {})}
    diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
    if diff:
        desc = ", ".join(f"{k}={a!r} (model has {b!r})" for k, (a, b) in diff.items())
        raise CheckpointError(f"checkpoint {path} was made for a different network: {desc}")
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {str(e).splitlines()[0]}") from e


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and bytes, in name order: which weights a
    network has (equal for a checkpoint and the network it was loaded into)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}\t{t.dtype}\t{tuple(t.shape)}\n".encode("utf-8"))
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


_identities: dict[tuple, dict] = {}  # (file, size, mtime, inode) -> its identity, read once per process


def checkpoint_identity(path: str | Path) -> dict[str, Any]:
    """Which trained network the checkpoint at `path` holds: ``checkpoint_step`` and
    ``weights_sha256`` (what files computed by it record; `CheckpointError` when unreadable)."""
    path = Path(path)
    try:
        st = os.stat(path)
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    except OSError:
        key = None
    if key not in _identities:
        ckpt = read_checkpoint(path)
        if not isinstance(ckpt.get("model"), dict):
            raise CheckpointError(f"checkpoint {path} holds no model weights")
        ident = {"checkpoint_step": int(ckpt.get("step", 0)), "weights_sha256": weights_sha256(ckpt["model"])}
        if key is None:
            return ident
        _identities[key] = ident
    return dict(_identities[key])
