"""Mixture-of-experts: routed experts as units (Mixtral, Qwen2-MoE, Qwen3-MoE in Hugging Face
transformers, and any sparse block written the same way).

Such a block has a router ``gate`` (``weight [E, hidden]``, ``top_k``, ``num_experts``) and the
experts ``experts`` as 3-d tensors (``gate_up_proj [E, 2 I, hidden]``, ``down_proj [E, hidden, I]``,
``num_experts``), called as ``experts(hidden [N, hidden], top_k_index [N, k], top_k_weights [N, k])``:
token ``n`` gets ``sum_j top_k_weights[n, j] * expert_{top_k_index[n, j]}(hidden[n])``.

A unit is one expert. Its output, as U and R see it, is its routing weight per token
``z[n, e]`` (the weight the router gives expert ``e`` for token ``n``, 0 where it is not among the
``top_k``): while the statistics pass runs, the experts' weights are read from a ``[N, E]`` tensor
``z`` (same values), so R, the first-order loss change of removing the expert (``z[:, e] -> 0``), is
``|sum_n dL/dz[n, e] * z[n, e]|``, and U compares the distributions of ``z[:, e]`` over the tokens
predicting different next tokens (how differently the router uses the expert for them). Removing an
expert takes its slices of every expert tensor and its router row; the router's softmax then
shares its probability among the others. At least ``top_k`` experts stay. Shared experts
(Qwen2-MoE's ``shared_expert``) are gated MLPs (:mod:`.gated_mlp`), pruned by neuron.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn

from .surgery import new_parameter

__all__ = ["ExpertUnits", "expert_config_fields", "expert_count", "expert_macs", "find_experts"]

EXPERT_TENSORS = ("gate_up_proj", "down_proj")
COUNTS = ("num_experts", "num_local_experts")


def _parts(block: nn.Module) -> Optional[Tuple[nn.Module, nn.Module]]:
    router, experts = getattr(block, "gate", None), getattr(block, "experts", None)
    if not isinstance(router, nn.Module) or not isinstance(experts, nn.Module):
        return None
    weight = getattr(router, "weight", None)
    tensors = [getattr(experts, n, None) for n in EXPERT_TENSORS]
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not isinstance(getattr(router, "top_k", None), int):
        return None
    if not all(isinstance(t, torch.Tensor) and t.dim() == 3 and t.shape[0] == weight.shape[0] for t in tensors):
        return None
    return router, experts


def expert_count(module: nn.Module) -> Optional[int]:
    """The current number of experts of a sparse block (None: not one)."""
    parts = _parts(module)
    return None if parts is None else int(getattr(parts[0], "weight").shape[0])


def expert_macs(experts: nn.Module, top_k_index: torch.Tensor) -> int:
    """Multiply-accumulates of one call of an experts module: every (token, chosen expert) pair runs
    that expert's ``gate_up_proj`` and ``down_proj`` once."""
    per_expert = sum(getattr(experts, n)[0].numel() for n in EXPERT_TENSORS)
    return int(top_k_index.numel()) * per_expert


