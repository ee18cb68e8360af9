"""Small transformers for the tests, written here as timm / PyTorch / Hugging Face write them
(random weights, no downloads): a DeiT-style ViT with a fused qkv attention, an
``nn.TransformerEncoder`` classifier, tiny Hugging Face configs; and their calibration loaders."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_fair.units.attention import head_count
from lightning_fair.units.mha import HeadPrunedMultiheadAttention


class Attention(nn.Module):
    """timm's ``Attention`` (timm/layers/attention.py), without the optional q/k norms."""

    def __init__(self, dim: int, num_heads: int = 4, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_dim = self.num_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, self.attn_dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.proj = nn.Linear(self.attn_dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = q * self.scale
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        x = self.attn_drop(attn) @ v
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(x)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 2.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """DeiT/ViT-style: conv patch embedding, cls token, learned position embedding, pre-norm blocks,
    final LayerNorm, linear head on the cls token."""

    def __init__(
        self,
        image: int = 8,
        patch: int = 2,
        channels: int = 1,
        dim: int = 32,
        depth: int = 2,
        num_heads: int = 4,
        num_classes: int = 4,
    ):
        super().__init__()
        self.patch_embed = nn.Conv2d(channels, dim, patch, stride=patch)
        tokens = (image // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class EncoderClassifier(nn.Module):
    """Token embedding, ``nn.TransformerEncoder`` (batch_first), mean pooling, linear head."""

    def __init__(
        self, vocab: int = 20, dim: int = 32, depth: int = 2, num_heads: int = 4, num_classes: int = 4, length: int = 12
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens):
        x = self.encoder(self.embed(tokens) + self.pos)
        return self.head(x.mean(1))


def image_batches(num_classes: int = 4, batches: int = 2, size: int = 16, image: int = 8, seed: int = 0):
    """Images whose class shifts a few pixels: a learnable, separable task."""
    generator = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(batches):
        y = torch.arange(size) % num_classes
        x = torch.randn(size, 1, image, image, generator=generator) * 0.5
        x[torch.arange(size), 0, y, y] += 3.0
        data.append((x, y))
    return data


def token_batches(
    num_classes: int = 4,
    batches: int = 2,
    size: int = 16,
    length: int = 12,
    vocab: int = 20,
    seed: int = 0,
    hf: bool = False,
):
    """Token sequences whose class is the most frequent of a few marker tokens; ``hf``: dicts with
    input_ids / attention_mask / labels, as a Hugging Face tokenizer and collator give them."""
    generator = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(batches):
        y = torch.arange(size) % num_classes
        ids = torch.randint(num_classes + 2, vocab, (size, length), generator=generator)
        ids[:, 1:5] = (y + 1)[:, None]
        if hf:
            data.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": y})
        else:
            data.append((ids, y))
    return data


def train(model: nn.Module, batches, steps: int = 30, lr: float = 3e-3, unpack=None) -> nn.Module:
    """A few Adam steps, so the scores see a model that separates the classes a little."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        x, y = unpack(batches[step % len(batches)]) if unpack else batches[step % len(batches)]
        out = model(x)
        logits = out if isinstance(out, torch.Tensor) else out.logits
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


class WindowAttention(nn.Module):
    """Swin's windowed attention (timm swin_transformer.py): fused qkv over the tokens of one window,
    a learned relative position bias per head (its own parameter, ``[(2w - 1)^2, heads]``)."""

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, num_heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("relative_position_index", relative[..., 0] * (2 * window - 1) + relative[..., 1])
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # [B * windows, N, C]
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.flatten()].reshape(N, N, -1)
        attn = ((q * self.scale) @ k.transpose(-2, -1) + bias.permute(2, 0, 1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, -1))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.window = window
        self.norm1, self.attn = nn.LayerNorm(dim), WindowAttention(dim, window, num_heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def forward(self, x):  # [B, H, W, C]
        B, H, W, C = x.shape
        w = self.window
        windows = self.norm1(x).reshape(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)
        out = self.attn(windows).reshape(B, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
        x = x + out
        return x + self.mlp(self.norm2(x))


class TinySwin(nn.Module):
    def __init__(self, dim: int = 32, num_heads: int = 4, num_classes: int = 4):
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, 2, stride=2)
        self.blocks = nn.Sequential(SwinBlock(dim, 2, num_heads), SwinBlock(dim, 2, num_heads))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.blocks(self.patch_embed(x).permute(0, 2, 3, 1))
        return self.head(self.norm(x).mean((1, 2)))


# ------------------------------------------------------------------ the models the tests prune
FAST = dict(samples_per_class=4, num_projections=8)
BUDGETS = [dict(tolerance=0.3), dict(target_macs=0.5)]


def hf_model(name: str):
    transformers = pytest.importorskip("transformers")
    if name == "bert":
        config = transformers.BertConfig(
            vocab_size=20,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=16,
            num_labels=4,
        )
        return transformers.BertForSequenceClassification(config)
    if name == "distilbert":
        config = transformers.DistilBertConfig(
            vocab_size=20, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=16, num_labels=4
        )
        return transformers.DistilBertForSequenceClassification(config)
    config = transformers.ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=4,
    )
    return transformers.ViTForImageClassification(config)


def hf_unpack(batch):
    return batch["input_ids"], batch["labels"]


#: name -> (builder, calibration batches, unpack for training)
MODELS = {
    "vit_fused_qkv": (TinyViT, image_batches, None),
    "nn_transformer_encoder": (EncoderClassifier, token_batches, None),
    "hf_bert": (lambda: hf_model("bert"), lambda: token_batches(hf=True), hf_unpack),
    "hf_distilbert": (lambda: hf_model("distilbert"), lambda: token_batches(hf=True), hf_unpack),
    "hf_vit": (lambda: hf_model("vit"), image_batches, None),
}
TRAINED = {}


def trained(name: str) -> nn.Module:
    """The model trained a few steps (once per session), a fresh copy each call."""
    if name not in TRAINED:
        build, batches, unpack = MODELS[name]
        torch.manual_seed(0)
        TRAINED[name] = train(build(), batches(), unpack=unpack)
    return copy.deepcopy(TRAINED[name])


def logits(model, x):
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def inputs_of(name: str):
    batch = MODELS[name][1]()[0]
    return (batch["input_ids"] if isinstance(batch, dict) else batch[0])[:3]


def check_heads(original: dict, model: nn.Module, kept: dict) -> dict:
    """Every attention module's projections fit its head-count attributes, and the kept q/k/v
    channels are whole heads. Returns {attention: heads left}."""
    modules = dict(model.named_modules())
    left = {}
    for name, units in original.items():
        module = modules[name]
        heads, dim = head_count(module), units.head_dim
        assert 1 <= heads <= units.num_heads
        inner = heads * dim
        assert units.output.in_features == inner
        if units.kind == "mha":
            assert module.in_proj_weight.shape[0] == 3 * inner and module.in_proj_bias.shape[0] == 3 * inner
            assert isinstance(module, HeadPrunedMultiheadAttention) or heads == units.num_heads
        elif units.kind == "fused":
            assert units.inputs[0].out_features == 3 * inner and module.attn_dim == inner
        else:
            assert all(layer.out_features == inner for layer in units.inputs)
            if hasattr(module, "all_head_size"):
                assert module.all_head_size == inner
        first = units.input_names[0] if units.input_names else name
        if first in kept and heads < units.num_heads:  # the kept rows are whole heads of the original
            rows = kept[first]["out"][:inner]
            assert torch.equal(rows.reshape(heads, dim) % dim, torch.arange(dim).expand(heads, dim))
        left[name] = heads
    return left


def embedding_widths(model: nn.Module) -> list:
    return [tuple(m.normalized_shape) for m in model.modules() if isinstance(m, nn.LayerNorm)]
