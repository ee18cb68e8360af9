"""Hand-written equivalents of the modern CNN / MLP families of issue 14 (torchvision and timm are
not installable here), small enough for 8x8 digits: each takes ``[B, 1, 8, 8]`` and returns
``[B, 10]`` logits from a final ``nn.Linear`` called ``classifier``.

- :func:`shufflenet`: ShuffleNetV2 units (channel split, branch, concat, channel shuffle through
  ``view(b, g, c // g, h, w).transpose(1, 2).reshape``), as torchvision's ``shufflenet_v2``.
- :func:`mixer`: MLP-Mixer (token-mixing MLP over the patches, channel-mixing MLP), as timm's
  ``mixer_s16_224``.
- :func:`rexnet`: ReXNet partial residuals (the shortcut is added onto the first ``C_in`` channels
  of a wider output, in place), as timm's ``rexnet_100``.
- :func:`convnext`: ConvNeXt blocks (depthwise 7x7, channels-last LayerNorm through ``permute``,
  pointwise MLP, layer-scale ``gamma`` parameter, residual), as torchvision's ``convnext_tiny``.
- :func:`poolformer`: PoolFormer blocks whose layer scale reshapes with a stored shape, as timm's
  ``poolformer_s12``.
- :func:`ghostnet`: GhostNet ghost modules (concat of a primary conv and a cheap depthwise conv,
  sliced) in residual bottlenecks on the stem, as timm's ``ghostnet_100``.
- :func:`swin`: torchvision's Swin in small (padding, shifted windows with ``torch.roll``, window
  partition / reverse through ``view``/``permute``, attention through ``F.linear`` with the
  modules' weights, relative position bias, patch merging by strided slices): torch-pruning's
  group search through its attention never ends (the ``swin_t`` memory growth).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10


def _conv_bn(cin, cout, kernel=1, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if act else nn.Sequential(*layers)


class _Pooled(nn.Module):
    def __init__(self, stem, blocks, channels, head=None):
        super().__init__()
        self.stem, self.blocks = stem, blocks
        self.head = head or nn.Identity()
        self.classifier = nn.Linear(channels, NUM_CLASSES)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.classifier(self.head(x.mean((2, 3))))


# ------------------------------------------------------------------ ShuffleNetV2
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleUnit(nn.Module):
    """torchvision's InvertedResidual of ShuffleNetV2 (stride 1: split; stride 2: two branches)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(_conv_bn(cin, cin, 3, stride, groups=cin, act=False), _conv_bn(cin, half))
        branch_in = cin if stride > 1 else half
        self.branch2 = nn.Sequential(
            _conv_bn(branch_in, half), _conv_bn(half, half, 3, stride, groups=half, act=False), _conv_bn(half, half)
        )

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


def shufflenet(width: int = 16) -> nn.Module:
    """Three units (the third makes torch-pruning's reshape mapping divide by zero) and a 1x1 conv."""
    stem = _conv_bn(1, width, 3)
    blocks = nn.Sequential(
        ShuffleUnit(width, 2 * width, 2),
        ShuffleUnit(2 * width, 2 * width, 1),
        ShuffleUnit(2 * width, 2 * width, 1),
        _conv_bn(2 * width, 4 * width),
    )
    return _Pooled(stem, blocks, 4 * width)


def shufflenet_stage(width: int = 8) -> nn.Module:
    """A whole stage as torchvision's ``shufflenet_v2_x0_5`` starts (a stride-2 unit and three stride-1
    units): the split after the third shuffle is where torch-pruning's index mapping runs out of
    offsets (IndexError), so those groups are left whole."""
    units = [ShuffleUnit(width, 2 * width, 2)] + [ShuffleUnit(2 * width, 2 * width, 1) for _ in range(3)]
    return _Pooled(_conv_bn(1, width, 3), nn.Sequential(*units, _conv_bn(2 * width, 4 * width)), 4 * width)