@dataclass
class ExpertUnits:
    """One sparse block whose routed experts are units (see the module docstring)."""

    name: str
    module: nn.Module
    router: nn.Module
    output: nn.Module  # the experts module: its call's routing weights are the units' outputs
    output_name: str
    inputs: Tuple[nn.Module, ...] = ()
    input_names: Tuple[str, ...] = ()
    blocked: str = ""
    unit_noun: ClassVar[str] = "experts"
    fixed_embedding: ClassVar[bool] = False

    @property
    def num_units(self) -> int:
        return int(getattr(self.router, "weight").shape[0])

    @property
    def top_k(self) -> int:
        return int(getattr(self.router, "top_k"))

    def projections(self, prune_embedding: bool = False) -> List[str]:
        """No Linear layer belongs to the experts (their tensors are 3-d parameters)."""
        return []

    def expose(self, args: tuple, kwargs: dict) -> Tuple[torch.Tensor, tuple, dict]:
        """For a forward pre-hook of the experts module: ``(z, args, kwargs)`` where ``z [N, E]`` holds
        the routing weights of the call and the returned arguments read them from ``z``."""
        names = ("hidden_states", "top_k_index", "top_k_weights")
        values = list(args) + [kwargs[n] for n in names[len(args) :] if n in kwargs]
        index, weights = values[1], values[2]
        z = torch.zeros(index.shape[0], self.num_units, dtype=weights.dtype, device=weights.device)
        z = z.scatter(1, index, weights)
        read = z.gather(1, index)
        if len(args) >= 3:
            return z, (*args[:2], read, *args[3:]), kwargs
        return z, args, {**kwargs, "top_k_weights": read}

    def units_view(self, tensor: torch.Tensor) -> torch.Tensor:
        """Routing weights ``[N, ..., E]`` as ``[N, E, rest]``."""
        if tensor.dim() == 2:
            return tensor.unsqueeze(-1)
        moved = tensor.movedim(-1, 1)
        return moved.reshape(moved.shape[0], moved.shape[1], -1)

    @property
    def weight(self) -> torch.Tensor:
        """``[E, rows]``: each expert's weights (the ``"l1"`` ranking)."""
        return torch.cat([getattr(self.output, n).detach().flatten(1) for n in EXPERT_TENSORS], 1)

    def output_columns(self) -> torch.Tensor:
        """``[E]``: the norm of each expert's ``down_proj`` (how strongly its output is written)."""
        return getattr(self.output, "down_proj").detach().double().flatten(1).norm(dim=1).cpu()

    def choose(self, order: torch.Tensor, count: int, same_layout: bool = False) -> torch.Tensor:
        """The first ``count`` of ``order``, keeping at least ``top_k`` experts."""
        return order[: max(0, min(count, self.num_units - self.top_k))]

    def remove(self, units: List[int]) -> Dict[str, Dict[str, torch.Tensor]]:
        """Remove these experts (current numbering): their slices of every expert tensor and their
        router rows; the expert counts are set. Returns ``{module: {"out": kept experts}}``.

        Raises:
            ValueError: an index out of range or repeated, or fewer than ``top_k`` experts left.
        """
        count = self.num_units
        drop = set(int(i) for i in units)
        if len(drop) != len(units) or not drop or min(drop) < 0 or max(drop) >= count or count - len(drop) < self.top_k:
            raise ValueError(
                f"cannot remove experts {list(units)} of {self.name!r}, which has {count} and routes each token to "
                f"{self.top_k}: indices must be distinct, in range, and leave at least {self.top_k}"
            )
        keep = torch.tensor([e for e in range(count) if e not in drop])
        for holder in (self.output, self.router):
            for name, parameter in list(holder.named_parameters(recurse=False)):
                if parameter.dim() >= 1 and parameter.shape[0] == count:
                    setattr(
                        holder, name, new_parameter(parameter, parameter.index_select(0, keep.to(parameter.device)))
                    )
            for name, buffer in list(holder.named_buffers(recurse=False)):
                if buffer.dim() >= 1 and buffer.shape[0] == count:
                    setattr(holder, name, buffer.index_select(0, keep.to(buffer.device)))
        for holder in (self.output, self.router, self.module):
            for attribute in COUNTS:
                if isinstance(getattr(holder, attribute, None), int):
                    setattr(holder, attribute, int(keep.numel()))
        prefix = self.name + "." if self.name else ""
        return {self.output_name: {"out": keep}, prefix + "gate": {"out": keep}}


def find_experts(model: nn.Module, ignored: Optional[set] = None) -> Dict[str, ExpertUnits]:
    """``{block name: ExpertUnits}`` of every sparse block (its router and experts not ignored).

    Example:
        >>> from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
        >>> config = Qwen3MoeConfig(vocab_size=32, hidden_size=16, intermediate_size=32, moe_intermediate_size=8,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, num_experts=4, num_experts_per_tok=2)
        >>> units = find_experts(Qwen3MoeForCausalLM(config))["model.layers.0.mlp"]
        >>> units.num_units, units.top_k, units.output_name
        (4, 2, 'model.layers.0.mlp.experts')
    """
    ignored = ignored or set()
    found = {}
    for name, module in model.named_modules():
        parts = _parts(module)
        if parts is None or module in ignored or any(p in ignored for p in parts):
            continue
        router, experts = parts
        prefix = name + "." if name else ""
        units = ExpertUnits(name, module, router, experts, prefix + "experts")
        if units.num_units <= units.top_k:
            units.blocked = f"{units.num_units} experts for top-{units.top_k} routing: none can go"
        found[name] = units
    return found


def expert_config_fields(name: str, units: "ExpertUnits", config) -> Dict[str, int]:
    """The config field of a MoE block's expert count: Mixtral's ``num_local_experts``, Qwen's
    ``num_experts``."""
    return {"num_local_experts" if hasattr(config, "num_local_experts") else "num_experts": units.num_units}
