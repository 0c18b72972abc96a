"""Devices and mixed precision, each device-specific branch small and explicit.

* `resolve_device`: ``auto`` -> CUDA when available, else CPU; a one-line error for a missing GPU.
* `cpu_has_bf16`: whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); read from
  ``/proc/cpuinfo`` on Linux, False elsewhere.
* `autocast`: bf16 autocast on CUDA when ``amp``; on the CPU when ``bf16_cpu`` *and* the CPU has
  native bf16 (elsewhere emulated bf16 is slower than fp32, so fp32 is kept); else a no-op.
* `to_device`: a host batch to the device; on CUDA through pinned memory, non-blocking.
* `setup_device`: once per process; on CUDA turns on cuDNN autotuning (input shapes are fixed).

None of the CUDA branches has run on a GPU yet (no session of this project had one); they are
kept to these few lines so that they can be read in full.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path

import numpy as np
import torch

from ranking_lib.core.errors import RankingError

__all__ = ["resolve_device", "cpu_has_bf16", "autocast", "uses_bf16", "uses_cpu_bf16", "to_device", "setup_device"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RankingError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


@functools.cache
def cpu_has_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def openvino_available() -> bool:
    """Whether OpenVINO and the ONNX exporter's ``onnx`` package are installed (the ``fast`` extra)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "onnx"))


def uses_bf16(device: torch.device | str, amp: bool = True, bf16_cpu: bool = False) -> bool:
    """Whether `autocast` runs bf16 on `device` with these settings."""
    kind = torch.device(device).type
    if kind == "cuda":
        return bool(amp)
    if kind == "cpu":
        return bool(bf16_cpu) and cpu_has_bf16()
    return False


def uses_cpu_bf16(device: torch.device | str, bf16_cpu: bool) -> bool:
    """Whether CPU work on `device` runs in bf16 (files computed so are kept apart from fp32 ones)."""
    return torch.device(device).type == "cpu" and uses_bf16(device, True, bf16_cpu)


def autocast(device: torch.device | str, amp: bool = True, bf16_cpu: bool = False):
    """bf16 autocast where `uses_bf16`, else a no-op context."""
    device = torch.device(device)
    if uses_bf16(device, amp, bf16_cpu):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`t` (on the host) on `device`: CUDA copies go through pinned memory without blocking
    (the kernels that use the batch queue behind the copy on the same stream)."""
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def setup_device(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: autotune convolutions once


def array_on_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """`array` on `device` (a GPU: a copy there). The cache may be a read-only memory map: torch
    only reads it here, so its warning about non-writable arrays does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)
