"""The embedding network as a standalone file: TorchScript or ONNX, preprocessing included.

The exported module takes one uint8 RGB image (H, W, 3) of any size and returns its embedding
(d,) float32: it resizes the image to the dataset's image size (64 px; bilinear, antialiased
when shrinking, rounded to uint8 as the decoded data is), then runs the network as the library
does (its own resize to `input_size`, normalisation, backbone, head; the ``baseline`` is the
L2-normalised pooled backbone features). An image already at the dataset's size gives the
library's embedding (a test holds the difference <= 1e-4); another size is resized by torch's
antialiased bilinear, close to but not bit-identical with Pillow's, which the library uses.

`input_contract` is the JSON written beside the file, so that another program can feed it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import atomic_path, write_json
from ranking_lib.models.model import EmbeddingNet

FORMATS = ("torchscript", "onnx")
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}
ONNX_OPSET = 17


class ImageEmbedder(nn.Module):
    """uint8 (H, W, 3) -> float32 (d,): the dataset's resize, then the network."""

    def __init__(self, net: EmbeddingNet, image_size: int = 64, baseline: bool = False) -> None:
        super().__init__()
        self.net = net.eval()
        self.image_size = image_size
        self.baseline = baseline

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = resize(image.float().permute(2, 0, 1), self.image_size).round().clamp(0, 255)  # the decoded image
        uint8 = x.to(torch.uint8).permute(1, 2, 0).unsqueeze(0)  # what the library feeds the network
        if net.input_size != self.image_size:  # the network's own resize (EmbeddingNet.preprocess)
            x = resize(x, net.input_size)
        x = (x.unsqueeze(0) / 255.0 - net.mean) / net.std
        if net.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = net.features(x)
        if self.baseline:
            return F.normalize(feats.float(), dim=1)[0]
        return net.embed_features(feats, uint8)[0].float()


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) float -> (C, size, size), bilinear (`resize_weights`)."""
    rows = resize_weights(torch.arange(x.shape[1], dtype=torch.float32), size)
    cols = resize_weights(torch.arange(x.shape[2], dtype=torch.float32), size)
    return torch.matmul(torch.matmul(rows, x), cols.t())


def resize_weights(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """(size, n) weights of a bilinear resize of n = len(`pixels`) (``arange(n)``, float) pixels to
    `size`: the triangle filter widened by the scale when shrinking (antialiasing, as Pillow's
    and torch's ``antialias=True``), each row normalised. Built from tensor ops on the input's
    length, so a traced or exported graph resizes images of any size."""
    n = pixels[-1:] + 1.0
    scale = n / size
    support = torch.clamp(scale, min=1.0)
    centers = (torch.arange(size, dtype=torch.float32) + 0.5) * scale
    w = torch.clamp(1.0 - torch.abs((pixels[None, :] + 0.5 - centers[:, None]) / support), min=0.0)
    return w / w.sum(dim=1, keepdim=True)


def input_contract(net: EmbeddingNet, *, fmt: str, image_size: int, baseline: bool, network: dict) -> dict:
    return {"format": fmt, "input": {"name": "image", "dtype": "uint8", "shape": ["H", "W", 3], "channels": "RGB",
                                     "note": "one decoded image, any size, EXIF orientation applied by the caller"},
            "output": {"name": "embedding", "dtype": "float32",
                       "shape": [net.backbone.feature_dim if baseline else net.embedding_dim],
                       "l2_normalised": bool(baseline or net.normalize), "distance": "euclidean"},
            "preprocessing": [f"resize to {image_size} x {image_size} (bilinear, antialiased), round to uint8",
                              f"resize to {net.input_size} x {net.input_size} (bilinear)",
                              f"scale to [0, 1], normalise with mean {list(net.backbone.mean)} and std "
                              f"{list(net.backbone.std)}"],
            "network": network}


def export(net: EmbeddingNet, out: str | Path, fmt: str, *, image_size: int = 64, baseline: bool = False,
           network: dict | None = None) -> tuple[Path, Path]:
    """Write the network of `net` (on the CPU, fp32) to `out` in `fmt`, and the input contract
    to ``<out>.json``; returns both paths."""
    if fmt not in FORMATS:
        raise RankingError(f"export format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    if fmt == "onnx" and net.multiscale and not baseline:
        raise RankingError("ONNX export of the multiscale network is not supported (its shallow paths resize with "
                           "antialiasing, which the ONNX exporter lacks): use --format torchscript")
    module = ImageEmbedder(net.cpu().float().eval(), image_size, baseline).eval()
    module.requires_grad_(False)  # the file's outputs carry no autograd history
    example = torch.randint(0, 256, (image_size, image_size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = Path(out)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python-side shape checks
        with atomic_path(out) as tmp:
            if fmt == "torchscript":
                torch.jit.save(torch.jit.trace(module, (example,), check_trace=False), str(tmp))
            else:
                torch.onnx.export(module, (example,), str(tmp), input_names=["image"], output_names=["embedding"],
                                  dynamic_axes={"image": {0: "height", 1: "width"}}, opset_version=ONNX_OPSET,
                                  dynamo=False)
    contract = input_contract(net, fmt=fmt, image_size=image_size, baseline=baseline, network=network or {})
    return out, write_json(out.with_name(out.name + ".json"), contract)
