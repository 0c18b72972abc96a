"""Views of an image, the positives of instance triplets (`triplets.instance`).

A view is the image under seeded crop-and-rescale (aspect kept), colour jitter (brightness,
contrast, saturation), Gaussian blur (half of the views) and JPEG-like 8x8 block quantisation
(half of the views), computed with torch on uint8 (N, H, W, 3) batches (`apply_views`). It never
turns, stretches, writes on, gamma-curves or covers an image: those changes are the held-out
near-duplicate family (`retrieval.near_duplicates.HELD_OUT_TRANSFORMS`).

Two ways to train on views (`TrainingViews`):

* live (the images path): each step makes a fresh view of each instance triplet's query image,
  its parameters drawn from (seed, step), so a resumed run makes the same views;
* cached (under the stage cache, ``views_per_image`` = K): K views of every training image, view
  k of image i drawn from (seed, k, i), are passed through the frozen stages once and stored
  beside the stage features (float16, (N, K, C, H, W), CRC-checked, keyed by the stage key, K,
  the seed and `VIEW_VERSION`: `load_or_build_view_features`); each instance triplet reads one
  of its query's K views.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ranking_lib.core.devices import resolve_device, to_device, uses_cpu_bf16
from ranking_lib.core.errors import RankingError
from ranking_lib.data import ImageCache
from ranking_lib.models.model import EmbeddingNet
from ranking_lib.models.stage_cache import (
    FeatureOptions,
    build_checked,
    load_checked,
    compute_stage_features,
    stage_features_file,
    stage_features_shape,
)
from ranking_lib.triplets.instance import InstanceTriplets
from ranking_lib.triplets.presampled import PresampledTriplets

logger = logging.getLogger(__name__)

VIEW_VERSION = 1
"""Changes whenever `apply_views` makes other views (cached views of another version are rebuilt)."""

NUM_PARAMS = 10
"""Uniforms per view: scale, centre x, centre y, brightness, contrast, saturation, blur on,
blur sigma, JPEG-like on, quality."""

# JPEG's quantisation tables (ITU T.81, Annex K): luminance, chrominance
_LUMA_Q = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
           14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
           49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_CHROMA_Q = [17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5 + [47, 66] + [99] * 38


def view_params(seed: int, view: int, n: int) -> np.ndarray:
    """(n, NUM_PARAMS) uniforms of view `view` of images 0..n-1: row i depends on (seed, view, i)
    only (one draw, filled row by row), so any prefix of the images keeps its views."""
    return np.random.default_rng([int(seed), 4099, int(view)]).random((n, NUM_PARAMS))


def step_view_params(seed: int, step: int, n: int) -> np.ndarray:
    """(n, NUM_PARAMS) uniforms of the live views of training step `step`."""
    return np.random.default_rng([int(seed), 4111, int(step)]).random((n, NUM_PARAMS))


def _crop_rescale(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A square-scaled crop (side 60-100 % of the image's, aspect kept) at a random place, resized back."""
    s = 0.6 + 0.4 * u[:, 0]
    cx, cy = s / 2 + (1 - s) * u[:, 1], s / 2 + (1 - s) * u[:, 2]
    zero = torch.zeros_like(s)
    theta = torch.stack([torch.stack([s, zero, 2 * cx - 1], 1), torch.stack([zero, s, 2 * cy - 1], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]


def _colour(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation each x U(0.6, 1.4) (as PIL's ImageEnhance), in [0, 1]."""
    b, c, sat = (0.6 + 0.8 * u[:, i, None, None, None] for i in (3, 4, 5))
    x = (x * b).clamp(0, 1)
    mean = _gray(x).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * c + mean).clamp(0, 1)
    g = _gray(x)
    return ((x - g) * sat + g).clamp(0, 1)


def _blur(x: torch.Tensor, u: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Gaussian blur, sigma U(0.5, 1.5) px, for the views with u[:, 6] < 0.5 (the others untouched)."""
    n, ch, h, w = x.shape
    sigma = (0.5 + u[:, 7]).clamp(min=1e-3)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t[None] ** 2 / (2 * sigma[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)
    k = torch.where((u[:, 6] < 0.5)[:, None], k, (t == 0).to(x.dtype)[None])  # identity when off
    k = k.repeat_interleave(ch, 0)  # one kernel per (image, channel)
    y = F.pad(x.reshape(1, n * ch, h, w), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=n * ch)
    y = F.conv2d(y, k[:, None, :, None], groups=n * ch)
    return y.reshape(n, ch, h, w)


@functools.lru_cache(maxsize=4)
def _dct_matrix(device: str) -> torch.Tensor:
    i = torch.arange(8, dtype=torch.float32)
    d = torch.cos((2 * i[None, :] + 1) * i[:, None] * torch.pi / 16) * (2 / 8) ** 0.5
    d[0] /= 2 ** 0.5
    return d.to(device)


def _jpeg_like(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """JPEG's lossy step without its entropy coding: YCbCr, 8x8 block DCT, quantised with the
    standard tables at quality U(10, 60), back; for the views with u[:, 8] < 0.5."""
    n, _, h, w = x.shape
    on = u[:, 8] < 0.5
    if not bool(on.any()):
        return x
    q = 10 + 50 * u[:, 9]
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)[:, None, None, None]
    tables = torch.tensor([_LUMA_Q, _CHROMA_Q, _CHROMA_Q], dtype=x.dtype, device=x.device).reshape(1, 3, 8, 8)
    qt = torch.floor((tables * scale + 50) / 100).clamp(min=1)  # (n, 3, 8, 8)
    m = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                     dtype=x.dtype, device=x.device)
    ycc = torch.einsum("ij,njhw->nihw", m, x * 255) + torch.tensor([0.0, 128, 128], device=x.device)[None, :, None, None]
    ph, pw = -h % 8, -w % 8
    ycc = F.pad(ycc, (0, pw, 0, ph), mode="replicate")
    bh, bw = ycc.shape[2] // 8, ycc.shape[3] // 8
    blocks = ycc.reshape(n, 3, bh, 8, bw, 8).permute(0, 1, 2, 4, 3, 5) - 128
    d = _dct_matrix(str(x.device)).to(x.dtype)
    coef = d @ blocks @ d.T
    qt = qt[:, :, None, None]
    blocks = d.T @ (torch.round(coef / qt) * qt) @ d + 128
    ycc = blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, 3, bh * 8, bw * 8)[:, :, :h, :w]
    ycc = ycc - torch.tensor([0.0, 128, 128], device=x.device)[None, :, None, None]
    back = torch.linalg.inv(m)
    rgb = (torch.einsum("ij,njhw->nihw", back, ycc) / 255).clamp(0, 1)
    return torch.where(on[:, None, None, None], rgb, x)


def apply_views(images: torch.Tensor, params: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Views of a uint8 (n, H, W, 3) batch (on any device): row i under the view described by
    `params[i]` (NUM_PARAMS uniforms, `view_params` / `step_view_params`); uint8, same shape."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise RankingError(f"views need uint8 (N, H, W, 3) images (got {images.dtype} {tuple(images.shape)})")
    if len(images) == 0:
        return images
    u = torch.as_tensor(np.asarray(params, dtype=np.float32), device=images.device)
    if u.shape != (len(images), NUM_PARAMS):
        raise RankingError(f"view parameters must be ({len(images)}, {NUM_PARAMS}) (got {tuple(u.shape)})")
    x = images.permute(0, 3, 1, 2).float() / 255
    x = _jpeg_like(_blur(_colour(_crop_rescale(x, u), u), u), u)
    return (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class ViewImages:
    """View `view` of every image of `images`, made on demand slice by slice: an array-like
    (``len``, ``shape``, ``dtype``, slicing) that `stage_cache.compute_stage_features` reads as it
    reads the image cache."""

    def __init__(self, images: np.ndarray, seed: int, view: int, batch_size: int = 256) -> None:
        self.images, self.seed, self.view, self.batch_size = images, int(seed), int(view), batch_size
        self.shape, self.dtype = tuple(images.shape), np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.images)

    @functools.cached_property
    def params(self) -> np.ndarray:
        return view_params(self.seed, self.view, len(self.images))

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("ViewImages is read by slices")
        start, stop, step = key.indices(len(self.images))
        x = torch.from_numpy(np.array(self.images[start:stop:step]))
        return apply_views(x, self.params[start:stop:step]).numpy()


def view_features_file(cache: ImageCache, net: EmbeddingNet, *, pretrained: bool, num_views: int, seed: int,
                       bf16: bool = False, runtime: str = "torch") -> Path:
    """Beside the stage features of `cache`: ``views_<the stage file's name>_x<K>_s<seed>_v<version>.npy``."""
    stage = stage_features_file(cache, net, pretrained, bf16, runtime)
    return stage.with_name(f"views_{stage.stem.removeprefix('stage_')}_x{num_views}_s{seed}_v{VIEW_VERSION}.npy")


def load_or_build_view_features(net: EmbeddingNet, cache: ImageCache, options: FeatureOptions, *,
                                views_per_image: int, seed: int, progress: bool = True) -> np.ndarray:
    """Memory-mapped float16 (N, K, C, H, W): the frozen stages' outputs of K = `views_per_image`
    views of every image of `cache` (view k of image i: `view_params` (seed, k, i)), computed once
    (atomically, space reserved first, CRC-32 in a sidecar; a damaged file is rebuilt) with the
    runtime and numerics of the run's stage features (`options`)."""
    from ranking_lib.models.runtimes import resolve_runtime

    k_views = views_per_image
    if k_views < 1 or net.freeze_stages < 1:
        raise RankingError("cached views need views_per_image >= 1 and freeze_stages >= 1")
    device = resolve_device(options.device)
    bf16 = uses_cpu_bf16(device, options.bf16_cpu)
    runtime = resolve_runtime(options.runtime, device, bf16)
    path = view_features_file(cache, net, pretrained=options.pretrained, num_views=k_views, seed=seed, bf16=bf16,
                              runtime=runtime)
    arr, reason = load_checked(path, len(cache))
    if arr is not None:
        return arr
    if reason != "not built yet" and progress:
        logger.info(f"rebuilding view features: {reason}")
    one = stage_features_shape(net, cache.images, device)
    shape = (one[0], k_views) + tuple(one[1:])
    t0 = time.perf_counter()

    def fill(out: np.ndarray) -> None:
        for k in range(k_views):
            compute_stage_features(net, ViewImages(cache.images, seed, k), out[:, k], batch_size=options.batch_size,
                                   device=device, progress=progress, desc=f"frozen stages of view {k + 1}/{k_views} ({cache.split})",
                                   bf16_cpu=options.bf16_cpu, runtime=runtime)

    arr = build_checked(path, shape, fill, source=str(cache.cache_file), views_per_image=k_views, seed=seed,
                        view_version=VIEW_VERSION)
    if progress:
        logger.info(f"computed frozen-stage features of {k_views} views of {len(cache)} {cache.split} images in "
                    f"{time.perf_counter() - t0:.1f} s ({runtime}, {path.stat().st_size / 2 ** 30:.2f} GiB) -> {path.name}")
    return arr


class TrainingViews:
    """Makes the positives of a step's instance triplets (`InstanceTriplets.instance_rows`).

    Args:
        seed: the run's seed (live views: drawn from (seed, step)).
        features: cached views' stage features (N, K, C, H, W) (`load_or_build_view_features`),
            or None for live views of uint8 image batches.
        images: with `features`, the uint8 images (N, H, W, 3) of the multiscale network's shallow
            paths (their views are made again from the same parameters), else None.
    """

    def __init__(self, seed: int, features: np.ndarray | None = None, images: np.ndarray | None = None) -> None:
        self.seed, self.features, self.images = int(seed), features, images
        if features is not None and (features.ndim != 5 or features.dtype != np.float16):
            raise RankingError(f"cached view features must be float16 (N, K, C, H, W) (got {features.dtype} "
                               f"{tuple(features.shape)})")

    @property
    def num_views(self) -> int:
        """K cached views per image; 0 for live views."""
        return 0 if self.features is None else int(self.features.shape[1])

    @functools.lru_cache(maxsize=16)
    def _params(self, view: int) -> np.ndarray:
        return view_params(self.seed, view, len(self.images))

    def positives(self, x: torch.Tensor, im: torch.Tensor | None, queries: np.ndarray, rows: np.ndarray,
                  *, views: np.ndarray, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`x` (and `im`), a batch of 3B inputs (queries, positives, negatives), with the positive
        of every instance row r (``rows[r]``) replaced by a view of query image ``queries[r]``:
        a live view of the query's row of `x`, or its cached view ``views[r]``."""
        r = np.flatnonzero(rows)
        if len(r) == 0:
            return x, im
        b = len(rows)
        at = torch.from_numpy(r).to(x.device)
        x = x.clone()
        if self.features is None:
            if x.dtype != torch.uint8:
                raise RankingError("live views need uint8 image batches (cached views: views_per_image >= 1)")
            x[b + at] = apply_views(x[at], step_view_params(self.seed, step, len(r)))
            return x, im
        q, v = np.asarray(queries)[r], np.asarray(views)[r]
        if (v < 0).any() or (v >= self.num_views).any():
            raise RankingError(f"view index out of range 0..{self.num_views - 1}")
        order = np.argsort(q, kind="stable")  # sorted reads are kinder to a memory map
        f = np.empty((len(q),) + self.features.shape[2:], dtype=np.float16)
        f[order] = self.features[q[order], v[order]]
        x[b + at] = to_device(torch.from_numpy(f), x.device).to(x.dtype)
        if im is not None:
            if self.images is None:
                raise RankingError("the multiscale network's views need the images beside the view features")
            params = np.stack([self._params(int(k))[i] for i, k in zip(q, v)])
            im = im.clone()
            im[b + at] = apply_views(im[at], params)
        return x, im


def instance_training(triplets, net: EmbeddingNet, cache: ImageCache, options: FeatureOptions, *,
                      instance_fraction: float, views_per_image: int, batch_size: int, seed: int,
                      candidates: np.ndarray, progress: bool = True):
    """(triplet source, `TrainingViews` or None) of a training run: with `instance_fraction` > 0,
    `triplets` (an array of pre-sampled triplets or a source with ``batch(step)``) with that share
    of instance triplets mixed in (`InstanceTriplets`, in-class negatives among `candidates`, the
    images not held out) and the views that make their positives (cached under the stage cache
    when ``options.cache_stages``); else as given."""
    if instance_fraction <= 0:
        return triplets, None
    if not hasattr(triplets, "batch"):
        triplets = PresampledTriplets(triplets, batch_size, seed)
    source = InstanceTriplets(triplets, cache.labels, instance_fraction, num_views=views_per_image,
                              seed=seed, candidates=candidates)
    if not options.cache_stages:
        return source, TrainingViews(seed)
    feats = load_or_build_view_features(net, cache, options, views_per_image=views_per_image, seed=seed,
                                        progress=progress)
    return source, TrainingViews(seed, feats, cache.images if net.multiscale else None)
