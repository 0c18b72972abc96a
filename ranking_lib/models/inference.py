"""Inference: what a network reads (`ModelInputs`, its kind stated, never guessed) and how a whole
array of inputs becomes embeddings (`embed_images`). Used by the trainer, the pipeline's steps,
the explorer and the benchmarks.

Two kinds of input:

* ``images``: decoded uint8 images (N, H, W, 3), e.g. the memory-mapped image cache; the
  network preprocesses them and runs every stage.
* ``stage_features``: the float16 outputs (N, C, H, W) of the network's frozen stages (see
  `stage_cache`); the network runs only the stages after them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ranking_lib.core.devices import autocast, resolve_device, setup_device, to_device
from ranking_lib.core.errors import RankingError
from ranking_lib.models.model import EmbeddingNet
from ranking_lib.core.progress import progress as progress_bar

KINDS = ("images", "stage_features")


@dataclass(frozen=True)
class ModelInputs:
    """An array of network inputs and its kind (``images`` or ``stage_features``).

    `images`: with stage features, the uint8 images (N, H, W, 3) they were computed from, for
    the multiscale network's shallow paths (which always read images)."""

    array: np.ndarray
    kind: str = "images"
    images: np.ndarray | None = None

    def __post_init__(self) -> None:
        im = self.images
        if im is not None and (im.dtype != np.uint8 or im.ndim != 4 or im.shape[-1] != 3 or len(im) != len(self.array)):
            raise RankingError(f"images beside stage features must be uint8 (N, H, W, 3) with N = "
                               f"{len(self.array)}, got {im.dtype} {tuple(im.shape)}")
        a = self.array
        if self.kind == "images" and (a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3):
            raise RankingError(f"images must be uint8 (N, H, W, 3), got {a.dtype} {tuple(a.shape)}")
        if self.kind == "stage_features" and (a.dtype != np.float16 or a.ndim != 4):
            raise RankingError(f"stage features must be float16 (N, C, H, W), got {a.dtype} {tuple(a.shape)}")
        if self.kind not in KINDS:
            raise RankingError(f"input kind must be one of {KINDS} (got {self.kind!r})")

    @classmethod
    def of(cls, x: "ModelInputs | np.ndarray") -> "ModelInputs":
        """`x` itself, or a plain array taken as ``images`` (stage features must say so)."""
        if isinstance(x, ModelInputs):
            return x
        if getattr(x, "dtype", None) == np.float16:
            raise RankingError("a float16 array is not images: pass ModelInputs(array, 'stage_features')")
        return cls(x, "images")

    @property
    def from_stage(self) -> bool:
        return self.kind == "stage_features"

    def __len__(self) -> int:
        return len(self.array)


def features(net: EmbeddingNet, x: torch.Tensor, kind: str) -> torch.Tensor:
    """The backbone's pooled features of a batch of inputs of `kind`."""
    return net.features_from_stage(x) if kind == "stage_features" else net.features(net.preprocess(x))


def mirror(x: torch.Tensor | None, kind: str) -> torch.Tensor | None:
    """Left-right mirror of a batch: images are (N, H, W, 3), stage features (N, C, H, W)."""
    if x is None:
        return None
    return x.flip(2) if kind == "images" else x.flip(-1)


def embed_batch(net: EmbeddingNet, x: torch.Tensor, kind: str, images: torch.Tensor | None = None,
                baseline: bool = False) -> torch.Tensor:
    """Embeddings (float32) of one batch of inputs of `kind`; `images` are the uint8 images of
    a stage-feature batch (the multiscale network's shallow paths read them). `baseline`: the
    L2-normalised pooled backbone features, without the head."""
    feats = features(net, x, kind)
    if baseline:
        return torch.nn.functional.normalize(feats.float(), dim=1)
    return net.embed_features(feats, x if kind == "images" else images).float()


def on_device_for_inference(net: EmbeddingNet, device: torch.device | str) -> EmbeddingNet:
    """`net` on `device` in eval mode, moved there *outside* inference mode: a module moved to
    another device inside ``torch.inference_mode`` gets inference-tensor parameters, which a
    later training step cannot use ("Inference tensors cannot be saved for backward")."""
    return net.to(device).eval()


def embed_images(net: EmbeddingNet, inputs: ModelInputs | np.ndarray, batch_size: int = 256,
                 device: str = "auto", *, baseline: bool = False, progress: bool = True, desc: str = "embed",
                 bf16_cpu: bool = False, flip_tta: bool = False) -> np.ndarray:
    """Embed all `inputs` with one network, in batches; float32 (N, embedding_dim).

    `baseline=True` returns the backbone's pooled features, L2-normalised, without the
    (untrained) head: the frozen pretrained network the ranking training starts from.
    `flip_tta=True` averages each input's embedding with its horizontal mirror's (the image
    flipped left-right, or the stage feature map flipped along its width) and re-normalises
    when the network's embeddings are L2-normalised (always for `baseline`).
    """
    inputs = ModelInputs.of(inputs)
    dev = resolve_device(device)
    setup_device(dev)
    net = on_device_for_inference(net, dev)
    out = []
    with torch.inference_mode():
        for i in progress_bar(range(0, len(inputs), batch_size), desc=desc, enabled=progress, unit="batch"):
            x = to_device(torch.from_numpy(np.array(inputs.array[i:i + batch_size])), dev)
            im = None
            if net.multiscale and inputs.from_stage and not baseline:
                if inputs.images is None:
                    raise RankingError("the multiscale network needs the images beside the stage features")
                im = to_device(torch.from_numpy(np.array(inputs.images[i:i + batch_size])), dev)
            with autocast(dev, True, bf16_cpu):
                z = embed_batch(net, x, inputs.kind, im, baseline)
                if flip_tta:
                    z = z + embed_batch(net, mirror(x, inputs.kind), inputs.kind, mirror(im, "images"), baseline)
                    z = torch.nn.functional.normalize(z, dim=1) if baseline or net.normalize else z / 2
            out.append(z.float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)
