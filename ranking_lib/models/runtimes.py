"""Runtimes for the frozen-stage pass (uint8 images -> the outputs of the frozen stages).

The pass is pure inference, run once per image and cached (`stage_cache`); it is the longest
phase before training on a CPU without native bf16. Two runtimes:

* ``torch``: eager PyTorch (the network as it is; always available);
* ``openvino``: the same module exported to ONNX and compiled by OpenVINO for the CPU (PyPI
  ``openvino`` and ``onnx``, the ``fast`` extra). Measured on a 2-core AMD EPYC Zen 3 (AVX2 only,
  fp32): 209 vs 89 img/s for torch channels-last, the smallest cosine to torch 1.00000
  (``docs/figures/runtime_zen3.json``).

``frozen_runtime: auto`` takes OpenVINO where it is installed and the pass runs in fp32 (where
its outputs equal torch's), torch otherwise (GPU, or bf16 autocast on a CPU with native bf16:
the measured recipe's numerics). `resolve_runtime` says which one a run uses.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ranking_lib.core.devices import openvino_available
from ranking_lib.core.errors import RankingError
from ranking_lib.core.registry import Registry

__all__ = ["FROZEN_RUNTIMES", "openvino_available", "openvino_frozen_pass", "resolve_runtime"]


FROZEN_RUNTIMES: Registry[str] = Registry("frozen_runtime")
"""Runtime name -> what it runs the frozen-stage pass with (the config field ``frozen_runtime``)."""
FROZEN_RUNTIMES.add("torch", "torch, on any device")
FROZEN_RUNTIMES.add("openvino", "OpenVINO on the CPU (the fast extra)")
FROZEN_RUNTIMES.add("auto", "OpenVINO where installed and the pass runs in fp32, else torch")


def resolve_runtime(name: str, device: torch.device | str, bf16: bool) -> str:
    """``torch`` or ``openvino`` for a pass on `device` (bf16 autocast: `bf16`); one-line
    RankingError for ``openvino`` where it cannot run."""
    FROZEN_RUNTIMES.check(name)
    on_cpu = torch.device(device).type == "cpu"
    if name == "auto":
        return "openvino" if on_cpu and not bf16 and openvino_available() else "torch"
    if name == "openvino":
        if not on_cpu:
            raise RankingError(f"frozen_runtime=openvino runs on the CPU only (device {device}); use torch or auto")
        if not openvino_available():
            raise RankingError("frozen_runtime=openvino needs the openvino and onnx packages "
                               "(pip install 'ranking-lib[fast]'), or use frozen_runtime=torch")
    return name


class _FrozenPass(torch.nn.Module):
    def __init__(self, net) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # uint8 (N, H, W, 3) -> (N, C, h, w)
        return self.net.backbone.forward_stages(self.net.preprocess(images), 0, self.net.freeze_stages)


def openvino_frozen_pass(net, example: np.ndarray, bf16: bool = False,
                         threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function uint8 images (N, H, W, 3) -> float32 stage maps, the frozen stages of `net`
    compiled by OpenVINO for the CPU (bf16 inference precision when `bf16`, else fp32)."""
    import openvino as ov

    module = _FrozenPass(net.cpu().eval()).eval()
    with tempfile.TemporaryDirectory(prefix="frozen-onnx-") as tmp:
        path = Path(tmp) / "frozen.onnx"
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # the tracer's notes on shape checks in preprocess
            torch.onnx.export(module, (torch.from_numpy(np.ascontiguousarray(example[:2])),), str(path),
                              input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                              opset_version=17, dynamo=False)
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
            "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()

    def run(images: np.ndarray) -> np.ndarray:
        request.infer({0: np.ascontiguousarray(images, dtype=np.uint8)})
        return request.get_output_tensor(0).data.copy()
    return run
