"""Decoder language models (issue 22): grouped-query attention heads, gated-MLP neurons and routed
experts as units, scored for next-token prediction, for Llama, Qwen2, Qwen3, Mistral, Gemma3 and the
mixture-of-experts Mixtral, Qwen2-MoE and Qwen3-MoE from tiny configs (random init, a few training
steps on patterned tokens). Under a tolerance and under a MACs target:
the grouping stays valid (every key-value group keeps the same number of query heads), the hidden
size is untouched, the pruned model generates, and its pruning history reloads."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from decoder_helpers import DECODERS, MOE, VOCAB, decoder, lm_loss, moe_decoder, token_batches, train_briefly

import lightning_fair
from lightning_fair import PruneConfig, compute_scores, load_pruned, prune, save_pruned
from lightning_fair.collect.tokens import embedding_clusters
from lightning_fair.units.experts import find_experts
from lightning_fair.units.gated_mlp import find_gated_mlp
from lightning_fair.units.grouped_attention import GroupedQueryUnits, find_grouped_attention, layouts

FAST = dict(samples_per_class=4, num_projections=8, max_classes=16)
BUDGETS = [dict(tolerance=0.3), dict(target_macs=0.5)]


def trained(family: str):
    model = decoder(family)
    return train_briefly(model, token_batches(4, seed=1), steps=30)


def check_structure(model) -> dict:
    """Every attention module's widths fit whole heads in equal key-value groups; returns
    ``{attention: (query heads, key-value heads)}``."""
    left = {}
    for name, module in model.named_modules():
        if not isinstance(getattr(module, "num_key_value_groups", None), int):
            continue
        dim = module.head_dim
        heads, groups = module.q_proj.out_features // dim, module.k_proj.out_features // dim
        assert module.q_proj.out_features == heads * dim == module.o_proj.in_features
        assert module.v_proj.out_features == groups * dim and heads % groups == 0
        assert module.num_key_value_groups == heads // groups
        left[name] = (heads, groups)
    for units in find_gated_mlp(model).values():
        assert units.inputs[0].out_features == units.inputs[1].out_features == units.output.in_features
    return left


def hidden_widths(model) -> list:
    return sorted({m.o_proj.out_features for m in model.modules() if hasattr(m, "o_proj")})


@pytest.mark.parametrize("budget", BUDGETS, ids=["tolerance", "target_macs"])
@pytest.mark.parametrize("family", DECODERS)
def test_decoder_prunes_heads_and_neurons(family, budget):
    model = trained(family)
    calibration = token_batches(4, seed=2)
    prompt = calibration[0][:1, :6]
    before = check_structure(model)
    widths = hidden_widths(model)
    result = prune(copy.deepcopy(model), calibration, **FAST, **budget)
    pruned = result.model.eval()
    left = check_structure(pruned)
    assert hidden_widths(pruned) == widths  # the residual stream is not cut
    assert result.report.macs_after < result.report.macs_before
    if "target_macs" in budget:
        assert result.report.macs_ratio <= 0.5 + 1e-9
    # the report says what the budgets count: MACs per sequence, params with the embeddings apart
    report = result.report
    embeddings = sum(
        m.weight.numel() for m in {id(m): m for m in model.modules() if isinstance(m, torch.nn.Embedding)}.values()
    )
    assert report.macs_per == "sequence of 24 tokens" and "per sequence of 24 tokens" in str(report)
    assert report.embedding_params_before == report.embedding_params_after == embeddings
    assert "of which embeddings" in str(report)
    assert any(left[n] != before[n] for n in before) or any(u.num_units < 48 for u in find_gated_mlp(pruned).values())
    assert any(u.num_units < 48 for u in find_gated_mlp(pruned).values()), "no MLP neuron was removed"
    out = pruned(prompt).logits
    assert out.shape == (1, 6, 48) and torch.isfinite(out).all()
    generated = pruned.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 10)

    buffer = io.BytesIO()
    save_pruned(pruned, buffer)
    buffer.seek(0)
    fresh = load_pruned(decoder(family, seed=5), buffer).eval()
    assert check_structure(fresh) == left
    assert torch.allclose(fresh(prompt).logits, out, atol=1e-5)


def test_layouts_keep_the_grouping_and_choose_is_nearest():
    model = decoder("llama")
    units = find_grouped_attention(model)["model.layers.0.self_attn"]
    assert isinstance(units, GroupedQueryUnits) and (units.num_units, units.num_key_value_heads) == (8, 2)
    assert [r for r, _, _ in layouts(8, 2)] == [0, 2, 4, 4, 5, 6, 6, 7]
    order = torch.tensor([5, 6, 7, 4, 0, 1, 2, 3])  # group 1 (heads 4-7) first to remove
    assert units.choose(order, 4).tolist() == [4, 5, 6, 7]  # the whole group, not two from each
    assert units.choose(order, 2).tolist() == [0, 5]  # one head per group: the first of each in order
    assert units.choose(order, 3).tolist() == [0, 5]  # 3 is between 2 and 4: the smaller
    assert units.choose(order, 0).numel() == 0
    with pytest.raises(ValueError, match="same number of query heads"):
        units.remove([0, 1, 4])


def test_removing_a_whole_group_takes_its_key_value_head():
    model = decoder("llama")
    x = token_batches(1)[0]
    units = find_grouped_attention(model)["model.layers.0.self_attn"]
    kept = units.remove([0, 1, 2, 3])
    attention = model.model.layers[0].self_attn
    assert attention.k_proj.out_features == attention.v_proj.out_features == 4  # one group of head_dim 4
    assert attention.num_key_value_groups == 4 and kept["model.layers.0.self_attn.k_proj"]["out"].tolist() == [
        4,
        5,
        6,
        7,
    ]
    assert model(x).logits.shape == (4, 24, 48)


def test_pruned_heads_match_zeroed_heads():
    """Removing heads (trimming each group) gives the same logits as zeroing their o_proj columns."""
    model = decoder("qwen2")
    x = token_batches(1)[0]
    zeroed = copy.deepcopy(model)
    o = zeroed.model.layers[1].self_attn.o_proj
    with torch.no_grad():
        for head in (1, 6):
            o.weight[:, head * 4 : head * 4 + 4] = 0
    find_grouped_attention(model)["model.layers.1.self_attn"].remove([1, 6])
    assert torch.allclose(model(x).logits, zeroed(x).logits, atol=1e-5)


@pytest.mark.parametrize("kind,pairs", [("frequent", "max"), ("clusters", "max"), ("clusters", "mean")])
def test_next_token_utilization_matches_brute_force(kind, pairs):
    """U of a gated-MLP neuron: the largest (``pairs="mean"``: the mean) W1 distance between its values
    at the positions of two compared classes, computed by hand. A class is a next token among the most
    frequent of the first batch (``"frequent"``) or the cluster of the next token's output-embedding
    row (``"clusters"``), clusters ordered by their frequency in the first batch."""
    model = trained("llama")
    batches = token_batches(3, seed=4)
    scores = compute_scores(model, batches, samples_per_class=6, max_classes=5, token_classes=kind, pairs=pairs)
    assert scores.config["token_classes"] == kind and scores.config["pairs"] == pairs
    captured = []
    handle = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    with torch.no_grad():
        for ids in batches:
            model(ids)
    handle.remove()
    values = torch.cat([h[:, :-1].reshape(-1, h.shape[-1]) for h in captured])  # position t predicts t + 1
    following = torch.cat([ids[:, 1:].reshape(-1) for ids in batches])
    first = batches[0][:, 1:].reshape(-1)
    if kind == "clusters":
        cluster = embedding_clusters(model.lm_head.weight, 5, seed=0)
        following, first = cluster[following], cluster[first]
    counts = torch.bincount(first)
    classes = torch.sort(-counts, stable=True).indices[: min(5, int((counts > 0).sum()))]
    per_class = [values[following == c][:6].double() for c in classes]
    distances = []
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            a, b = per_class[i].sort(0).values, per_class[j].sort(0).values
            distances.append(torch.stack([_w1(a[:, u], b[:, u]) for u in range(values.shape[1])]))
    stacked = torch.stack(distances)
    expected = stacked.amax(0) if pairs == "max" else stacked.mean(0)
    got = scores.utilization["model.layers.1.mlp"].double()
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-5)


def test_embedding_clusters_group_tokens_with_close_output_rows():
    """Spherical k-means: rows pointing the same way share a cluster, whatever their length."""
    generator = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(4, 16, generator=generator), dim=1)
    truth = torch.arange(40) % 4
    weight = directions[truth] * torch.rand(40, 1, generator=generator).add(0.5)
    weight = weight + 0.01 * torch.randn(40, 16, generator=generator)
    labels = embedding_clusters(weight, 4, seed=1)
    pairs = truth[:, None] == truth[None, :]
    assert torch.equal(labels[:, None] == labels[None, :], pairs)


def test_token_clusters_need_an_output_embedding():
    class Plain(torch.nn.Module):  # a language model without get_output_embeddings
        def __init__(self):
            super().__init__()
            self.embed, self.hidden = torch.nn.Embedding(VOCAB, 16), torch.nn.Linear(16, 16)
            self.head = torch.nn.Linear(16, VOCAB)

        def forward(self, ids):
            return self.head(torch.relu(self.hidden(self.embed(ids))))

    with pytest.raises(ValueError, match="token_classes='frequent'"):
        compute_scores(Plain(), token_batches(2), samples_per_class=4, token_classes="clusters")
    assert compute_scores(Plain(), token_batches(2), samples_per_class=4).config["token_classes"] == "frequent"
    with pytest.raises(ValueError, match="max_classes"):
        PruneConfig(token_classes="clusters", max_classes=None)
    with pytest.raises(ValueError, match="token_classes must be one of"):
        PruneConfig(token_classes="tokens")
    with pytest.raises(ValueError, match=r"pairs must be one of \('max', 'mean'\)"):
        PruneConfig(pairs="median")


def _w1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """W1 distance between two empirical distributions (exact, any sizes)."""
    points = torch.cat([a, b]).sort().values
    cdf_a = torch.searchsorted(a.sort().values, points[:-1], right=True).double() / a.numel()
    cdf_b = torch.searchsorted(b.sort().values, points[:-1], right=True).double() / b.numel()
    return ((cdf_a - cdf_b).abs() * points.diff()).sum()


def test_pruning_keeps_a_trained_decoder_useful():
    """Removing a quarter of the MACs of a trained tiny Llama costs less loss than random removal."""
    model = train_briefly(decoder("llama"), token_batches(6, seed=1), steps=120)
    calibration, held_out = token_batches(4, seed=2), token_batches(4, seed=3)
    dense = lm_loss(model, held_out)
    fair = prune(copy.deepcopy(model), calibration, target_macs=0.75, **FAST)
    rand = prune(copy.deepcopy(model), calibration, target_macs=0.75, ranking="random", refit=False, **FAST)
    fair_loss, random_loss = lm_loss(fair.model, held_out), lm_loss(rand.model, held_out)
    assert dense < fair_loss < random_loss, (dense, fair_loss, random_loss)
    assert lightning_fair.evaluate(fair.model, held_out)["loss"] == pytest.approx(
        lm_loss(fair.model, held_out), rel=1e-4
    )


def check_experts(model) -> dict:
    """Every sparse block's router rows, expert tensors and expert counts agree; ``{block: experts}``."""
    left = {}
    for name, units in find_experts(model).items():
        count = units.router.weight.shape[0]
        assert units.output.gate_up_proj.shape[0] == units.output.down_proj.shape[0] == count
        assert units.output.num_experts == units.router.num_experts == count >= units.top_k
        left[name] = count
    return left


