"""Transformers prune with attention heads and MLP neurons as units (issue 14): a DeiT-style ViT with
a fused qkv, an ``nn.TransformerEncoder`` classifier, and Hugging Face BERT, DistilBERT and ViT from
tiny configs (random weights, no downloads). For each, under a tolerance and under a MACs target:
forward works with the output shape unchanged, MACs drop, heads go whole with the head-count
attributes consistent, the embedding dimension is untouched, and the pruned model reloads through
its pruning history. Options and edge cases: tests/test_transformer_options.py."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn
from transformer_helpers import (
    BUDGETS,
    FAST,
    MODELS,
    EncoderClassifier,
    check_heads,
    embedding_widths,
    image_batches,
    inputs_of,
    logits,
    token_batches,
    trained,
)

from lightning_fair import load_pruned, prune, save_pruned
from lightning_fair.units.attention import find_attention, head_count
from lightning_fair.units.mha import HeadPrunedMultiheadAttention


@pytest.mark.parametrize("budget", BUDGETS, ids=["tolerance", "target_macs"])
@pytest.mark.parametrize("name", list(MODELS))
def test_transformer_prunes_heads_and_neurons(name, budget):
    model = trained(name)
    x = inputs_of(name)
    attention = find_attention(model)
    assert len(attention) == 2 and all(units.num_heads == 4 for units in attention.values())
    widths, shape = embedding_widths(model), logits(model, x).shape
    result = prune(model, MODELS[name][1](), **FAST, **budget)
    pruned = result.model.eval()
    assert logits(pruned, x).shape == shape
    assert result.report.macs_after < result.report.macs_before
    if "target_macs" in budget:
        assert result.report.macs_ratio <= 0.5 + 1e-9
    left = check_heads(attention, pruned, result.kept)
    assert sum(left.values()) < 8, left  # some heads went
    assert embedding_widths(pruned) == widths  # the residual stream is not pruned
    rows = {row.name: row for row in result.report.layers}
    assert all(rows[n].before == 4 and rows[n].after == left[n] for n in attention)
    mlp = [n for n in result.scores.layers if n not in attention and rows[n].after < rows[n].before]
    assert mlp, "no MLP hidden neuron was removed"

    buffer = io.BytesIO()
    save_pruned(pruned, buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    fresh = load_pruned(MODELS[name][0](), buffer).eval()
    assert torch.allclose(logits(fresh, x), logits(pruned, x), atol=1e-5)
    assert {n: head_count(m) for n, m in fresh.named_modules() if n in attention} == left


def test_head_scores_are_per_head_points_over_tokens():
    """U of a head compares its whole T x head_dim output across classes; R sums grad * output over it."""
    from lightning_fair import compute_scores

    model = trained("vit_fused_qkv")
    scores = compute_scores(model, image_batches(), **FAST)
    assert scores.utilization["blocks.0.attn"].shape == (4,) and scores.reconstruction["blocks.0.attn"].shape == (4,)
    assert "blocks.0.attn.qkv" not in scores.layers and "blocks.0.attn.proj" not in scores.layers
    assert scores.utilization["blocks.0.mlp.fc1"].shape == (64,)
    # R of the heads equals |sum grad * z| over the proj input's head slices, computed here directly
    x, y = torch.cat([b[0] for b in image_batches()]), torch.cat([b[1] for b in image_batches()])
    seen = {}
    handle = model.blocks[0].attn.proj.register_forward_pre_hook(lambda m, a: seen.setdefault("z", a[0]))
    try:
        total = torch.zeros(4, dtype=torch.float64)
        for xb, yb in image_batches():
            seen.clear()
            loss = nn.functional.cross_entropy(model(xb), yb)
            (grad,) = torch.autograd.grad(loss, seen["z"])
            total += (grad * seen["z"]).reshape(*grad.shape[:2], 4, 8).sum((0, 1, 3)).double().detach()
    finally:
        handle.remove()
    assert x.shape[0] == y.shape[0]
    assert torch.allclose(scores.reconstruction["blocks.0.attn"].double(), total.abs(), rtol=1e-4, atol=1e-8)


def test_head_and_neuron_utilization_match_brute_force():
    """U of a head: its [T, head_dim] output per sample, flattened, projected on the seeded directions
    of a T * head_dim map, max over class pairs of the mean 1-D W1; an MLP neuron: its [T] output."""
    import itertools
    import zlib

    from scipy.stats import wasserstein_distance

    from lightning_fair import compute_scores
    from lightning_fair.collect import projections

    model = trained("vit_fused_qkv")
    n, num_proj, seed = 4, 5, 2
    batches = image_batches()
    scores = compute_scores(model, batches, samples_per_class=n, num_projections=num_proj, seed=seed, observe="output")
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    picks = {k: (y == k).nonzero().flatten()[:n].tolist() for k in range(4)}
    seen = {}
    block = model.blocks[0]
    hooks = [
        block.attn.proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("heads", a[0].detach())),
        block.mlp.fc1.register_forward_hook(lambda m, a, out: seen.__setitem__("fc1", out.detach())),
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    heads = seen["heads"].reshape(x.shape[0], -1, 4, 8).permute(0, 2, 1, 3).flatten(2).double()  # [N, H, T * d]
    neurons = seen["fc1"].transpose(1, 2).double()  # [N, C, T]
    for name, points in (("blocks.0.attn", heads), ("blocks.0.mlp.fc1", neurons)):
        theta = projections.random_projections(
            points.shape[2], num_proj, seed=zlib.crc32(name.encode()) ^ seed
        ).double()
        projected = points @ theta  # [N, units, P]
        expected = torch.zeros(points.shape[1], dtype=torch.float64)
        for unit in range(points.shape[1]):
            for k1, k2 in itertools.combinations(range(4), 2):
                w1 = [
                    wasserstein_distance(projected[picks[k1], unit, p], projected[picks[k2], unit, p])
                    for p in range(num_proj)
                ]
                expected[unit] = max(expected[unit], sum(w1) / num_proj)
        assert torch.allclose(scores.utilization[name].double(), expected, rtol=1e-4, atol=1e-6), name


def test_pruned_mha_matches_plain_and_fails_atomically(monkeypatch):
    """The head-pruned subclass computes what nn.MultiheadAttention does; a failing prune puts the class back."""
    torch.manual_seed(0)
    plain = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    swapped = copy.deepcopy(plain)
    swapped.__class__ = HeadPrunedMultiheadAttention
    q = torch.randn(2, 5, 16)
    mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    a, b = plain(q, q, q, key_padding_mask=mask), swapped(q, q, q, key_padding_mask=mask)
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)

    model = trained("nn_transformer_encoder")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    import lightning_fair.pipeline.oneshot as oneshot

    def broken(*args, **kwargs):
        raise RuntimeError("repair failed")

    monkeypatch.setattr(oneshot, "repair", broken)
    with pytest.raises(RuntimeError, match="repair failed"):
        prune(model, token_batches(), **FAST, tolerance=0.3)
    assert all(type(m) is nn.MultiheadAttention for m in model.modules() if isinstance(m, nn.MultiheadAttention))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_hf_save_pretrained_needs_the_history():
    """Hugging Face configs hold one head count and one intermediate size for all layers, so a pruned
    model's ``save_pretrained`` directory does not ``from_pretrained`` (sizes mismatch); the config
    plus ``save_pruned`` / ``load_pruned`` (history replay on a model built from the config) does."""
    transformers = pytest.importorskip("transformers")
    model = trained("hf_bert")
    result = prune(model, token_batches(hf=True), **FAST, target_macs=0.5)
    x = inputs_of("hf_bert")
    with pytest.raises(Exception, match="(?i)size"):
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            result.model.save_pretrained(folder)
            transformers.BertForSequenceClassification.from_pretrained(folder)
    buffer = io.BytesIO()
    save_pruned(result.model, buffer)
    buffer.seek(0)
    fresh = load_pruned(transformers.BertForSequenceClassification(result.model.config), buffer).eval()
    assert torch.allclose(fresh(x).logits, result.model(x).logits, atol=1e-5)


def test_prune_twice_keeps_heads_consistent():
    """A second prune of a pruned transformer (new scores, new graph) removes more heads and replays."""
    model = trained("nn_transformer_encoder")
    first = prune(model, token_batches(), **FAST, tolerance=0.3)
    second = prune(first.model, token_batches(), **FAST, tolerance=0.3)
    x = inputs_of("nn_transformer_encoder")
    assert second.report.macs_after <= first.report.macs_after
    buffer = io.BytesIO()
    save_pruned(second.model, buffer)
    buffer.seek(0)
    fresh = load_pruned(EncoderClassifier(), buffer).eval()
    assert torch.allclose(fresh(x), second.model.eval()(x), atol=1e-5)
