"""Tiny decoder language models of every family the library prunes, built from Hugging Face configs
(random weights, no downloads), and token batches for them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

VOCAB = 48
#: small but with real grouping: 8 query heads sharing 2 key-value heads (4 per group), 2 layers
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def decoder(family: str, seed: int = 0) -> nn.Module:
    """A tiny ``<family>ForCausalLM`` in eval mode."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    if family == "llama":
        config = transformers.LlamaConfig(**COMMON, tie_word_embeddings=True)
        model = transformers.LlamaForCausalLM(config)
    elif family == "qwen2":
        config = transformers.Qwen2Config(**COMMON)
        model = transformers.Qwen2ForCausalLM(config)
    elif family == "qwen3":
        config = transformers.Qwen3Config(**COMMON, head_dim=8)
        model = transformers.Qwen3ForCausalLM(config)
    elif family == "mistral":
        config = transformers.MistralConfig(**COMMON, sliding_window=8)
        model = transformers.MistralForCausalLM(config)
    elif family == "gemma3":
        config = transformers.Gemma3TextConfig(
            **COMMON,
            head_dim=8,
            query_pre_attn_scalar=8,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
        )
        model = transformers.Gemma3ForCausalLM(config)
    else:
        raise ValueError(family)
    return model.eval()


DECODERS = ["llama", "qwen2", "qwen3", "mistral", "gemma3"]


def token_batches(n: int = 6, batch: int = 4, length: int = 24, seed: int = 0) -> list:
    """Token ids with structure a model can learn: each sequence counts up from a random start modulo
    the vocabulary, with every fourth token random."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        start = torch.randint(0, VOCAB, (batch, 1), generator=generator)
        ids = (start + torch.arange(length)) % VOCAB
        noise = torch.randint(0, VOCAB, (batch, length), generator=generator)
        ids = torch.where(torch.arange(length) % 4 == 3, noise, ids)
        out.append(ids)
    return out


def train_briefly(model: nn.Module, batches: list, steps: int = 60, lr: float = 3e-3) -> nn.Module:
    """A few AdamW steps of next-token prediction on ``batches`` (so scores see a trained model)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        ids = batches[step % len(batches)]
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def lm_loss(model: nn.Module, batches: list) -> float:
    with torch.no_grad():
        return sum(float(model(input_ids=ids, labels=ids).loss) for ids in batches) / len(batches)


MOE = ["mixtral", "qwen2_moe", "qwen3_moe"]


def moe_decoder(family: str, seed: int = 0) -> nn.Module:
    """A tiny mixture-of-experts ``<family>ForCausalLM`` (6 experts, 2 per token) in eval mode."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    common = dict(COMMON, intermediate_size=32)
    if family == "mixtral":
        config = transformers.MixtralConfig(**common, num_local_experts=6, num_experts_per_tok=2)
        return transformers.MixtralForCausalLM(config).eval()
    if family == "qwen2_moe":
        config = transformers.Qwen2MoeConfig(
            **common,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=32,
            num_experts=6,
            num_experts_per_tok=2,
        )
        return transformers.Qwen2MoeForCausalLM(config).eval()
    if family == "qwen3_moe":
        config = transformers.Qwen3MoeConfig(
            **common, head_dim=8, moe_intermediate_size=16, num_experts=6, num_experts_per_tok=2
        )
        return transformers.Qwen3MoeForCausalLM(config).eval()
    raise ValueError(family)
