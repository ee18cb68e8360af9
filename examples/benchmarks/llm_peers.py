"""Peer structured-pruning methods for decoder LLMs (llm.py), written from their papers' formulas,
removing exactly the units FAIR removes: query heads (in valid grouped-query layouts, through
:meth:`GroupedQueryUnits.choose` / ``remove``) and gated-MLP neurons (``GatedMLPUnits.remove``); the
residual width is never cut.

* ``magnitude``: a unit's L2 norm of its weights (neuron: its ``gate_proj`` and ``up_proj`` rows and its
  ``down_proj`` column; head: its ``q_proj`` rows and ``o_proj`` columns); uniform per layer.
* ``wanda_sp`` (Wanda structured, the baseline of An et al. 2024, FLAP): input channel ``j`` of
  ``o_proj`` / ``down_proj`` scores ``sum_i |W_ij| * ||X_j||_2`` (``X_j``: that channel's calibration
  inputs over every token); a head sums its ``head_dim`` channels; uniform per layer.
* ``flap`` (An et al. 2024, "Fluctuation-based Adaptive Structured Pruning for Large Language Models"):
  the weighted input-feature variance ``var(X_j) * ||W_:,j||^2`` per input channel of ``o_proj`` /
  ``down_proj``, standardised within each layer (per kind: the 576 attention channels, the 1536
  neurons), heads the mean of their channels; one threshold over heads and neurons of all layers
  jointly (the paper's AL-AM structure), searched to the parameter budget; the removed channels'
  calibration mean is folded into a new bias of ``o_proj`` / ``down_proj`` (bias compensation).
* ``taylor`` (Ma et al. 2023, LLM-Pruner, first-order element-wise, "element1"): a group's importance is
  ``sum |w * dL/dw|`` over its weights, gradients of the language-model loss accumulated over the
  calibration batches; uniform per layer over the pruned blocks (LLM-Pruner leaves the first and last
  blocks whole: here the first 3 and the last 2 of 30, the others pruned harder to the same budget).

Scores are "higher = keep". The allocation helpers return ``{layer: (heads to remove, neurons to
remove)}`` in the units' current numbering; :func:`apply` removes them.
"""

from __future__ import annotations

import math
import time
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from lightning_fair.units.gated_mlp import find_gated_mlp
from lightning_fair.units.grouped_attention import find_grouped_attention

Plan = Dict[int, Tuple[List[int], List[int]]]


def layer_units(model: nn.Module) -> Dict[int, tuple]:
    """``{block index: (GroupedQueryUnits, GatedMLPUnits)}``."""
    attention = {int(n.split(".")[2]): u for n, u in find_grouped_attention(model).items()}
    mlp = {int(n.split(".")[2]): u for n, u in find_gated_mlp(model).items()}
    return {i: (attention[i], mlp[i]) for i in sorted(attention)}


def head_cost(attention) -> int:
    """Parameters one query head owns: its ``q_proj`` rows and ``o_proj`` columns."""
    return attention.head_dim * (attention.inputs[0].in_features + attention.output.out_features)


def group_cost(attention) -> int:
    """Parameters of one key-value head (``k_proj`` and ``v_proj`` rows), freed with its last query head."""
    return 2 * attention.head_dim * attention.inputs[1].in_features


def neuron_cost(mlp) -> int:
    return mlp.inputs[0].in_features + mlp.inputs[1].in_features + mlp.output.out_features


