"""Golden features: the frozen pretrained backbone's L2-normalised pooled features of a split.

They define the relevance r_ij of relevance-weighted sampling (`triplets.relevance`), for the
pre-sampled and the online sampler alike. Computed once (float16) and kept beside the image
cache under `models.stage_cache.golden_features_file`.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ranking_lib.core.devices import resolve_device, uses_cpu_bf16
from ranking_lib.core.fileio import atomic_path
from ranking_lib.data import ImageCache
from ranking_lib.models.inference import ModelInputs, embed_images
from ranking_lib.models.model import EmbeddingNet
from ranking_lib.models.stage_cache import FeatureOptions, golden_features_file, model_inputs

logger = logging.getLogger(__name__)


def golden_features(net: EmbeddingNet, cache: ImageCache, options: FeatureOptions, progress: bool = True) -> np.ndarray:
    """(N, feature_dim) float16 golden features of every image of `cache`: the pooled features of
    `net`, the run's network built with the single architecture (the `baseline` model at the run's
    input size), read from their file when it holds a valid array."""
    net = net.eval()
    if cache.cache_file is None:
        inputs, path = ModelInputs(cache.images), None
    else:
        path = golden_features_file(cache, net, options.pretrained,
                                    uses_cpu_bf16(resolve_device(options.device), options.bf16_cpu))
        if path.is_file():
            try:
                z = np.load(path, allow_pickle=False)
                if z.shape == (len(cache), net.backbone.feature_dim) and np.isfinite(z).all():
                    return z
            except (OSError, ValueError):
                pass
        inputs = model_inputs(net, cache, options, progress)
    t0 = time.perf_counter()
    z = embed_images(net, inputs, options.batch_size, options.device, baseline=True, progress=progress,
                     desc=f"golden features ({cache.split})", bf16_cpu=options.bf16_cpu).astype(np.float16)
    if path is not None:
        with atomic_path(path, need=z.nbytes + 128) as tmp:
            np.save(tmp, z)
    if progress:
        logger.info(f"golden features of {len(cache)} {cache.split} images in {time.perf_counter() - t0:.1f} s")
    return z