# ------------------------------------------------------------------ MLP-Mixer
class MixerBlock(nn.Module):
    def __init__(self, tokens, dim, token_hidden, channel_hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_fc1, self.token_fc2 = nn.Linear(tokens, token_hidden), nn.Linear(token_hidden, tokens)
        self.norm2 = nn.LayerNorm(dim)
        self.channel_fc1, self.channel_fc2 = nn.Linear(dim, channel_hidden), nn.Linear(channel_hidden, dim)
        self.act = nn.GELU()

    def forward(self, x):  # [B, tokens, dim]
        y = self.norm1(x).transpose(1, 2)
        x = x + self.token_fc2(self.act(self.token_fc1(y))).transpose(1, 2)
        return x + self.channel_fc2(self.act(self.channel_fc1(self.norm2(x))))


class Mixer(nn.Module):
    def __init__(self, dim=32, depth=2, patch=2):
        super().__init__()
        tokens = (8 // patch) ** 2
        self.stem = nn.Conv2d(1, dim, patch, patch)
        self.blocks = nn.Sequential(*[MixerBlock(tokens, dim, 2 * tokens, 2 * dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, NUM_CLASSES)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)  # [B, tokens, dim]
        return self.classifier(self.norm(self.blocks(x)).mean(1))


def mixer() -> nn.Module:
    return Mixer()


# ------------------------------------------------------------------ ReXNet
class PartialResidual(nn.Module):
    """timm's rexnet LinearBottleneck: expand, depthwise, project to a wider ``cout``; the input is
    added onto the first ``cin`` output channels in place."""

    def __init__(self, cin, cout, expand=2):
        super().__init__()
        self.cin = cin
        mid = cin * expand
        self.conv_exp = _conv_bn(cin, mid)
        self.conv_dw = _conv_bn(mid, mid, 3, groups=mid)
        self.conv_pwl = _conv_bn(mid, cout, act=False)

    def forward(self, x):
        out = self.conv_pwl(self.conv_dw(self.conv_exp(x)))
        out[:, 0 : self.cin] += x
        return out


def rexnet(width: int = 16) -> nn.Module:
    stem = _conv_bn(1, width, 3)
    blocks = nn.Sequential(
        PartialResidual(width, width + 6), PartialResidual(width + 6, width + 12), _conv_bn(width + 12, 2 * width)
    )
    return _Pooled(stem, blocks, 2 * width)


# ------------------------------------------------------------------ ConvNeXt
class ConvNeXtBlock(nn.Module):
    def __init__(self, dim, scale=1e-1):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(scale * torch.ones(dim))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def convnext(dim: int = 16) -> nn.Module:
    stem = nn.Sequential(nn.Conv2d(1, dim, 2, 2), LayerNorm2d(dim))
    blocks = nn.Sequential(ConvNeXtBlock(dim), ConvNeXtBlock(dim))
    return _Pooled(stem, blocks, dim, head=nn.LayerNorm(dim))


# ------------------------------------------------------------------ PoolFormer
class Scale(nn.Module):
    """timm's metaformer ``Scale``: a layer scale that reshapes with a stored shape."""

    def __init__(self, dim):
        super().__init__()
        self.shape = (dim, 1, 1)
        self.scale = nn.Parameter(0.1 * torch.ones(dim))

    def forward(self, x):
        return x * self.scale.view(self.shape)


class PoolFormerBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1, self.pool, self.scale1 = nn.GroupNorm(1, dim), nn.AvgPool2d(3, 1, 1), Scale(dim)
        self.norm2, self.scale2 = nn.GroupNorm(1, dim), Scale(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.GELU(), nn.Conv2d(2 * dim, dim, 1))

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.scale1(self.pool(y) - y)
        return x + self.scale2(self.mlp(self.norm2(x)))


def poolformer(dim: int = 16) -> nn.Module:
    return _Pooled(nn.Conv2d(1, dim, 3, padding=1), nn.Sequential(PoolFormerBlock(dim), PoolFormerBlock(dim)), dim)


# ------------------------------------------------------------------ GhostNet
class GhostModule(nn.Module):
    def __init__(self, cin, cout, relu=True, ratio=2):
        super().__init__()
        self.cout = cout
        init = math.ceil(cout / ratio)
        self.primary_conv = _conv_bn(cin, init, act=relu)
        self.cheap_operation = _conv_bn(init, init * (ratio - 1), 3, groups=init, act=relu)

    def forward(self, x):
        x1 = self.primary_conv(x)
        return torch.cat([x1, self.cheap_operation(x1)], dim=1)[:, : self.cout]


class GhostBottleneck(nn.Module):
    def __init__(self, cin, mid, cout):
        super().__init__()
        self.ghost1 = GhostModule(cin, mid)
        self.ghost2 = GhostModule(mid, cout, relu=False)

    def forward(self, x):
        return self.ghost2(self.ghost1(x)) + x


def ghostnet(width: int = 16) -> nn.Module:
    stem = _conv_bn(1, width, 3)
    blocks = nn.Sequential(
        GhostBottleneck(width, 2 * width, width), GhostBottleneck(width, 2 * width, width), _conv_bn(width, 2 * width)
    )
    return _Pooled(stem, blocks, 2 * width)


# ------------------------------------------------------------------ Swin
def shifted_window_attention(x, qkv_weight, proj_weight, position_bias, window, heads, shift, qkv_bias, proj_bias):
    """torchvision's (v1): pad, cyclic shift, window partition, attention with the module's weights
    through ``F.linear``, relative position bias and shift mask, window reverse, unshift, crop."""
    b, h, w, c = x.shape
    x = F.pad(x, (0, 0, 0, (window - w % window) % window, 0, (window - h % window) % window))
    _, ph, pw, _ = x.shape
    shift = 0 if window >= ph else shift
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    windows = (ph // window) * (pw // window)
    x = x.view(b, ph // window, window, pw // window, window, c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b * windows, window * window, c)
    qkv = F.linear(x, qkv_weight, qkv_bias).reshape(x.size(0), x.size(1), 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (c // heads) ** -0.5, qkv[1], qkv[2]
    attention = q.matmul(k.transpose(-2, -1)) + position_bias
    if shift:
        mask = x.new_zeros((ph, pw))
        mask[-shift:, :] += 1
        mask[:, -shift:] += 2
        mask = mask.view(ph // window, window, pw // window, window).permute(0, 2, 1, 3).reshape(windows, -1)
        mask = (mask.unsqueeze(1) - mask.unsqueeze(2)).ne(0).float() * -100.0
        attention = attention.view(-1, windows, heads, x.size(1), x.size(1)) + mask.unsqueeze(1).unsqueeze(0)
        attention = attention.view(-1, heads, x.size(1), x.size(1))
    x = attention.softmax(-1).matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), c)
    x = F.linear(x, proj_weight, proj_bias)
    x = x.view(b, ph // window, pw // window, window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
    if shift:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


class ShiftedWindowAttention(nn.Module):
    def __init__(self, dim, window, shift, heads):
        super().__init__()
        self.window, self.shift, self.heads = window, shift, heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(0.02 * torch.randn((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer(
            "relative_position_index", (relative[..., 0] * (2 * window - 1) + relative[..., 1]).flatten()
        )

    def forward(self, x):
        n = self.window**2
        bias = self.relative_position_bias_table[self.relative_position_index].view(n, n, -1).permute(2, 0, 1)
        return shifted_window_attention(
            x,
            self.qkv.weight,
            self.proj.weight,
            bias.unsqueeze(0),
            self.window,
            self.heads,
            self.shift,
            self.qkv.bias,
            self.proj.bias,
        )


class SwinBlock(nn.Module):
    def __init__(self, dim, heads, window, shift):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), ShiftedWindowAttention(dim, window, shift, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):  # [B, H, W, C]
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """torchvision's: the four 2x2 neighbours side by side (strided slices, concat on the last dim)."""

    def __init__(self, dim):
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):  # [B, H, W, C] -> [B, H / 2, W / 2, 2 C]
        x = F.pad(x, (0, 0, 0, x.shape[-2] % 2, 0, x.shape[-3] % 2))
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], -1)
        return self.reduction(self.norm(x))


class Swin(nn.Module):
    """torchvision's swin_t in small: three stages of one block, window 2, patch merging between."""

    def __init__(self, dim=16, heads=(1, 2, 4), window=2):
        super().__init__()
        self.stem, self.stem_norm = nn.Conv2d(1, dim, 2, 2), nn.LayerNorm(dim)  # [B, 4, 4, dim]
        stages = []
        for i, h in enumerate(heads):
            stages.append(SwinBlock(dim * 2**i, h, window, window // 2 if i == 0 else 0))
            if i < len(heads) - 1:
                stages.append(PatchMerging(dim * 2**i))
        self.blocks = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dim * 2 ** (len(heads) - 1))
        self.classifier = nn.Linear(dim * 2 ** (len(heads) - 1), NUM_CLASSES)

    def forward(self, x):
        x = self.blocks(self.stem_norm(self.stem(x).permute(0, 2, 3, 1)))
        return self.classifier(self.norm(x).mean((1, 2)))


def swin() -> nn.Module:
    return Swin()


MODELS = {
    "shufflenet": shufflenet,
    "shufflenet_stage": shufflenet_stage,
    "mixer": mixer,
    "rexnet": rexnet,
    "convnext": convnext,
    "ghostnet": ghostnet,
    "poolformer": poolformer,
    "swin": swin,
}
