"""Gated-MLP neurons as units: ``down_proj(act(gate_proj(x)) * up_proj(x))``, the feed-forward block
of Llama, Qwen2/Qwen3, Mistral, Gemma3 and the shared experts of Qwen2-MoE in Hugging Face
transformers (``LlamaMLP`` and its copies).

A unit is one intermediate neuron ``i``: row ``i`` of ``gate_proj`` and of ``up_proj`` and column ``i``
of ``down_proj`` go together. Its output is ``act(gate_i(x)) * up_i(x)``, the ``i``-th input of
``down_proj``: U observes it there (one value per token) and R is the first-order loss change of
setting it to zero, ``dL/dh_i * h_i`` summed over tokens. Neither ``gate_proj`` nor ``up_proj`` alone
is a unit (their product is), so they are not scored as channel layers; ``down_proj``'s output is the
embedding dimension (residual stream), kept unless ``prune_embedding``. After removal
``intermediate_size`` (where the module has it) is set to the neurons left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn

from .surgery import keep_columns, keep_rows

__all__ = ["GatedMLPUnits", "find_gated_mlp", "gated_config_fields", "gated_width"]

LAYERS = ("gate_proj", "up_proj", "down_proj")
WIDTHS = ("intermediate_size", "ffn_dim", "hidden_dim")


def _is_gated(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in LAYERS)


def gated_width(module: nn.Module) -> Optional[int]:
    """The current number of intermediate neurons of a gated MLP (None: not one)."""
    return int(getattr(module, "down_proj").in_features) if _is_gated(module) else None


@dataclass
class GatedMLPUnits:
    """One gated MLP whose intermediate neurons are units (see the module docstring)."""

    name: str
    module: nn.Module
    inputs: Tuple[nn.Linear, ...]
    output: nn.Linear
    output_name: str
    input_names: Tuple[str, ...] = ()
    blocked: str = ""
    unit_noun: ClassVar[str] = "neurons"
    fixed_embedding: ClassVar[bool] = False

    @property
    def num_units(self) -> int:
        return self.output.in_features

    def projections(self, prune_embedding: bool = False) -> List[str]:
        """``gate_proj`` and ``up_proj`` (their rows are the neurons) and, unless ``prune_embedding``,
        ``down_proj`` (its rows are the embedding dimension)."""
        return list(self.input_names) + ([] if prune_embedding else [self.output_name])

    def units_view(self, tensor: torch.Tensor) -> torch.Tensor:
        """``down_proj``'s input ``[B, ..., I]`` as ``[B, I, tokens]``."""
        if tensor.dim() == 2:
            return tensor.unsqueeze(-1)
        moved = tensor.movedim(-1, 1)
        return moved.reshape(moved.shape[0], moved.shape[1], -1)

    @property
    def weight(self) -> torch.Tensor:
        """``[I, 2 * hidden]``: each neuron's ``gate_proj`` and ``up_proj`` rows."""
        return torch.cat([layer.weight.detach() for layer in self.inputs], 1)

    def output_columns(self) -> torch.Tensor:
        """``[I]``: L2 norm of each neuron's column in ``down_proj``."""
        return self.output.weight.detach().double().pow(2).sum(0).sqrt().cpu()

    def choose(self, order: torch.Tensor, count: int, same_layout: bool = False) -> torch.Tensor:
        """Any set of neurons can go: the first ``count`` of ``order``."""
        return order[: max(count, 0)]

    def remove(self, units: List[int]) -> Dict[str, Dict[str, torch.Tensor]]:
        """Remove these neurons (current numbering). Returns ``{layer: {"out"/"in": kept idxs}}``.

        Raises:
            ValueError: an index out of range or repeated, or every neuron removed.
        """
        width = self.num_units
        drop = set(int(i) for i in units)
        if len(drop) != len(units) or not drop or min(drop) < 0 or max(drop) >= width or len(drop) >= width:
            raise ValueError(
                f"cannot remove neurons {list(units)[:8]}... of {self.name!r}, which has {width}: indices must "
                "be distinct, in range, and leave at least one"
            )
        keep = torch.tensor([i for i in range(width) if i not in drop])
        gate, up = self.inputs
        keep_rows(gate, keep)
        keep_rows(up, keep)
        keep_columns(self.output, keep)
        for attribute in WIDTHS:
            if isinstance(getattr(self.module, attribute, None), int):
                setattr(self.module, attribute, int(keep.numel()))
        return {
            self.input_names[0]: {"out": keep},
            self.input_names[1]: {"out": keep},
            self.output_name: {"in": keep},
        }


def find_gated_mlp(model: nn.Module, ignored: Optional[set] = None) -> Dict[str, GatedMLPUnits]:
    """``{module name: GatedMLPUnits}`` of every gated MLP none of whose layers is ignored.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> config = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                      num_attention_heads=4, num_key_value_heads=2)
        >>> units = find_gated_mlp(LlamaForCausalLM(config))["model.layers.0.mlp"]
        >>> units.num_units, units.output_name
        (64, 'model.layers.0.mlp.down_proj')
    """
    ignored = ignored or set()
    found = {}
    for name, module in model.named_modules():
        if not _is_gated(module) or module in ignored:
            continue
        layers = tuple(getattr(module, n) for n in LAYERS)
        if any(layer in ignored for layer in layers):
            continue
        prefix = name + "." if name else ""
        gate, up, down = layers
        units = GatedMLPUnits(
            name, module, (gate, up), down, prefix + "down_proj", (prefix + "gate_proj", prefix + "up_proj")
        )
        if not gate.out_features == up.out_features == down.in_features:
            units.blocked = (
                f"gate / up / down widths ({gate.out_features}, {up.out_features}, {down.in_features}) differ"
            )
        elif down.in_features < 2:
            units.blocked = "one neuron left"
        found[name] = units
    return found


def gated_config_fields(name: str, units: "GatedMLPUnits", config) -> Dict[str, int]:
    """The config field of a gated MLP's width: Qwen2-MoE's shared expert has its own, every other
    dense gated MLP (Llama, Qwen, Mistral, Gemma3, the dense layers of MoE models) ``intermediate_size``."""
    if name.endswith("shared_expert") and hasattr(config, "shared_expert_intermediate_size"):
        return {"shared_expert_intermediate_size": units.num_units}
    return {"intermediate_size": units.num_units}
