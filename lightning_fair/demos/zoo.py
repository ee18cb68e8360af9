"""Small, hand-written reference models for tests, the demo and benchmarks.

Every builder is plain PyTorch (no torchvision, no Lightning).  The conv
models take NCHW images and work for 8x8 (sklearn digits), 28x28 (MNIST) and
32x32 inputs thanks to an ``nn.AdaptiveAvgPool2d`` before the head; ``mlp``
flattens any input.  All models return logits ``[B, num_classes]`` and end in
a single ``nn.Linear`` stored as ``model.classifier``.  Activations are
``nn.Module`` instances so pruning tools and hooks can see them.

Example:
    >>> from lightning_fair.demos.zoo import MODELS
    >>> model = MODELS["resnet"](in_channels=1, num_classes=10)
"""

from typing import Sequence, Tuple, Union

import torch
from torch import nn

__all__ = [
    "mlp",
    "small_cnn",
    "vgg_bn",
    "resnet",
    "mobilenet_v2",
    "densenet",
    "grouped_cnn",
    "MODELS",
]


def _conv_bn_act(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: type = nn.ReLU
) -> nn.Sequential:
    """Conv (bias-free, 'same' padding) -> BN -> activation.

    Example: ``_conv_bn_act(3, 16)``.
    """
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        act(inplace=True),
    )


class _PooledNet(nn.Module):
    """``features`` -> AdaptiveAvgPool2d(1) -> Flatten -> ``head`` -> ``classifier``."""

    def __init__(self, features: nn.Module, feat_dim: int, num_classes: int, hidden: int = 0):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        if hidden:
            self.head = nn.Sequential(nn.Linear(feat_dim, hidden), nn.ReLU(inplace=True))
        else:
            self.head = nn.Identity()
        self.classifier = nn.Linear(hidden or feat_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.features(x)))
        return self.classifier(self.head(x))


# --------------------------------------------------------------------------- MLP
class _MLP(nn.Module):
    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int):
        super().__init__()
        layers = [nn.Flatten(1)]
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU(inplace=True)]
            prev = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def mlp(in_features: int = 64, hidden: Sequence[int] = (300, 100), num_classes: int = 10) -> nn.Module:
    """LeNet-300-100 style MLP: Flatten, Linear-ReLU per hidden size, classifier.

    Example: ``mlp(in_features=784)(torch.randn(4, 1, 28, 28)).shape == (4, 10)``.
    """
    return _MLP(in_features, hidden, num_classes)


# ---------------------------------------------------------------- plain CNNs
def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 16) -> nn.Module:
    """Three conv-BN-ReLU layers with one 2x2 max-pool, a 64-unit hidden layer.

    Example: ``small_cnn(width=8)(torch.randn(2, 1, 8, 8)).shape == (2, 10)``.
    """
    features = nn.Sequential(
        _conv_bn_act(in_channels, width),
        _conv_bn_act(width, width),
        nn.MaxPool2d(2),
        _conv_bn_act(width, 2 * width),
    )
    return _PooledNet(features, 2 * width, num_classes, hidden=64)


def vgg_bn(
    in_channels: int = 1, num_classes: int = 10, cfg: Sequence[Union[int, str]] = (16, "M", 32, "M", 64, 64)
) -> nn.Module:
    """VGG-style Conv3x3-BN-ReLU stack ('M' = MaxPool2d(2)), Linear(c, 2c)-ReLU, classifier.

    Example: ``vgg_bn(in_channels=3)(torch.randn(2, 3, 32, 32)).shape == (2, 10)``.
    """
    layers, c = [], in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers.append(_conv_bn_act(c, int(v)))
            c = int(v)
    return _PooledNet(nn.Sequential(*layers), c, num_classes, hidden=2 * c)


def grouped_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 16, groups: int = 4) -> nn.Module:
    """Stem conv, a grouped (not depthwise) 3x3 conv with ``groups`` groups, a 1x1 conv.

    Example: ``grouped_cnn(groups=2)(torch.randn(2, 1, 8, 8)).shape == (2, 10)``.
    """
    c = 2 * width
    features = nn.Sequential(
        _conv_bn_act(in_channels, c),
        _conv_bn_act(c, c, groups=groups),
        _conv_bn_act(c, c, kernel=1),
    )
    return _PooledNet(features, c, num_classes)


