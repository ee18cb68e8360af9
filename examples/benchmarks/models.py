"""Standard architectures at their usual widths, for 28x28 single-channel images (standard.py).

Built from ``lightning_fair.demos.zoo``'s builders where those match, adjusted where they do not:

* ``vgg11_bn``: VGG-11 with BatchNorm, convs 64-M-128-M-256-256-M-512-512-M-512-512 (bias-free
  3x3 conv + BN + ReLU; four max-pools, so 28x28 ends at 1x1), global average pool, **one**
  Linear classifier (``zoo.vgg_bn`` with its hidden Linear dropped);
* ResNet-20 / ResNet-56: CIFAR ResNets, ``zoo.resnet(width=16, layers=(3, 3, 3))`` / ``(9, 9, 9)``
  as they are (16-32-64, basic blocks, bias-free convs + BN, 1x1-conv shortcuts);
* ``mobilenet_v2``: MobileNetV2 at width 1.0 with the paper's (t, c, n, s) setting, CIFAR-style
  (stem of 32 channels at stride 1, the second stage at stride 1), the last 1x1 conv to 1280
  channels, global average pool, Linear (``zoo.mobilenet_v2`` with its 128-wide last conv
  replaced).
* ``vit``: a small Vision Transformer written the way timm writes it (vit.py): 4x4 patches by a
  strided conv, a class token and learned position embeddings, pre-norm blocks of fused-qkv
  multi-head attention (``Attention.qkv`` reshaped to ``(3, num_heads, head_dim)``) and a GELU MLP,
  final LayerNorm, the class token to a Linear ``head``.

Every CNN ends in ``model.classifier`` (an ``nn.Linear``), as the zoo's do.

Example:
    >>> import torch
    >>> MODELS["vgg11_bn"]()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_fair.demos import zoo

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)
MOBILENET_V2_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def vgg11_bn(in_channels: int = 1, num_classes: int = 10, cfg=VGG11) -> nn.Module:
    """VGG-11-BN (``cfg`` as ``zoo.vgg_bn``), global average pool, a single Linear classifier."""
    model = zoo.vgg_bn(in_channels, num_classes, cfg=cfg)
    width = model.classifier.in_features // 2  # zoo's hidden Linear is Linear(c, 2c)
    model.head = nn.Identity()
    model.classifier = nn.Linear(width, num_classes)
    return model


def mobilenet_v2(
    in_channels: int = 1,
    num_classes: int = 10,
    width_mult: float = 1.0,
    setting=MOBILENET_V2_SETTING,
    last_channels: int = 1280,
) -> nn.Module:
    """MobileNetV2 (inverted residuals of ``zoo.mobilenet_v2``), last 1x1 conv-BN-ReLU6 to
    ``last_channels``, global average pool, Linear."""
    model = zoo.mobilenet_v2(in_channels, num_classes, width_mult=width_mult, setting=setting)
    last = model.features[-1][0]  # zoo's 1x1 conv-BN-ReLU6 to 128 channels
    model.features[-1] = nn.Sequential(
        nn.Conv2d(last.in_channels, last_channels, 1, bias=False), nn.BatchNorm2d(last_channels), nn.ReLU6(inplace=True)
    )
    model.classifier = nn.Linear(last_channels, num_classes)
    return model


class Attention(nn.Module):
    """timm's ``Attention``: one fused ``qkv`` Linear; ``num_heads`` / ``head_dim`` read at every forward."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, num_heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT for ``image_size`` square images: patch embedding, class token, position embedding, blocks."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        patch_size: int = 4,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 8,
        mlp_ratio: float = 2.0,
    ):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        tokens = (image_size // patch_size) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


#: ResNet-20 / ResNet-56 are ``MODELS["resnet"](layers=(3, 3, 3))`` / ``(9, 9, 9)`` (width 16, the default)
MODELS = {"vgg11_bn": vgg11_bn, "resnet": zoo.resnet, "mobilenet_v2": mobilenet_v2, "vit": VisionTransformer}