@pytest.mark.parametrize("budget", [dict(tolerance=0.3), dict(target_params=0.6)], ids=["tolerance", "target_params"])
@pytest.mark.parametrize("family", MOE)
def test_moe_decoder_prunes_experts(family, budget):
    model = train_briefly(moe_decoder(family), token_batches(4, seed=1), steps=20)
    calibration = token_batches(4, seed=2)
    prompt = calibration[0][:1, :6]
    before = check_experts(model)
    result = prune(copy.deepcopy(model), calibration, **FAST, **budget)
    pruned = result.model.eval()
    left, heads = check_experts(pruned), check_structure(pruned)
    assert sum(left.values()) < sum(before.values()), "no expert was removed"
    assert heads and hidden_widths(pruned) == hidden_widths(model)
    if "target_params" in budget:
        assert result.report.params_ratio <= 0.6 + 1e-9
    out = pruned(prompt).logits
    assert torch.isfinite(out).all()
    assert pruned.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (1, 9)
    buffer = io.BytesIO()
    save_pruned(pruned, buffer)
    buffer.seek(0)
    fresh = load_pruned(moe_decoder(family, seed=7), buffer).eval()
    assert check_experts(fresh) == left and check_structure(fresh) == heads
    assert torch.allclose(fresh(prompt).logits, out, atol=1e-5)


def test_expert_reconstruction_score_is_the_routing_weight_taylor_term():
    """R of an expert is |sum over tokens of dL/dw * w| for the routing weights w it gets, the loss
    being next-token cross-entropy (summed over batches), as computed here by hand."""
    model = moe_decoder("qwen3_moe")
    batches = token_batches(2, seed=4)
    scores = compute_scores(model, batches, samples_per_class=4, max_classes=8)
    block = model.model.layers[1].mlp
    expected = torch.zeros(6, dtype=torch.float64)
    for ids in batches:
        seen = {}

        def keep(module, args, seen=seen):
            seen["index"], seen["weights"] = args[1], args[2]
            args[2].retain_grad()

        handle = block.experts.register_forward_pre_hook(keep)
        loss = model(input_ids=ids, labels=ids).loss
        handle.remove()
        loss.backward()
        weights = seen["weights"]
        per_pair = (weights.grad * weights).double()
        expected += torch.zeros(6, dtype=torch.float64).index_add(0, seen["index"].flatten(), per_pair.flatten())
        model.zero_grad()
    got = scores.reconstruction["model.layers.1.mlp"].double()
    assert torch.allclose(got, expected.abs(), rtol=1e-3, atol=1e-7)
