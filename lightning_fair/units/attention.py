"""Attention heads as units: finding them, viewing their outputs, removing whole heads.

A head is one unit: its rows of the query, key and value projections and the columns of the
output projection that read its output go together. Three layouts are recognised:

* ``nn.MultiheadAttention`` (also inside ``nn.TransformerEncoderLayer``): the packed
  ``in_proj_weight`` and ``out_proj``; after removal the module becomes a
  :class:`~lightning_fair.units.mha.HeadPrunedMultiheadAttention`;
* a fused ``qkv`` Linear and a ``proj`` Linear, as timm's ``Attention`` writes them
  (``qkv(x).reshape(B, N, 3, num_heads, head_dim)``);
* separate query, key and value Linears (``query``/``key``/``value``, ``q_lin``/..., or
  ``q_proj``/...), as Hugging Face BERT, DistilBERT and ViT write them, with the output
  projection beside them (``out_lin``, ``o_proj``, ``out_proj``, ``proj``, ``dense``) or in the
  parent's ``output.dense`` (BERT).

The head count lives in ``num_heads``, ``num_attention_heads`` or ``n_heads``; the head size in
``head_dim`` or ``attention_head_size`` (else projection width / heads). After removal the head
count and ``all_head_size`` / ``attn_dim`` / ``inner_dim`` (where the module has them) are set to
match, and the head size is unchanged. A module whose layout does not fit exactly (grouped-query
attention, a norm over the concatenated heads, separate key/value widths) is not recognised and
is left whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn

from .mha import HeadPrunedMultiheadAttention, is_plain_mha
from .surgery import keep_columns, keep_rows

__all__ = ["AttentionUnits", "find_attention", "head_count", "head_row", "head_row_module", "remove_heads", "removable"]

HEAD_COUNTS = ("num_heads", "num_attention_heads", "n_heads")
HEAD_SIZES = ("head_dim", "attention_head_size")
#: attributes holding heads * head size, kept equal to it
INNER_SIZES = ("all_head_size", "attn_dim", "inner_dim")
SEPARATE = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q_proj", "k_proj", "v_proj"))
OUTPUTS = ("out_proj", "o_proj", "out_lin", "proj", "dense")
#: suffix of a pruning-history row that removes heads (``[attention + HEAD_SUFFIX, True, heads]``)
HEAD_SUFFIX = "<heads>"


def _int_attr(module: nn.Module, names) -> Tuple[Optional[str], Optional[int]]:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return name, value
    return None, None


def head_count(module: nn.Module) -> Optional[int]:
    """The current number of heads of an attention module (None if it has no head count)."""
    return _int_attr(module, HEAD_COUNTS)[1]


@dataclass
class AttentionUnits:
    """One attention module whose heads are units.

    ``inputs`` are the Linear layers producing q, k and v (one fused ``qkv``, or three; empty for
    ``nn.MultiheadAttention``), ``output`` the Linear reading the heads' concatenated outputs.
    The head count and size are read from the module, so they follow removals."""

    name: str
    module: nn.Module
    kind: str  # "mha", "fused" or "separate"
    inputs: Tuple[nn.Linear, ...]
    output: nn.Linear
    output_name: str
    input_names: Tuple[str, ...] = ()
    #: why its heads are not units ("" if they are): its projections are then kept whole
    blocked: str = ""
    #: what a unit of this family is called (:class:`lightning_fair.units.families.Units`)
    unit_noun: ClassVar[str] = "heads"

    @property
    def num_heads(self) -> int:
        return head_count(self.module)

    @property
    def num_units(self) -> int:
        """The units of this family are heads (:class:`lightning_fair.units.families.Units`)."""
        return self.num_heads

    @property
    def fixed_embedding(self) -> bool:
        """``nn.MultiheadAttention``'s embedding dimension is never pruned (torch-pruning sees its
        ``out_proj`` only through the module)."""
        return self.kind == "mha"

    def remove(self, units: List[int]) -> Dict[str, Dict[str, torch.Tensor]]:
        """:func:`remove_heads` of these heads."""
        return remove_heads(self, units)

    def choose(self, order: torch.Tensor, count: int, same_layout: bool = False) -> torch.Tensor:
        """The heads to remove when ``count`` go: the first ``count`` of ``order`` (any set of heads can go)."""
        return order[:count]

    @property
    def head_dim(self) -> int:
        if self.kind == "mha":
            return self.module.head_dim
        size = _int_attr(self.module, HEAD_SIZES)[1]
        return size if size is not None else self.output.in_features // self.num_heads

    def projections(self, prune_embedding: bool = False) -> List[str]:
        """Names of the Linear layers whose output channels are not channel units: q, k, v (or the
        fused qkv), whose channels belong to heads, and the output projection, whose channels are the
        embedding dimension (with ``prune_embedding``, a channel unit unless it is
        ``nn.MultiheadAttention``'s ``out_proj``, which torch-pruning sees only through its module)."""
        keep_output = not prune_embedding or self.fixed_embedding
        return list(self.input_names) + ([self.output_name] if keep_output else [])

    def units_view(self, tensor: torch.Tensor) -> torch.Tensor:
        """The output projection's input ``[B, T, H * d]`` as ``[B, H, T * d]``: one point per head
        and sample (its output over every token and head dimension)."""
        batch = tensor.shape[0]
        per_head = tensor.reshape(batch, -1, self.num_heads, self.head_dim)
        return per_head.permute(0, 2, 1, 3).reshape(batch, self.num_heads, -1)

    @property
    def weight(self) -> torch.Tensor:
        """``[H, rows]``: each head's query, key and value weight rows (its incoming weights)."""
        heads, dim = self.num_heads, self.head_dim
        if self.kind == "mha":
            rows = self.module.in_proj_weight.detach().reshape(3, heads, dim, -1)
        elif self.kind == "fused":
            rows = self.inputs[0].weight.detach().reshape(3, heads, dim, -1)
        else:
            rows = torch.stack([layer.weight.detach().reshape(heads, dim, -1) for layer in self.inputs])
        return rows.transpose(0, 1).reshape(heads, -1)

    def output_columns(self) -> torch.Tensor:
        """``[H]``: L2 norm of each head's columns in the output projection (how strongly it is read)."""
        weight = self.output.weight.detach().double()
        return weight.reshape(weight.shape[0], self.num_heads, self.head_dim).pow(2).sum((0, 2)).sqrt().cpu()


def _describe(
    model: nn.Module, name: str, module: nn.Module, modules: Dict[str, nn.Module]
) -> Optional[AttentionUnits]:
    prefix = name + "." if name else ""
    if is_plain_mha(module):
        out = module.out_proj
        return AttentionUnits(name, module, "mha", (), out, prefix + "out_proj")
    heads = head_count(module)
    if heads is None:
        return None
    qkv = getattr(module, "qkv", None)
    own = [n for n, _ in module.named_parameters(recurse=False)]
    if isinstance(qkv, nn.Linear) and isinstance(getattr(module, "proj", None), nn.Linear):
        units = AttentionUnits(name, module, "fused", (qkv,), module.proj, prefix + "proj", (prefix + "qkv",))
        inner = units.num_heads * units.head_dim
        if not isinstance(getattr(module, "norm", nn.Identity()), nn.Identity):
            units.blocked = "a norm over the concatenated heads"
        elif qkv.out_features != 3 * inner or module.proj.in_features != inner:
            units.blocked = (
                f"qkv / proj widths ({qkv.out_features}, {module.proj.in_features}) are not 3 x / 1 x "
                f"{units.num_heads} heads x {units.head_dim}"
            )
        elif own:
            units.blocked = f"its own parameters {own} (e.g. a per-head position bias) would not follow the heads"
        return units
    for triple in SEPARATE:
        layers = [getattr(module, n, None) for n in triple]
        if not all(isinstance(layer, nn.Linear) for layer in layers):
            continue
        output, output_name = None, None
        for candidate in OUTPUTS:
            if isinstance(getattr(module, candidate, None), nn.Linear):
                output, output_name = getattr(module, candidate), prefix + candidate
                break
        if output is None:  # BERT: BertAttention(self=BertSelfAttention, output=BertSelfOutput(dense))
            parent_name = name.rpartition(".")[0]
            dense_name = (parent_name + "." if parent_name else "") + "output.dense"
            if isinstance(modules.get(dense_name), nn.Linear):
                output, output_name = modules[dense_name], dense_name
        if output is None:
            return None
        units = AttentionUnits(
            name, module, "separate", tuple(layers), output, output_name, tuple(prefix + n for n in triple)
        )
        inner = units.num_heads * units.head_dim
        if not all(layer.out_features == inner for layer in layers) or output.in_features != inner:
            units.blocked = (
                f"q / k / v / output widths ({', '.join(str(layer.out_features) for layer in layers)}, "
                f"{output.in_features}) are not {units.num_heads} heads x {units.head_dim} each "
                "(grouped-query attention?)"
            )
        elif own:
            units.blocked = f"its own parameters {own} (e.g. a per-head position bias) would not follow the heads"
        return units
    return None


def find_attention(model: nn.Module, ignored: Optional[set] = None) -> Dict[str, AttentionUnits]:
    """``{attention module name: AttentionUnits}`` of every recognised attention module none of whose
    projections is in ``ignored``, in registration order. Those whose heads cannot be units (one
    head left, an unknown per-head layout) carry the reason in ``blocked``: their projections
    are kept whole (see :func:`removable`).

    Example:
        >>> layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)
        >>> units = find_attention(layer)
        >>> list(units), units["self_attn"].num_heads, units["self_attn"].output_name
        (['self_attn'], 4, 'self_attn.out_proj')
    """
    ignored = ignored or set()
    modules = dict(model.named_modules())
    found = {}
    for name, module in modules.items():
        units = _describe(model, name, module, modules)
        if units is None or module in ignored:
            continue
        if units.output in ignored or any(layer in ignored for layer in units.inputs):
            continue
        if not units.blocked and units.num_heads < 2:
            units.blocked = "one head left"
        found[name] = units
    return found


def removable(found: Dict[str, AttentionUnits]) -> Dict[str, AttentionUnits]:
    """The attention modules of :func:`find_attention` whose heads are units."""
    return {name: units for name, units in found.items() if not units.blocked}


def head_row(attention: str) -> str:
    """The layer name of a pruning-history row removing heads of ``attention``."""
    return attention + HEAD_SUFFIX


def head_row_module(row_name: str) -> Optional[str]:
    """The attention module a history row removes heads from (None for a torch-pruning row)."""
    return row_name[: -len(HEAD_SUFFIX)] if row_name.endswith(HEAD_SUFFIX) else None


def remove_heads(units: AttentionUnits, heads: List[int]) -> Dict[str, Dict[str, torch.Tensor]]:
    """Remove whole heads (indices in the current numbering) and set the head-count attributes.

    Returns the original indices each changed module kept, ``{module name: {"out"/"in": idxs}}``
    (as :meth:`lightning_fair.removal.planner.DependencyPlanner.apply` does).

    Raises:
        ValueError: an index out of range, repeated, or all heads removed.
    """
    count, dim = units.num_heads, units.head_dim
    drop = sorted(set(int(h) for h in heads))
    if len(drop) != len(heads) or not drop or drop[0] < 0 or drop[-1] >= count or len(drop) >= count:
        raise ValueError(
            f"cannot remove heads {list(heads)} of {units.name!r}, which has {count}: indices must be "
            "distinct, in range, and leave at least one head"
        )
    keep = torch.tensor([h for h in range(count) if h not in drop])
    per_head = (keep[:, None] * dim + torch.arange(dim)).flatten()  # channels of the kept heads
    packed = torch.cat([per_head + part * count * dim for part in range(3)])  # q, k, v blocks of a fused layout
    kept = {units.output_name: {"in": per_head}}
    if units.kind == "mha":
        keep_rows(units.module, packed, "in_proj_weight", "in_proj_bias")
        kept[units.name] = {"out": packed}
    elif units.kind == "fused":
        keep_rows(units.inputs[0], packed)
        kept[units.input_names[0]] = {"out": packed}
    else:
        for layer, layer_name in zip(units.inputs, units.input_names):
            keep_rows(layer, per_head)
            kept[layer_name] = {"out": per_head}
    keep_columns(units.output, per_head)
    module = units.module
    heads_left = int(keep.numel())
    for attribute in HEAD_COUNTS:
        if isinstance(getattr(module, attribute, None), int):
            setattr(module, attribute, heads_left)
    for attribute in INNER_SIZES:
        if isinstance(getattr(module, attribute, None), int):
            setattr(module, attribute, heads_left * dim)
    if units.kind == "mha":
        module.__class__ = HeadPrunedMultiheadAttention
        module.head_dim = dim
    return kept
