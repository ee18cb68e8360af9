"""Standard architectures at their usual widths, for 28x28 single-channel images (standard.py).

Built from ``lightning_fair.zoo``'s builders where those match, adjusted where they do not:

* ``vgg11_bn``: VGG-11 with BatchNorm, convs 64-M-128-M-256-256-M-512-512-M-512-512 (bias-free
  3x3 conv + BN + ReLU; four max-pools, so 28x28 ends at 1x1), global average pool, **one**
  Linear classifier (``zoo.vgg_bn`` with its hidden Linear dropped);
* ResNet-20 / ResNet-56: CIFAR ResNets, ``zoo.resnet(width=16, layers=(3, 3, 3))`` / ``(9, 9, 9)``
  as they are (16-32-64, basic blocks, bias-free convs + BN, 1x1-conv shortcuts);
* ``mobilenet_v2``: MobileNetV2 at width 1.0 with the paper's (t, c, n, s) setting, CIFAR-style
  (stem of 32 channels at stride 1, the second stage at stride 1), the last 1x1 conv to 1280
  channels, global average pool, Linear (``zoo.mobilenet_v2`` with its 128-wide last conv
  replaced).

Every model ends in ``model.classifier`` (an ``nn.Linear``), as the zoo's do.

Example:
    >>> import torch
    >>> MODELS["vgg11_bn"]()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from torch import nn

from lightning_fair import zoo

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)
MOBILENET_V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def vgg11_bn(in_channels: int = 1, num_classes: int = 10, cfg=VGG11) -> nn.Module:
    """VGG-11-BN (``cfg`` as ``zoo.vgg_bn``), global average pool, a single Linear classifier."""
    model = zoo.vgg_bn(in_channels, num_classes, cfg=cfg)
    width = model.classifier.in_features // 2  # zoo's hidden Linear is Linear(c, 2c)
    model.head = nn.Identity()
    model.classifier = nn.Linear(width, num_classes)
    return model


def mobilenet_v2(in_channels: int = 1, num_classes: int = 10, width_mult: float = 1.0,
                 setting=MOBILENET_V2_SETTING, last_channels: int = 1280) -> nn.Module:
    """MobileNetV2 (inverted residuals of ``zoo.mobilenet_v2``), last 1x1 conv-BN-ReLU6 to
    ``last_channels``, global average pool, Linear."""
    model = zoo.mobilenet_v2(in_channels, num_classes, width_mult=width_mult, setting=setting)
    last = model.features[-1][0]  # zoo's 1x1 conv-BN-ReLU6 to 128 channels
    model.features[-1] = nn.Sequential(nn.Conv2d(last.in_channels, last_channels, 1, bias=False),
                                       nn.BatchNorm2d(last_channels), nn.ReLU6(inplace=True))
    model.classifier = nn.Linear(last_channels, num_classes)
    return model


#: ResNet-20 / ResNet-56 are ``MODELS["resnet"](layers=(3, 3, 3))`` / ``(9, 9, 9)`` (width 16, the default)
MODELS = {"vgg11_bn": vgg11_bn, "resnet": zoo.resnet, "mobilenet_v2": mobilenet_v2}