# -------------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU (one shared ``relu``)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride), 1x1 expand x4, as torchvision (one shared ``relu``)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(cin: int, cout: int, stride: int):
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


def resnet(
    in_channels: int = 1,
    num_classes: int = 10,
    block: str = "basic",
    layers: Sequence[int] = (1, 1, 1),
    width: int = 16,
    stem: str = "cifar",
) -> nn.Module:
    """ResNet with stages of width w, 2w, 4w, ... (stride 2 from the second stage on).

    ``block`` is ``"basic"`` or ``"bottleneck"``; ``stem`` is ``"cifar"`` (3x3 conv, full
    resolution) or ``"imagenet"`` (7x7 stride-2 conv and a 3x3 stride-2 max-pool, as ResNet-50).
    Example: ``resnet(block="bottleneck", layers=(2, 2, 2))(torch.randn(2, 1, 32, 32))``.
    """
    blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
    if block not in blocks:
        raise ValueError(f"block must be one of {sorted(blocks)}, got {block!r}")
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
    cls = blocks[block]
    if stem == "imagenet":
        stages = [
            nn.Sequential(
                nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        ]
    else:
        stages = [_conv_bn_act(in_channels, width)]
    c = width
    for i, n in enumerate(layers):
        planes = width * 2**i
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            stages.append(cls(c, planes, stride))
            c = planes * cls.expansion
    return _PooledNet(nn.Sequential(*stages), c, num_classes)


# --------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    """[1x1 expand-BN-ReLU6] -> depthwise 3x3-BN-ReLU6 -> 1x1 project-BN (+ residual)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn_act(cin, hidden, 1, act=nn.ReLU6)]
        layers += [
            _conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res else out


def mobilenet_v2(
    in_channels: int = 1,
    num_classes: int = 10,
    width_mult: float = 1.0,
    setting: Sequence[Tuple[int, int, int, int]] = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2)),
) -> nn.Module:
    """Tiny MobileNetV2; ``setting`` rows are (t, c, n, s) as in the paper.

    Example: ``mobilenet_v2(width_mult=0.5)(torch.randn(2, 1, 28, 28)).shape == (2, 10)``.
    """
    c = max(1, int(32 * width_mult))
    layers = [_conv_bn_act(in_channels, c, act=nn.ReLU6)]
    for t, ch, n, s in setting:
        cout = max(1, int(ch * width_mult))
        for i in range(n):
            layers.append(InvertedResidual(c, cout, s if i == 0 else 1, t))
            c = cout
    layers.append(_conv_bn_act(c, 128, 1, act=nn.ReLU6))
    return _PooledNet(nn.Sequential(*layers), 128, num_classes)


# ------------------------------------------------------------------ DenseNet
class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1(4*growth)-BN-ReLU-Conv3x3(growth); returns ``cat([x, out], 1)``."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth),
            nn.ReLU(inplace=True),
            nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


def densenet(
    in_channels: int = 1,
    num_classes: int = 10,
    growth: int = 8,
    blocks: Sequence[int] = (2, 2),
    init_channels: int = 16,
) -> nn.Module:
    """DenseNet-BC-like net; transitions halve channels and (ceil-mode) halve resolution.

    Example: ``densenet(blocks=(3, 3, 3))(torch.randn(2, 1, 32, 32)).shape == (2, 10)``.
    """
    layers = [nn.Conv2d(in_channels, init_channels, 3, padding=1, bias=False)]
    c = init_channels
    for b, n in enumerate(blocks):
        for _ in range(n):
            layers.append(DenseLayer(c, growth))
            c += growth
        if b < len(blocks) - 1:
            layers += [
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.Conv2d(c, c // 2, 1, bias=False),
                nn.AvgPool2d(2, ceil_mode=True),
            ]
            c //= 2
    layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
    return _PooledNet(nn.Sequential(*layers), c, num_classes)


MODELS = {
    "mlp": mlp,
    "small_cnn": small_cnn,
    "vgg_bn": vgg_bn,
    "resnet": resnet,
    "mobilenet_v2": mobilenet_v2,
    "densenet": densenet,
    "grouped_cnn": grouped_cnn,
}
