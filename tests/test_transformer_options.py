"""Transformer pruning options and edge cases (issue 14): sequence-first layers, every ranking and
allocation on heads, memory estimate and split passes, padded Hugging Face batches, attention kept
whole (Swin-style per-head bias, one head left), and ``prune_embedding``."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from transformer_helpers import (
    FAST,
    MODELS,
    check_heads,
    embedding_widths,
    hf_model,
    image_batches,
    inputs_of,
    logits,
    token_batches,
    train,
    trained,
)

from lightning_fair import load_pruned, prune, save_pruned
from lightning_fair.units.attention import find_attention, head_count


class SequenceFirst(nn.Module):
    """``nn.TransformerEncoderLayer(batch_first=False)``: its Linear outputs are [T, B, C]."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 4)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens).transpose(0, 1)).mean(0))


def test_sequence_first_layers_are_skipped_and_heads_still_prune():
    """A layer whose output is not batch-first is not scored (warning) instead of indexing tokens as
    samples (it raised IndexError); the heads, seen batch-first at the output projection, prune."""
    torch.manual_seed(0)
    model = train(SequenceFirst(), token_batches())
    x = token_batches()[0][0][:3]
    with pytest.warns(UserWarning, match="not the batch"):
        # the heads are the only units: with one head left per layer 0.625 of the MACs stay
        result = prune(model, token_batches(), **FAST, target_macs=0.75)
    assert result.scores.layers == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    assert result.report.macs_ratio <= 0.75
    buffer = io.BytesIO()
    save_pruned(result.model, buffer)
    buffer.seek(0)
    fresh = load_pruned(SequenceFirst(), buffer).eval()
    assert torch.allclose(fresh(x), result.model.eval()(x), atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        dict(criterion="screening", tolerance=0.3),
        dict(ranking="l1", tolerance=0.3),
        dict(ranking="random", target_macs=0.6),
        dict(allocation="uniform", ratio=0.5),
        dict(preset="paper", target_macs=0.6),
        dict(group_policy="joint", tolerance=0.3),
    ],
    ids=["screening", "l1", "random", "uniform", "paper", "joint"],
)
def test_heads_follow_every_ranking_and_allocation(options):
    model = trained("vit_fused_qkv")
    attention = find_attention(model)
    result = prune(model, image_batches(), **FAST, **options)
    left = check_heads(attention, result.model, result.kept)
    assert result.report.macs_ratio < 1.0 and sum(left.values()) < 8, left
    if "ratio" in options:
        assert left == {name: 2 for name in attention}  # the same fraction of every layer: 2 of 4 heads


