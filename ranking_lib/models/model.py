"""`EmbeddingNet`: backbone + embedding head, taking uint8 images and returning embeddings.

The three networks of the paper (query, positive, negative) share one set of weights, so the
trainer runs a triplet batch of B as one batch of 3B images through one `EmbeddingNet`.

``architecture="multiscale"`` is the paper's multiscale network (§3, Fig. 3): beside the
backbone, two shallow paths (`ShallowPath`) see the image subsampled 4:1 and 8:1 (relative to
the backbone's input size), each one convolution and a max-pool to a 4 x 4 x 96 map; the
backbone's pooled features and both paths are L2-normalised, concatenated, and the head maps
them to the embedding. The shallow paths always read the uint8 images, so they stay cheap
when the backbone reads cached stage features.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ranking_lib.models.backbones import Backbone, create_backbone
from ranking_lib.core.errors import RankingError
from ranking_lib.core.registry import Registry


class ShallowPath(nn.Module):
    """One shallow path of the multiscale network: the normalised image resized to
    `input_size // factor`, a 5 x 5 stride-2 convolution (96 channels) + ReLU, and an adaptive
    max-pool to a 4 x 4 grid, flattened (1,536 values, as the paper's 4 x 4 x 96)."""

    def __init__(self, input_size: int, factor: int, channels: int = 96, grid: int = 4) -> None:
        super().__init__()
        self.factor = factor
        self.size = max(2 * grid, input_size // factor)
        self.conv = nn.Conv2d(3, channels, kernel_size=5, stride=2, padding=2)
        self.pool = nn.AdaptiveMaxPool2d(grid)
        self.out_dim = channels * grid * grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: normalised float images (N, 3, H, W) at any size."""
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > self.size)
        return self.pool(F.relu(self.conv(x))).flatten(1)


SUBSAMPLING = (4, 8)  # the multiscale network's shallow paths: input subsampled 4:1 and 8:1

ARCHITECTURES: Registry[tuple[int, ...]] = Registry("architecture")
"""Architecture name -> the subsampling factors of its shallow paths (the config field ``architecture``)."""
ARCHITECTURES.add("single", ())
ARCHITECTURES.add("multiscale", SUBSAMPLING)

HEADS: Registry = Registry("head")
"""Embedding head name -> constructor ``(in_features, embedding_dim) -> nn.Module`` (the config field ``head``)."""
HEADS.add("linear", lambda f, dim: nn.Linear(f, dim))
HEADS.add("mlp", lambda f, dim: nn.Sequential(nn.Linear(f, 1024), nn.ReLU(inplace=True), nn.Linear(1024, dim)))


class EmbeddingNet(nn.Module):
    """Maps uint8 images (N, H, W, 3) to embeddings (N, embedding_dim).

    Args:
        backbone: registry name (see :data:`ranking_lib.models.backbones.BACKBONES`).
        embedding_dim: size of the embedding.
        pretrained: load the backbone's ImageNet weights.
        input_size: images are resized (bilinear) to input_size x input_size.
        head: ``linear`` (pooled features -> embedding) or ``mlp`` (-> 1024 -> ReLU -> embedding).
        normalize: L2-normalise the embedding.
        freeze_stages: the first N backbone stages keep their weights and BN statistics.
        channels_last: run convolutions in channels-last memory format (faster on CPU and GPU).
        freeze_bn: keep every backbone BatchNorm in eval mode while training (fixed statistics).
        architecture: ``single`` or ``multiscale`` (adds the two `ShallowPath`s).
    """

    def __init__(self, backbone: str = "efficientnet_lite0", *, embedding_dim: int = 128,
                 pretrained: bool = True, input_size: int = 128, head: str = "linear",
                 normalize: bool = True, freeze_stages: int = 0, channels_last: bool = True,
                 freeze_bn: bool = False, architecture: str = "single") -> None:
        super().__init__()
        self.backbone: Backbone = create_backbone(backbone, pretrained)
        if freeze_stages > self.backbone.num_stages:
            raise RankingError(
                f"freeze_stages={freeze_stages} but {backbone} has {self.backbone.num_stages} stages")
        self.backbone_name = backbone
        self.embedding_dim = embedding_dim
        self.input_size = input_size
        self.normalize = normalize
        self.freeze_stages = freeze_stages
        self.channels_last = channels_last
        self.freeze_bn = freeze_bn
        self.arch = architecture
        self.paths = nn.ModuleList([ShallowPath(input_size, k) for k in ARCHITECTURES.get(architecture)])
        f = self.backbone.feature_dim + sum(p.out_dim for p in self.paths)
        self.head = HEADS.get(head)(f, embedding_dim)
        self.register_buffer("mean", torch.tensor(self.backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.backbone.std).view(1, 3, 1, 1), persistent=False)
        for stage in self.backbone.stages[:freeze_stages]:
            for p in stage.parameters():
                p.requires_grad_(False)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    # ---- pieces ------------------------------------------------------------------------
    @property
    def multiscale(self) -> bool:
        return self.arch == "multiscale"

    def normalised(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float (N, 3, H, W) normalised with the backbone's mean and std."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise RankingError(f"expected uint8 images of shape (N, H, W, 3), got {tuple(images.shape)} {images.dtype}")
        return (images.permute(0, 3, 1, 2).float().div_(255.0) - self.mean) / self.std

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float (N, 3, S, S), resized and normalised."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise RankingError(f"expected uint8 images of shape (N, H, W, 3), got {tuple(images.shape)} {images.dtype}")
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > self.input_size)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def train(self, mode: bool = True) -> "EmbeddingNet":
        super().train(mode)
        for stage in self.backbone.stages[: self.freeze_stages]:
            stage.eval()  # frozen stages keep their BN statistics
        if self.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features of preprocessed input."""
        k = self.freeze_stages
        if k:
            with torch.no_grad():
                x = self.backbone.forward_stages(x, 0, k)
        return self.backbone.pool(self.backbone.forward_stages(x, k))

    def features_from_stage(self, maps: torch.Tensor) -> torch.Tensor:
        """Pooled features from the output of the frozen stages (see `stage_cache`)."""
        x = maps.float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone.pool(self.backbone.forward_stages(x, self.freeze_stages))

    def embed_features(self, feats: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """The embedding of pooled backbone features; the multiscale network also needs the
        uint8 `images` (N, H, W, 3) the features came from, for its shallow paths."""
        feats = feats.float()
        if self.multiscale:
            if images is None:
                raise RankingError("the multiscale network needs the images for its shallow paths")
            x = self.normalised(images)
            feats = torch.cat([F.normalize(feats, dim=1)] + [F.normalize(p(x).float(), dim=1) for p in self.paths], 1)
        z = self.head(feats)
        return F.normalize(z, dim=1) if self.normalize else z

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.features(self.preprocess(images)), images)

    def architecture(self) -> dict:
        return {"backbone": self.backbone_name, "embedding_dim": self.embedding_dim,
                "head": "mlp" if isinstance(self.head, nn.Sequential) else "linear",
                "normalize_embeddings": self.normalize, "architecture": self.arch}


def imagenet_synsets() -> list[str]:
    """The 1,000 ImageNet-1k synset ids in the order of the classifiers' outputs."""
    return (Path(__file__).parent / "resources" / "imagenet_synsets.txt").read_text().split()


def init_head_from_classifier(net: EmbeddingNet, wnids: list[str]) -> int:
    """Start the linear head from the backbone's ImageNet classifier rows of the dataset's classes.

    Tiny ImageNet's classes are ImageNet synsets, so the pretrained classifier already scores
    them; row j of the head becomes the classifier row of class j (classes beyond
    `embedding_dim` are dropped; rows without a matching synset keep their random init).
    Returns how many rows were copied; 0 means no dataset class is an ImageNet synset.
    """
    if not isinstance(net.head, nn.Linear):
        raise RankingError("head_init=classifier needs head=linear")
    clf = net.backbone.classifier
    f = net.backbone.feature_dim
    if clf is None or clf.in_features != f:
        raise RankingError(f"backbone {net.backbone_name} has no classifier to start the head from")
    index = {w: i for i, w in enumerate(imagenet_synsets())}
    copied = 0
    with torch.no_grad():
        for j, w in enumerate(wnids[: net.embedding_dim]):
            if w in index:
                # multiscale: the backbone's columns; its features arrive L2-normalised, so the
                # classifier's bias (made for raw features) is left out
                net.head.weight[j, :f] = clf.weight[index[w]]
                net.head.bias[j] = 0.0 if net.multiscale else clf.bias[index[w]]
                copied += 1
    return copied


HEAD_INITS: Registry = Registry("head_init")
"""Head init name -> ``(net, wnids) -> rows copied``, or None for the seeded random init (the config field ``head_init``)."""
HEAD_INITS.add("random", None)
HEAD_INITS.add("classifier", init_head_from_classifier)


def build_model(*, seed: int, backbone: str, embedding_dim: int, pretrained: bool, input_size: int, head: str,
                normalize_embeddings: bool, freeze_stages: int, channels_last: bool, freeze_bn: bool,
                architecture: str) -> EmbeddingNet:
    """An `EmbeddingNet` with its head initialised from `seed` (a run's: ``workflow.model_kwargs(cfg)``)."""
    torch.manual_seed(seed)
    return EmbeddingNet(backbone, embedding_dim=embedding_dim, pretrained=pretrained, input_size=input_size, head=head,
                        normalize=normalize_embeddings, freeze_stages=freeze_stages, channels_last=channels_last,
                        freeze_bn=freeze_bn, architecture=architecture)
