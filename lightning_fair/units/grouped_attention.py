"""Grouped-query attention (GQA) heads as units: Llama, Qwen2/Qwen3, Mistral, Gemma3, Mixtral,
Qwen2-MoE / Qwen3-MoE attention in Hugging Face transformers.

Such a module has ``q_proj`` (``H`` query heads of ``head_dim`` rows), ``k_proj`` and ``v_proj``
(``G`` key-value heads, ``G`` dividing ``H``), ``o_proj`` reading the query heads' outputs, and
``num_key_value_groups = H / G``: query head ``h`` attends with key-value head ``h // (H / G)``
(``repeat_kv``). Its ``forward`` infers the head counts from the projections' widths
(``view(*shape, -1, head_dim)``), so removing rows is enough once ``num_key_value_groups`` is set.

A unit is a query head: its rows of ``q_proj`` and its columns of ``o_proj``; U and R look at its
output, the head's slice of ``o_proj``'s input (as for plain multi-head attention). The grouping
must stay valid, so not every set of heads can go (:meth:`GroupedQueryUnits.choose`): every key-value
group keeps the same number of query heads, and a group left with none is removed whole, with its
key and value rows. Of all such layouts (``d`` groups removed, ``m`` query heads removed from each
of the others: ``d * H/G + (G - d) * m`` heads), the one nearest the allocated count is taken
(the smaller on a tie: prune less, not more), and within it the heads and groups the ranking puts
first. Query-norm / key-norm layers over ``head_dim`` (Qwen3, Gemma3) are shared by all heads and
are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn

from .surgery import keep_columns, keep_rows

__all__ = ["GroupedQueryUnits", "find_grouped_attention", "grouped_config_fields", "grouped_head_count", "layouts"]

PROJECTIONS = ("q_proj", "k_proj", "v_proj")
#: attributes set to the new counts after removal, where the module has them as integers
QUERY_COUNTS = ("num_heads", "num_attention_heads")
KEY_VALUE_COUNTS = ("num_key_value_heads", "num_kv_heads")


def _head_dim(module: nn.Module) -> int:
    """The module's ``head_dim`` (0 if it has none)."""
    value = getattr(module, "head_dim", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _is_grouped(module: nn.Module) -> bool:
    return (
        all(isinstance(getattr(module, n, None), nn.Linear) for n in PROJECTIONS)
        and isinstance(getattr(module, "o_proj", None), nn.Linear)
        and isinstance(getattr(module, "num_key_value_groups", None), int)
        and _head_dim(module) > 0
    )


def grouped_head_count(module: nn.Module) -> Optional[int]:
    """The current number of query heads of a grouped-query attention module (None: not one)."""
    if not _is_grouped(module):
        return None
    return int(getattr(module, "q_proj").out_features) // _head_dim(module)


def layouts(heads: int, groups: int) -> List[Tuple[int, int, int]]:
    """Every valid cut of ``heads`` query heads in ``groups`` key-value groups, as
    ``(heads removed, groups removed, query heads removed from each other group)``, at least one
    head left, ascending.

    Example:
        >>> [removed for removed, _, _ in layouts(9, 3)]
        [0, 3, 3, 5, 6, 6, 7, 7, 8]
    """
    size = heads // groups
    found = []
    for dropped in range(groups):
        for each in range(size):
            found.append((dropped * size + (groups - dropped) * each, dropped, each))
    return sorted(found)


@dataclass
class GroupedQueryUnits:
    """One grouped-query attention module whose query heads are units (see the module docstring)."""

    name: str
    module: nn.Module
    inputs: Tuple[nn.Linear, ...]
    output: nn.Linear
    output_name: str
    input_names: Tuple[str, ...] = ()
    blocked: str = ""
    unit_noun: ClassVar[str] = "heads"
    fixed_embedding: ClassVar[bool] = False

    @property
    def head_dim(self) -> int:
        return _head_dim(self.module)

    @property
    def num_units(self) -> int:
        return self.inputs[0].out_features // self.head_dim

    @property
    def num_key_value_heads(self) -> int:
        return self.inputs[1].out_features // self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads per key-value head."""
        return self.num_units // self.num_key_value_heads

    def projections(self, prune_embedding: bool = False) -> List[str]:
        """q, k and v (their rows belong to heads) and, unless ``prune_embedding``, ``o_proj`` (its
        rows are the embedding dimension)."""
        return list(self.input_names) + ([] if prune_embedding else [self.output_name])

    def units_view(self, tensor: torch.Tensor) -> torch.Tensor:
        """``o_proj``'s input ``[B, T, H * d]`` as ``[B, H, T * d]``."""
        batch = tensor.shape[0]
        per_head = tensor.reshape(batch, -1, self.num_units, self.head_dim)
        return per_head.permute(0, 2, 1, 3).reshape(batch, self.num_units, -1)

    @property
    def weight(self) -> torch.Tensor:
        """``[H, rows]``: each query head's rows and the rows of the key and value head it reads."""
        query = self.inputs[0].weight.detach().reshape(self.num_units, -1)
        key, value = (layer.weight.detach().reshape(self.num_key_value_heads, -1) for layer in self.inputs[1:])
        return torch.cat([query, torch.cat([key, value], 1).repeat_interleave(self.group_size, 0)], 1)

    def output_columns(self) -> torch.Tensor:
        """``[H]``: L2 norm of each query head's columns in ``o_proj``."""
        weight = self.output.weight.detach().double()
        return weight.reshape(weight.shape[0], self.num_units, self.head_dim).pow(2).sum((0, 2)).sqrt().cpu()

    def choose(self, order: torch.Tensor, count: int, same_layout: bool = False) -> torch.Tensor:
        """The heads to remove when about ``count`` should go: a valid layout (:func:`layouts`)
        nearest ``count`` (the smaller on a tie), filled with the heads ``order`` puts first. A head's
        cost is its place in ``order`` (the first to remove is the cheapest);
        each kept group loses its cheapest heads, the groups removed whole are those whose removal
        costs least beside that, and of the layouts removing the same number the cheapest is taken.
        ``same_layout``: only layouts that keep every key-value group (each loses the same number of
        query heads), so that modules losing the same count end alike (``shapes="uniform"``)."""
        heads, groups, size = self.num_units, self.num_key_value_heads, self.group_size
        candidates = [c for c in layouts(heads, groups) if not (same_layout and c[1])]
        best = min((abs(removed - count), removed) for removed, _, _ in candidates)[1]
        if count <= 0 or best == 0:
            return order[:0]
        place = torch.empty(heads, dtype=torch.long)
        place[order] = torch.arange(heads)
        cost = (place + 1).view(groups, size).double()  # the first to remove costs least
        ordered = cost.sort(1)
        options = []
        for removed, dropped, each in candidates:
            if removed != best:
                continue
            trimmed = ordered.values[:, :each].sum(1)
            drop = (cost.sum(1) - trimmed).argsort()[:dropped].tolist()
            chosen = []
            for group in range(groups):
                members = range(size) if group in drop else ordered.indices[group, :each].tolist()
                chosen += [group * size + int(i) for i in members]
            options.append((float(cost.flatten()[chosen].sum()), sorted(chosen)))
        return torch.tensor(min(options)[1], dtype=torch.long)

    def remove(self, units: List[int]) -> Dict[str, Dict[str, torch.Tensor]]:
        """Remove these query heads (current numbering); groups left without one lose their key and
        value head. Returns the kept indices of every changed layer, ``{layer: {"out"/"in": idxs}}``.

        Raises:
            ValueError: the heads are out of range, repeated, leave none, or leave the key-value
                groups unequal (:meth:`choose` gives valid sets).
        """
        heads, groups, size, dim = self.num_units, self.num_key_value_heads, self.group_size, self.head_dim
        drop = sorted(set(int(h) for h in units))
        per_group = [sum(1 for h in drop if h // size == g) for g in range(groups)]
        partial = {c for c in per_group if c < size}
        if len(drop) != len(units) or not drop or drop[0] < 0 or drop[-1] >= heads or len(partial) != 1:
            raise ValueError(
                f"cannot remove heads {list(units)} of {self.name!r} ({heads} query heads in {groups} "
                f"key-value groups of {size}): indices must be distinct and in range, and every group kept must "
                "lose the same number of query heads (a group losing all of them is removed whole)"
            )
        keep_heads = torch.tensor([h for h in range(heads) if h not in set(drop)])
        keep_groups = torch.tensor([g for g in range(groups) if per_group[g] < size])
        query_rows = (keep_heads[:, None] * dim + torch.arange(dim)).flatten()
        group_rows = (keep_groups[:, None] * dim + torch.arange(dim)).flatten()
        q, k, v = self.inputs
        keep_rows(q, query_rows)
        keep_rows(k, group_rows)
        keep_rows(v, group_rows)
        keep_columns(self.output, query_rows)
        kept = {self.input_names[0]: {"out": query_rows}, self.output_name: {"in": query_rows}}
        kept[self.input_names[1]] = kept[self.input_names[2]] = {"out": group_rows}
        module = self.module
        setattr(module, "num_key_value_groups", int(keep_heads.numel() // keep_groups.numel()))
        for attribute in QUERY_COUNTS:
            if isinstance(getattr(module, attribute, None), int):
                setattr(module, attribute, int(keep_heads.numel()))
        for attribute in KEY_VALUE_COUNTS:
            if isinstance(getattr(module, attribute, None), int):
                setattr(module, attribute, int(keep_groups.numel()))
        return kept


def _describe(name: str, module: nn.Module) -> Optional[GroupedQueryUnits]:
    if not _is_grouped(module):
        return None
    prefix = name + "." if name else ""
    layers = tuple(getattr(module, n) for n in PROJECTIONS)
    output = getattr(module, "o_proj")
    units = GroupedQueryUnits(name, module, layers, output, prefix + "o_proj", tuple(prefix + n for n in PROJECTIONS))
    dim = units.head_dim
    q, k, v = layers
    widths = (q.out_features, k.out_features, v.out_features, output.in_features)
    own = [n for n, _ in module.named_parameters(recurse=False)]
    if any(width % dim for width in widths) or k.out_features != v.out_features or q.out_features != widths[3]:
        units.blocked = f"q / k / v / o_proj widths {widths} are not whole heads of {dim}"
    elif units.num_units % units.num_key_value_heads or units.num_units // units.num_key_value_heads != int(
        getattr(module, "num_key_value_groups")
    ):
        units.blocked = (
            f"{units.num_units} query heads, {units.num_key_value_heads} key-value heads and "
            f"num_key_value_groups={getattr(module, 'num_key_value_groups')} do not agree"
        )
    elif own:
        units.blocked = f"its own parameters {own} (e.g. per-head sinks) would not follow the heads"
    elif units.num_units < 2:
        units.blocked = "one head left"
    return units


def find_grouped_attention(model: nn.Module, ignored: Optional[set] = None) -> Dict[str, GroupedQueryUnits]:
    """``{module name: GroupedQueryUnits}`` of every grouped-query attention module none of whose
    projections is ignored (blocked ones carry the reason).

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> config = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                      num_attention_heads=4, num_key_value_heads=2)
        >>> found = find_grouped_attention(LlamaForCausalLM(config))
        >>> units = found["model.layers.0.self_attn"]
        >>> units.num_units, units.num_key_value_heads, units.output_name
        (4, 2, 'model.layers.0.self_attn.o_proj')
    """
    ignored = ignored or set()
    found = {}
    for name, module in model.named_modules():
        units = _describe(name, module)
        if units is None or module in ignored or units.output in ignored:
            continue
        if any(layer in ignored for layer in units.inputs):
            continue
        found[name] = units
    return found


def grouped_config_fields(name: str, units: "GroupedQueryUnits", config) -> Dict[str, int]:
    """The config fields of a grouped-query attention module's heads (Llama, Qwen, Mistral, Gemma3
    and their MoE variants read them per model; ``head_dim`` is written out because a changed head
    count would otherwise derive another one from the hidden size)."""
    return {
        "num_attention_heads": units.num_units,
        "num_key_value_heads": units.num_key_value_heads,
        "head_dim": units.head_dim,
    }