def test_memory_estimate_and_split_passes_know_heads():
    """estimate_memory lists the heads as the collector does, and scores collected in several passes
    under a memory budget equal those of one pass."""
    from lightning_fair import compute_scores, estimate_memory
    from lightning_fair.collect.collector import StatisticsCollector

    model = trained("vit_fused_qkv")
    batches = image_batches()
    estimate = estimate_memory(model, batches[0][0][:1], num_classes=4, **FAST)
    collector = StatisticsCollector(model, **FAST).run(batches)
    assert estimate.layers == collector.estimate.layers and estimate.layers["blocks.0.attn"][0] == 4
    whole = compute_scores(model, batches, **FAST)
    split = compute_scores(model, batches, **FAST, memory_budget=estimate.peak_bytes() - estimate.samples_bytes // 2)
    assert split.config["passes"] > 1
    assert all(torch.equal(whole.utilization[n], split.utilization[n]) for n in whole.layers)


class WithMask(nn.Module):
    """Feeds a Hugging Face model ``[B, 2, T]``: token ids and attention mask stacked (the recipe in
    docs/method.md for padded batches: the pipeline passes one tensor to the model)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, packed):
        return self.model(input_ids=packed[:, 0], attention_mask=packed[:, 1]).logits


def stacked(batch):
    return torch.stack([batch["input_ids"], batch["attention_mask"]], 1), batch["labels"]


def test_hf_padded_batches_through_a_mask_wrapper():
    model = WithMask(trained("hf_bert"))
    batches = token_batches(hf=True)
    for batch in batches:
        batch["attention_mask"][::2, 8:] = 0  # half the sequences padded
    x = stacked(batches[0])[0]
    result = prune(model, batches, unpack=stacked, **FAST, target_macs=0.5)
    assert result.report.macs_ratio <= 0.5 and result.model(x).shape == (16, 4)
    buffer = io.BytesIO()
    save_pruned(result.model, buffer)
    buffer.seek(0)
    fresh = load_pruned(WithMask(hf_model("bert")), buffer).eval()
    assert torch.allclose(fresh(x), result.model.eval()(x), atol=1e-5)


def test_attention_with_per_head_parameters_is_kept_whole():
    """Swin-style windowed attention holds a per-head relative position bias: its heads are not units
    (warning) and its projections are not cut either; the MLP neurons still prune and reload."""
    from transformer_helpers import TinySwin

    torch.manual_seed(0)
    model = train(TinySwin(), image_batches())
    attention = find_attention(model)
    assert all("own parameters" in units.blocked for units in attention.values()) and len(attention) == 2
    widths = {name: (units.inputs[0].out_features, units.output.in_features) for name, units in attention.items()}
    with pytest.warns(UserWarning, match="heads of 'blocks.0.attn' are not pruned"):
        result = prune(model, image_batches(), **FAST, tolerance=0.3)
    assert {
        name: (units.inputs[0].out_features, units.output.in_features)
        for name, units in find_attention(result.model).items()
    } == widths
    assert not any(name.endswith(("qkv", "proj", "attn")) for name in result.scores.layers)
    assert any(note.startswith("blocks.0.attn: heads kept (its own parameters") for note in result.report.notes)
    assert result.report.macs_after < result.report.macs_before
    x = image_batches()[0][0][:3]
    buffer = io.BytesIO()
    save_pruned(result.model, buffer)
    buffer.seek(0)
    fresh = load_pruned(TinySwin(), buffer).eval()
    assert torch.allclose(fresh(x), result.model.eval()(x), atol=1e-5)


def test_one_head_left_is_kept_on_a_second_prune():
    """A module pruned down to one head keeps it: its q/k/v do not become channel units (which would
    cut the last head's dimensions and break the head size) on the next prune."""
    model = trained("hf_bert")
    attention = find_attention(model)
    first = prune(model, token_batches(hf=True), **FAST, allocation="uniform", ratio=0.75)
    assert [head_count(m) for n, m in first.model.named_modules() if n in attention] == [1, 1]
    with pytest.warns(UserWarning, match="one head left"):
        second = prune(first.model, token_batches(hf=True), **FAST, tolerance=0.3)
    check_heads(attention, second.model, {})
    x = inputs_of("hf_bert")
    assert second.model(x).logits.shape == (3, 4)


EMBEDDING_CASES = [
    ("vit_fused_qkv", dict(tolerance=0.3)),
    ("hf_bert", dict(tolerance=0.3)),
    ("hf_distilbert", dict(tolerance=0.3)),
    ("hf_vit", dict(tolerance=0.3)),
    ("hf_bert", dict(target_macs=0.5)),
    ("hf_distilbert", dict(target_macs=0.5)),
    ("vit_fused_qkv", dict(target_macs=0.5)),
    ("hf_vit", dict(target_macs=0.5)),
]


@pytest.mark.parametrize("name,budget", EMBEDDING_CASES)
def test_prune_embedding_prunes_the_residual_stream_too(name, budget):
    model = trained(name)
    x = inputs_of(name)
    widths = embedding_widths(model)
    result = prune(model, MODELS[name][1](), **FAST, prune_embedding=True, **budget)
    pruned = result.model.eval()
    now = embedding_widths(pruned)
    assert len(set(now)) == 1 and now[0][0] < widths[0][0]  # one residual width, narrower
    assert logits(pruned, x).shape == (3, 4)
    buffer = io.BytesIO()
    save_pruned(pruned, buffer)
    buffer.seek(0)
    fresh = load_pruned(MODELS[name][0](), buffer).eval()
    assert torch.allclose(logits(fresh, x), logits(pruned, x), atol=1e-5)


def test_prune_embedding_keeps_multihead_attention_width():
    model = trained("nn_transformer_encoder")
    result = prune(model, token_batches(), **FAST, prune_embedding=True, tolerance=0.3)
    assert embedding_widths(result.model) == embedding_widths(trained("nn_transformer_encoder"))
    assert any("(nn.MultiheadAttention)" in note for note in result.report.notes)