def plan_cost(units: Dict[int, tuple], plan: Plan) -> int:
    """Parameters the plan removes (bias-free layers)."""
    total = 0
    for i, (heads, neurons) in plan.items():
        attention, mlp = units[i]
        size = attention.group_size
        groups = {h // size for h in heads}
        emptied = sum(1 for g in groups if sum(1 for h in heads if h // size == g) == size)
        total += len(heads) * head_cost(attention) + emptied * group_cost(attention) + len(neurons) * neuron_cost(mlp)
    return total


# ------------------------------------------------------------------------------ statistics
def input_statistics(model: nn.Module, batches: List[torch.Tensor]) -> Dict[str, Dict[str, torch.Tensor]]:
    """Per input channel of every ``o_proj`` / ``down_proj``: token count, sum and sum of squares of its
    calibration inputs (float64), from one forward pass of the unpruned model."""
    stats: Dict[str, Dict[str, torch.Tensor]] = {}
    handles = []

    def hook(name):
        def record(module, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            entry = stats.setdefault(name, {"n": torch.zeros((), dtype=torch.float64), "sum": 0.0, "sq": 0.0})
            entry["n"] += x.shape[0]
            entry["sum"] = entry["sum"] + x.sum(0)
            entry["sq"] = entry["sq"] + x.pow(2).sum(0)

        return record

    for name, module in model.named_modules():
        if name.endswith(("self_attn.o_proj", "mlp.down_proj")):
            handles.append(module.register_forward_pre_hook(hook(name)))
    try:
        with torch.no_grad():
            model.eval()
            for batch in batches:
                model(input_ids=batch)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def per_head(values: torch.Tensor, attention, reduce: str = "sum") -> torch.Tensor:
    grouped = values.reshape(attention.num_units, attention.head_dim)
    return grouped.sum(1) if reduce == "sum" else grouped.mean(1)


# ------------------------------------------------------------------------------ scores
def magnitude_scores(model: nn.Module, batches=None) -> Dict[int, tuple]:
    scores = {}
    for i, (attention, mlp) in layer_units(model).items():
        q = attention.inputs[0].weight.detach().double().reshape(attention.num_units, -1).pow(2).sum(1)
        o = attention.output.weight.detach().double().pow(2)
        o = o.reshape(o.shape[0], attention.num_units, attention.head_dim).sum((0, 2))
        gate, up = (layer.weight.detach().double().pow(2).sum(1) for layer in mlp.inputs)
        down = mlp.output.weight.detach().double().pow(2).sum(0)
        scores[i] = ((q + o).sqrt(), (gate + up + down).sqrt())
    return scores


def wanda_sp_scores(model: nn.Module, batches) -> Dict[int, tuple]:
    stats = input_statistics(model, batches)
    scores = {}
    for i, (attention, mlp) in layer_units(model).items():
        pair = []
        for layer, name in ((attention.output, attention.output_name), (mlp.output, mlp.output_name)):
            norm = stats[name]["sq"].sqrt()
            pair.append((layer.weight.detach().double().abs() * norm[None, :]).sum(0))
        scores[i] = (per_head(pair[0], attention), pair[1])
    return scores


def flap_statistics(model: nn.Module, batches) -> Dict[int, dict]:
    """FLAP's standardised fluctuation scores and the channel means for its bias compensation."""
    stats = input_statistics(model, batches)
    out = {}
    for i, (attention, mlp) in layer_units(model).items():
        entry = {}
        for kind, layer, name in (
            ("heads", attention.output, attention.output_name),
            ("neurons", mlp.output, mlp.output_name),
        ):
            s = stats[name]
            mean = s["sum"] / s["n"]
            variance = (s["sq"] - s["n"] * mean.pow(2)) / (s["n"] - 1)
            metric = variance * layer.weight.detach().double().pow(2).sum(0)
            metric = (metric - metric.mean()) / metric.std()
            entry[kind] = per_head(metric, attention, "mean") if kind == "heads" else metric
            entry[kind + "_mean"] = mean
        out[i] = entry
    return out


def taylor_scores(model: nn.Module, batches) -> Dict[int, tuple]:
    model.eval()
    model.zero_grad(set_to_none=True)
    for batch in batches:
        model(input_ids=batch, labels=batch).loss.backward()
    scores = {}
    for i, (attention, mlp) in layer_units(model).items():

        def salience(layer):
            return (layer.weight.detach() * layer.weight.grad).double().abs()

        q = salience(attention.inputs[0]).reshape(attention.num_units, -1).sum(1)
        o = salience(attention.output)
        o = o.reshape(o.shape[0], attention.num_units, attention.head_dim).sum((0, 2))
        gate, up = (salience(layer).sum(1) for layer in mlp.inputs)
        down = salience(mlp.output).sum(0)
        scores[i] = (q + o, gate + up + down)
    model.zero_grad(set_to_none=True)
    return scores


# ------------------------------------------------------------------------------ allocation
def uniform_plan(
    model: nn.Module, scores: Dict[int, tuple], remove_params: int, layers: Optional[List[int]] = None
) -> Plan:
    """The same counts in every pruned layer: the fraction ``rho`` of the pruned layers' parameters that
    the budget asks for, heads = the valid grouped-query layout nearest ``rho * heads``, neurons = the
    count that brings the layer's removed parameters to ``rho``; lowest scores go."""
    units = layer_units(model)
    layers = list(units) if layers is None else layers
    attention, mlp = units[layers[0]]
    layer_params = sum(p.numel() for p in attention.module.parameters()) + sum(
        p.numel() for p in mlp.module.parameters()
    )
    rho = remove_params / (len(layers) * layer_params)
    plan: Plan = {}
    for i in layers:
        attention, mlp = units[i]
        head_scores, neuron_scores = scores[i]
        heads = attention.choose(head_scores.argsort(), round(rho * attention.num_units)).tolist()
        plan[i] = (heads, [])
        left = rho * layer_params - plan_cost({i: units[i]}, {i: (heads, [])})
        count = min(max(round(left / neuron_cost(mlp)), 0), mlp.num_units - 1)
        plan[i] = (heads, neuron_scores.argsort()[:count].tolist())
    return plan


def flap_plan(model: nn.Module, flap: Dict[int, dict], remove_params: int) -> Plan:
    """One threshold over the standardised head and neuron scores of all layers, the smallest that
    removes at least ``remove_params`` (or the nearest below it if closer), heads in valid layouts."""
    units = layer_units(model)

    def plan_at(threshold: float) -> Plan:
        plan = {}
        for i, (attention, mlp) in units.items():
            heads, neurons = flap[i]["heads"], flap[i]["neurons"]
            count = int((heads < threshold).sum())
            chosen = attention.choose(heads.argsort(), count).tolist()
            cut = min(int((neurons < threshold).sum()), mlp.num_units - 1)
            plan[i] = (chosen, neurons.argsort()[:cut].tolist())
        return plan

    values = torch.cat([torch.cat([flap[i]["heads"], flap[i]["neurons"]]) for i in units]).sort().values
    lo, hi = 0, len(values)  # plan_at(values[k]) removes everything strictly below values[k]
    while lo < hi:
        mid = (lo + hi) // 2
        if plan_cost(units, plan_at(float(values[mid]))) >= remove_params:
            hi = mid
        else:
            lo = mid + 1
    above = plan_at(float(values[min(lo, len(values) - 1)]))
    below = plan_at(float(values[max(lo - 1, 0)]))
    pick = min((abs(plan_cost(units, p) - remove_params), k, p) for k, p in enumerate((below, above)))
    return pick[2]


def apply(model: nn.Module, plan: Plan, compensate: Optional[Dict[int, dict]] = None) -> None:
    """Remove the planned heads and neurons; with ``compensate`` (FLAP's channel means), first give
    ``o_proj`` / ``down_proj`` the bias ``W[:, removed] @ mean(X[removed])``."""
    units = layer_units(model)
    for i, (heads, neurons) in plan.items():
        attention, mlp = units[i]
        for part, removed, kind in ((attention, heads, "heads"), (mlp, neurons, "neurons")):
            if not removed:
                continue
            if kind == "heads":
                columns = (
                    torch.tensor(removed)[:, None] * attention.head_dim + torch.arange(attention.head_dim)
                ).flatten()
            else:
                columns = torch.tensor(removed)
            bias = None
            if compensate is not None:
                weight = part.output.weight.detach().double()
                bias = weight[:, columns] @ compensate[i][kind + "_mean"][columns]
            part.remove(removed)
            if bias is not None:
                layer = part.output
                old = layer.bias.detach().double() if layer.bias is not None else 0.0
                layer.bias = nn.Parameter((old + bias).to(layer.weight.dtype))


# ------------------------------------------------------------------------------ methods
def block_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.model.layers.parameters())


def prune_peer(method: str, model: nn.Module, batches, fractions, skip_first: int = 3, skip_last: int = 2) -> dict:
    """Score once, then prune a copy of ``model`` to each fraction of its blocks' parameters removed.
    Returns ``{"scoring_s": ..., "models": {fraction: (pruned model, prune seconds)}}``."""
    import copy

    start = time.perf_counter()
    if method == "flap":
        scores = flap_statistics(model, batches)
    else:
        scores = {"magnitude": magnitude_scores, "wanda_sp": wanda_sp_scores, "taylor": taylor_scores}[method](
            model, batches
        )
    scoring = time.perf_counter() - start
    blocks = block_params(model)
    models = {}
    for fraction in fractions:
        start = time.perf_counter()
        pruned = copy.deepcopy(model)
        budget = int(math.ceil(fraction * blocks))
        if method == "flap":
            plan = flap_plan(pruned, scores, budget)
        else:
            layers = None
            if method == "taylor":
                count = len(layer_units(pruned))
                layers = list(range(skip_first, count - skip_last))
            plan = uniform_plan(pruned, scores, budget, layers)
        apply(pruned, plan, scores if method == "flap" else None)
        models[fraction] = (pruned, time.perf_counter() - start)
    return {"scoring_s": scoring, "models": models}
