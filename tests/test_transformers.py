"""Transformers prune with attention heads and MLP neurons as units (issue 14): a DeiT-style ViT with
a fused qkv, an ``nn.TransformerEncoder`` classifier, and Hugging Face BERT, DistilBERT and ViT from
tiny configs (random weights, no downloads). For each, under a tolerance and under a MACs target:
forward works with the output shape unchanged, MACs drop, heads go whole with the head-count
attributes consistent, the embedding dimension is untouched, and the pruned model reloads through
its pruning history."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from lightning_fair import load_pruned, prune, save_pruned
from lightning_fair.attention import find_attention, head_count
from lightning_fair.mha import HeadPrunedMultiheadAttention
from transformer_helpers import EncoderClassifier, TinyViT, image_batches, token_batches, train

FAST = dict(samples_per_class=4, num_projections=8)
BUDGETS = [dict(tolerance=0.3), dict(target_macs=0.5)]


def _hf(name: str):
    transformers = pytest.importorskip("transformers")
    if name == "bert":
        config = transformers.BertConfig(vocab_size=20, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=16, num_labels=4)
        return transformers.BertForSequenceClassification(config)
    if name == "distilbert":
        config = transformers.DistilBertConfig(vocab_size=20, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                               max_position_embeddings=16, num_labels=4)
        return transformers.DistilBertForSequenceClassification(config)
    config = transformers.ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64, num_labels=4)
    return transformers.ViTForImageClassification(config)


def _hf_unpack(batch):
    return batch["input_ids"], batch["labels"]


#: name -> (builder, calibration batches, unpack for training)
MODELS = {
    "vit_fused_qkv": (TinyViT, image_batches, None),
    "nn_transformer_encoder": (EncoderClassifier, token_batches, None),
    "hf_bert": (lambda: _hf("bert"), lambda: token_batches(hf=True), _hf_unpack),
    "hf_distilbert": (lambda: _hf("distilbert"), lambda: token_batches(hf=True), _hf_unpack),
    "hf_vit": (lambda: _hf("vit"), image_batches, None),
}
_TRAINED = {}


def trained(name: str) -> nn.Module:
    """The model trained a few steps (once per session), a fresh copy each call."""
    if name not in _TRAINED:
        build, batches, unpack = MODELS[name]
        torch.manual_seed(0)
        _TRAINED[name] = train(build(), batches(), unpack=unpack)
    return copy.deepcopy(_TRAINED[name])


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

    from lightning_fair import compute_scores, distances

    model = trained("vit_fused_qkv")
    n, num_proj, seed = 4, 5, 2
    batches = image_batches()
    scores = compute_scores(model, batches, samples_per_class=n, num_projections=num_proj, seed=seed, observe="output")
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    picks = {k: (y == k).nonzero().flatten()[:n].tolist() for k in range(4)}
    seen = {}
    block = model.blocks[0]
    hooks = [block.attn.proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("heads", a[0].detach())),
             block.mlp.fc1.register_forward_hook(lambda m, a, out: seen.__setitem__("fc1", out.detach()))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    heads = seen["heads"].reshape(x.shape[0], -1, 4, 8).permute(0, 2, 1, 3).flatten(2).double()  # [N, H, T * d]
    neurons = seen["fc1"].transpose(1, 2).double()  # [N, C, T]
    for name, points in (("blocks.0.attn", heads), ("blocks.0.mlp.fc1", neurons)):
        theta = distances.random_projections(points.shape[2], num_proj, seed=zlib.crc32(name.encode()) ^ seed).double()
        projected = points @ theta  # [N, units, P]
        expected = torch.zeros(points.shape[1], dtype=torch.float64)
        for unit in range(points.shape[1]):
            for k1, k2 in itertools.combinations(range(4), 2):
                w1 = [wasserstein_distance(projected[picks[k1], unit, p], projected[picks[k2], unit, p])
                      for p in range(num_proj)]
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
    import lightning_fair.oneshot as oneshot

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
        result = prune(model, token_batches(), **FAST, target_macs=0.5)
    assert result.scores.layers == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    assert result.report.macs_ratio <= 0.5
    buffer = io.BytesIO()
    save_pruned(result.model, buffer)
    buffer.seek(0)
    fresh = load_pruned(SequenceFirst(), buffer).eval()
    assert torch.allclose(fresh(x), result.model.eval()(x), atol=1e-5)


@pytest.mark.parametrize("options", [dict(criterion="screening", tolerance=0.3), dict(ranking="l1", tolerance=0.3),
                                     dict(ranking="random", target_macs=0.6), dict(allocation="uniform", ratio=0.5),
                                     dict(preset="paper", target_macs=0.6), dict(group_policy="joint", tolerance=0.3)],
                         ids=["screening", "l1", "random", "uniform", "paper", "joint"])
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
    from lightning_fair.statistics import StatisticsCollector

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
    fresh = load_pruned(WithMask(_hf("bert")), buffer).eval()
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
    assert {name: (units.inputs[0].out_features, units.output.in_features)
            for name, units in find_attention(result.model).items()} == widths
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


EMBEDDING_CASES = [("vit_fused_qkv", dict(tolerance=0.3)), ("hf_bert", dict(tolerance=0.3)),
                   ("hf_distilbert", dict(tolerance=0.3)), ("hf_vit", dict(tolerance=0.3)),
                   ("hf_bert", dict(target_macs=0.5)), ("hf_distilbert", dict(target_macs=0.5)),
                   pytest.param("vit_fused_qkv", dict(target_macs=0.5), marks=pytest.mark.xfail(
                       reason="issue 14 D1/D2: torch-pruning refuses a probe of the target search once cls/position "
                              "tokens are pruned ('refused to remove N channels from patch_embed'); fixed apart from "
                              "this change", strict=False))]


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
