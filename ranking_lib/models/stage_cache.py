"""Outputs of the frozen backbone stages, computed once per image and reused.

With ``freeze_stages = k``, stages ``[0, k)`` of the backbone never change during training, so
their output for an image is the same at every step. Computing it once (float16, next to the
decoded image cache) and training only stages ``[k, end)`` + the head makes each triplet step
several times cheaper on a CPU. The cached maps also serve the final embedding pass.

Augmentation on cached maps is a horizontal flip of the feature map (convolutions are
nearly flip-equivariant); pixel shifts are not available on this path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ranking_lib.core.devices import autocast, resolve_device, to_device, uses_cpu_bf16
from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import atomic_path, content_crc32, reserve, write_json
from ranking_lib.core.progress import progress as progress_bar
from ranking_lib.data import ImageCache, verify_content
from ranking_lib.models.inference import ModelInputs, on_device_for_inference
from ranking_lib.models.model import EmbeddingNet

FORMAT = 1
logger = logging.getLogger(__name__)


def _key(net: EmbeddingNet, cache: ImageCache, pretrained: bool, bf16: bool = False, runtime: str = "torch") -> str:
    src = cache.cache_file
    st = os.stat(src) if src is not None and Path(src).exists() else None
    parts = [FORMAT, net.backbone_name, pretrained, net.input_size, net.freeze_stages, str(src),
             st.st_size if st else None, st.st_mtime_ns if st else None, len(cache)]
    if bf16:  # other numerics, another file (fp32 keys stay as they were)
        parts.append("bf16")
    if runtime != "torch":  # another runtime's rounding: another file (torch keys stay as they were)
        parts.append(runtime)
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]


def stage_features_file(cache: ImageCache, net: EmbeddingNet, pretrained: bool, bf16: bool = False,
                        runtime: str = "torch") -> Path:
    if cache.cache_file is None:
        raise RankingError("stage features need an on-disk image cache")
    d = Path(cache.cache_file).parent
    name = (f"stage_{cache.split}_{net.backbone_name}_{net.input_size}px_k{net.freeze_stages}"
            f"_{_key(net, cache, pretrained, bf16, runtime)}.npy")
    return d / name


def golden_features_file(cache: ImageCache, net: EmbeddingNet, pretrained: bool, bf16: bool = False) -> Path:
    """Where the golden features (the frozen pretrained backbone's pooled features) of `cache`
    live: beside the image cache, under the same key as the stage features of `net`."""
    if cache.cache_file is None:
        raise RankingError("golden features need an on-disk image cache")
    return Path(cache.cache_file).parent / (f"golden_{cache.split}_{net.backbone_name}_{net.input_size}px"
                                            f"_k{net.freeze_stages}_{_key(net, cache, pretrained, bf16)}.npy")


def stage_features_shape(net: EmbeddingNet, images: np.ndarray, device: torch.device | str = "cpu") -> tuple:
    """(N, C, H, W) of the frozen stages' outputs for `images` (one image is run to find out)."""
    net = on_device_for_inference(net, device)
    with torch.inference_mode():
        probe = net.backbone.forward_stages(net.preprocess(torch.from_numpy(np.array(images[:1])).to(device)),
                                            0, net.freeze_stages)
    return (len(images),) + tuple(probe.shape[1:])


def compute_stage_features(net: EmbeddingNet, images: np.ndarray, out: np.ndarray | None = None,
                           *, batch_size: int = 256, device: torch.device | str = "cpu", progress: bool = True,
                           desc: str = "stage features", bf16_cpu: bool = False,
                           runtime: str = "torch") -> np.ndarray:
    """Stages [0, freeze_stages) of `net` on `images`, as float16 (N, C, H, W): written into
    `out` when given (e.g. a memory map), else into a new in-memory array; computed by
    `runtime` (``torch``, or ``openvino`` on the CPU: `models.runtimes`). Returns it."""
    if out is None:
        out = np.empty(stage_features_shape(net, images, device), dtype=np.float16)
    net = on_device_for_inference(net, device)
    k = net.freeze_stages
    fast = None
    if runtime == "openvino":
        from ranking_lib.models.runtimes import openvino_frozen_pass

        fast = openvino_frozen_pass(net, images[:2], bf16=uses_cpu_bf16(device, bf16_cpu))
    elif runtime != "torch":
        raise RankingError(f"unknown frozen-stage runtime {runtime!r} (torch or openvino)")
    with torch.inference_mode():
        for i in progress_bar(range(0, len(images), batch_size), desc=desc, enabled=progress, unit="batch"):
            if fast is not None:
                f = fast(np.asarray(images[i:i + batch_size])).astype(np.float16)
            else:
                x = to_device(torch.from_numpy(np.array(images[i:i + batch_size])), device)
                with autocast(device, True, bf16_cpu):
                    f = net.backbone.forward_stages(net.preprocess(x), 0, k)
                f = f.float().cpu().numpy().astype(np.float16)
            bad = ~np.isfinite(f).reshape(len(f), -1).all(axis=1)
            if bad.any():
                raise RankingError(f"frozen stages gave non-finite values for image {i + int(np.argmax(bad))} "
                                   f"({desc}); the input images or the backbone weights are damaged")
            out[i:i + len(f)] = f
    return out


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def load_checked(path: Path, n: int) -> tuple[np.ndarray | None, str]:
    """The memory-mapped features at `path` if whole and undamaged, else (None, reason)."""
    if not path.is_file():
        return None, "not built yet"
    try:
        meta = json.loads(sidecar(path).read_text())
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        return None, f"{path.name} or its sidecar unreadable ({type(e).__name__})"
    if arr.shape[0] != n or arr.dtype != np.float16 or list(arr.shape) != meta.get("shape"):
        return None, f"{path.name} has shape {arr.shape}, expected {meta.get('shape')} for {n} images"
    damaged = verify_content(path, arr, meta.get("crc32"))
    return (None, damaged) if damaged else (arr, "")


def load_or_build_stage_features(net: EmbeddingNet, cache: ImageCache, *, pretrained: bool, batch_size: int = 256,
                                 device: torch.device | str = "cpu", progress: bool = True,
                                 bf16_cpu: bool = False, runtime: str = "torch") -> np.ndarray:
    """Memory-mapped float16 outputs of the frozen stages for every image of `cache`.

    Built once (atomically: temp file, then rename) and keyed by the image cache file, the
    backbone, its weights, the input size, the number of frozen stages, bf16 and the runtime
    (``torch``, ``openvino`` or ``auto``: `models.runtimes.resolve_runtime`).
    """
    from ranking_lib.models.runtimes import resolve_runtime

    if net.freeze_stages < 1:
        raise RankingError("stage features need freeze_stages >= 1")
    bf16 = uses_cpu_bf16(device, bf16_cpu)
    runtime = resolve_runtime(runtime, device, bf16)
    path = stage_features_file(cache, net, pretrained, bf16, runtime)
    arr, reason = load_checked(path, len(cache))
    if arr is not None:
        return arr
    if reason != "not built yet":
        logger.warning("rebuilding frozen-stage features: %s", reason)
    shape = stage_features_shape(net, cache.images, device)
    t0 = time.perf_counter()
    arr = build_checked(path, shape, lambda out: compute_stage_features(
        net, cache.images, out, batch_size=batch_size, device=device, progress=progress,
        desc=f"frozen stages ({cache.split}, {runtime})", bf16_cpu=bf16_cpu, runtime=runtime),
        source=str(cache.cache_file))
    if progress:
        logger.info(f"computed frozen-stage features of {len(cache)} {cache.split} images "
                    f"{shape[1:]} in {time.perf_counter() - t0:.1f} s ({runtime}) -> {path.name}")
    return arr


def build_checked(path: Path, shape: tuple, fill, **record) -> np.ndarray:
    """A float16 array of `shape` written to `path` as `load_checked` reads it back: atomically
    (temp file, then rename), its space reserved first (a full disk is one line, not a SIGBUS in
    the memory map), `fill(out)` computing it in place, its shape and CRC-32 in the JSON sidecar
    with `record`; returned memory-mapped."""
    sidecar(path).unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        reserve(tmp, target=path)
        fill(out)
        out.flush()
        crc = content_crc32(out)
        del out
    write_json(sidecar(path), {"shape": list(shape), "crc32": crc, **record})
    return np.load(path, mmap_mode="r", allow_pickle=False)


@dataclass(frozen=True)
class FeatureOptions:
    """How a run computes the frozen stages' outputs and what its network reads (plain values; a
    run's are ``workflow.feature_options(cfg)``)."""
    pretrained: bool = True
    batch_size: int = 256          # images per forward pass (``embed_batch_size``)
    device: str = "cpu"
    bf16_cpu: bool = True
    runtime: str = "auto"          # the frozen-stage pass's runtime (``frozen_runtime``)
    cache_stages: bool = True      # read the frozen stages' cached outputs, not the images (``cache_stage_features``)


def stage_inputs(net: EmbeddingNet, cache: ImageCache, options: FeatureOptions, progress: bool = True) -> ModelInputs:
    """Cached outputs of the frozen stages of the *pretrained* network for one split."""
    return ModelInputs(load_or_build_stage_features(net, cache, pretrained=options.pretrained,
                                                    batch_size=options.batch_size,
                                                    device=resolve_device(options.device), progress=progress,
                                                    bf16_cpu=options.bf16_cpu, runtime=options.runtime),
                       "stage_features")


def model_inputs(net: EmbeddingNet, cache: ImageCache, options: FeatureOptions, progress: bool = True) -> ModelInputs:
    """What `net` reads for one split: its frozen stages' cached outputs, or the images."""
    if not options.cache_stages:
        return ModelInputs(cache.images)
    staged = stage_inputs(net, cache, options, progress)
    return ModelInputs(staged.array, staged.kind, cache.images) if net.multiscale else staged


# stage and golden features, and the cached views of `training.views` (their K, seed and version after the key)
_DERIVED_RE = re.compile(r"^(stage|golden|views)_(?P<split>[a-z]+)_(?P<backbone>.+)_(?P<size>\d+)px_k(?P<k>\d+)"
                         r"_(?P<key>[0-9a-f]{16})(_x\d+_s\d+_v\d+)?\.(npy|json)$")
_CACHE_RE = re.compile(r"^[a-z]+_\d+px_(images\.npy|meta\.json)$")


def stray_files(cache_dir: str | Path, caches: dict[str, ImageCache]) -> list[Path]:
    """Files in `cache_dir` that are neither an image cache nor computed from the current ones
    (stage or golden features or cached views of an earlier cache, anything else): `prepare` names them and
    leaves them alone. Temp files of running writers (dot files) are not counted."""
    cache_dir = Path(cache_dir)
    try:
        names = sorted(e.name for e in os.scandir(cache_dir) if e.is_file(follow_symlinks=False))
    except OSError:
        return []
    out = []
    for name in names:
        if name.startswith(".") or _CACHE_RE.match(name):
            continue
        m = _DERIVED_RE.match(name)
        cache = caches.get(m["split"]) if m else None
        if cache is not None and cache.cache_file is not None and Path(cache.cache_file).parent == cache_dir:
            net = SimpleNamespace(backbone_name=m["backbone"], input_size=int(m["size"]), freeze_stages=int(m["k"]))
            if any(_key(net, cache, p, b) == m["key"] for p in (True, False) for b in (False, True)):
                continue
        out.append(cache_dir / name)
    return out
