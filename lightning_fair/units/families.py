"""Unit families: the registry that the layers above consult for every unit that is not a plain
Conv output channel or Linear output feature.

A Conv channel or a Linear feature is a unit by itself (:mod:`.channels`), removed through
torch-pruning's dependency graph. A *family* groups rows and columns of several layers into one unit
that the graph cannot cut on its own: attention heads (:mod:`.attention`), grouped-query attention
heads (:mod:`.grouped_attention`), gated-MLP neurons (:mod:`.gated_mlp`), routed experts
(:mod:`.experts`). A family is an adapter with four parts:

- ``find(model, ignored)``: ``{module name: units}`` of every module of the family, each a
  :class:`Units` (blocked ones too, carrying the reason);
- ``unit_count(module)``: the module's current number of units, or None if it is not of the family
  (the report's per-layer counts);
- ``collecting(model)``: a context manager under which the statistics pass sees the units' inputs and
  outputs through hooks (e.g. PyTorch's fused attention fast path off);
- ``row_suffix``: what marks a pruning-history row of the family (``"<heads>"``), replayed by
  ``Units.remove`` on a freshly built model;
- ``config_fields(name, units, config)``: the fields of a Hugging Face config that hold the
  module's unit counts (``{"num_attention_heads": 6, ...}``), or None where the config cannot say
  them (a head size derived from the hidden size); :mod:`lightning_fair.units.pretrained_config`
  writes them under ``shapes="uniform"``.

The statistics pass (:mod:`lightning_fair.collect`), the memory estimate, the removal planner, the
report and the checkpoint replay call the functions below, never a family directly, so a new family
is one adapter registered here (:func:`register_family`) and its tests.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Protocol, Tuple

import torch
from torch import nn

from .attention import find_attention, head_count
from .experts import expert_config_fields, expert_count, find_experts
from .gated_mlp import find_gated_mlp, gated_config_fields, gated_width
from .grouped_attention import find_grouped_attention, grouped_config_fields, grouped_head_count
from .mha import hookable_attention

__all__ = [
    "ATTENTION_HEADS",
    "FAMILIES",
    "EXPERTS",
    "GATED_MLP_NEURONS",
    "GROUPED_QUERY_HEADS",
    "UnitFamily",
    "Units",
    "collecting",
    "family_of_module",
    "find_units",
    "history_row",
    "register_family",
    "registered",
    "removable",
    "replay_row",
    "row_target",
    "unit_count",
]


class Units(Protocol):
    """One module's units of a family (e.g. :class:`~lightning_fair.units.attention.AttentionUnits`).

    A unit's output is observed at the input of ``output`` (the layer that reads the units), viewed per
    unit by :meth:`units_view`; ``inputs`` are the layers whose rows make the units."""

    name: str
    module: nn.Module
    inputs: Tuple[nn.Module, ...]
    output: nn.Linear
    output_name: str
    #: why the units cannot be removed ("" if they can): the module's layers are then kept whole
    blocked: str
    #: what one unit is called in notes and warnings ("heads")
    unit_noun: str

    @property
    def num_units(self) -> int: ...

    @property
    def weight(self) -> torch.Tensor:
        """``[num_units, rows]``: each unit's incoming weights (the ``"l1"`` ranking)."""

    @property
    def fixed_embedding(self) -> bool:
        """Whether the dimension the module reads and writes can never be pruned, even with
        ``prune_embedding=True`` (``nn.MultiheadAttention``)."""

    def projections(self, prune_embedding: bool = False) -> List[str]:
        """Names of the Linear layers whose channels are not channel units (they belong to these units)."""

    def units_view(self, tensor: torch.Tensor) -> torch.Tensor:
        """The input of ``output`` as ``[B, num_units, points per unit]``."""

    def output_columns(self) -> torch.Tensor:
        """``[num_units]``: how strongly ``output`` reads each unit (the consumer-weighted ranking)."""

    def remove(self, units: List[int]) -> Dict[str, Dict[str, torch.Tensor]]:
        """Remove these units; ``{layer: {"out"/"in": kept indices}}`` of every changed layer."""

    def choose(self, order: torch.Tensor, count: int, same_layout: bool = False) -> torch.Tensor:
        """Optional. The units to remove when about ``count`` should go, given ``order`` (every unit,
        first-to-remove first): ``order[:count]`` where any set of units can go, else the nearest
        set the module's layout allows (grouped-query attention keeps the same number of query heads
        per key-value head). ``same_layout``: modules of a kind losing the same count must end in
        the same layout (``shapes="uniform"``)."""


@dataclass(frozen=True)
class UnitFamily:
    """A family of units, as the layers above the units see it (see the module docstring)."""

    name: str
    find: Callable[[nn.Module, Optional[set]], Dict[str, Units]]
    unit_count: Callable[[nn.Module], Optional[int]]
    collecting: Callable[[nn.Module], ContextManager]
    row_suffix: str
    config_fields: Callable[[str, Any, Any], Optional[Dict[str, int]]] = lambda name, units, config: None


#: attention heads: ``nn.MultiheadAttention``, timm's fused qkv, Hugging Face's separate q/k/v
ATTENTION_HEADS = UnitFamily("attention heads", find_attention, head_count, hookable_attention, "<heads>")


def nothing_to_prepare(model: nn.Module) -> ContextManager:
    """The ``collecting`` context of a family whose units hooks see as the model runs."""
    return contextlib.nullcontext()


#: grouped-query attention (Llama, Qwen, Mistral, Gemma3, the MoE families): query heads, grouping kept
GROUPED_QUERY_HEADS = UnitFamily(
    "grouped-query heads",
    find_grouped_attention,
    grouped_head_count,
    nothing_to_prepare,
    "<query-heads>",
    grouped_config_fields,
)

#: gated MLPs (``down_proj(act(gate_proj(x)) * up_proj(x))``): intermediate neurons
GATED_MLP_NEURONS = UnitFamily(
    "gated-MLP neurons", find_gated_mlp, gated_width, nothing_to_prepare, "<neurons>", gated_config_fields
)

#: mixture-of-experts blocks (a router and 3-d expert tensors): routed experts
EXPERTS = UnitFamily("experts", find_experts, expert_count, nothing_to_prepare, "<experts>", expert_config_fields)

#: the registered families, consulted in this order
FAMILIES: List[UnitFamily] = [GROUPED_QUERY_HEADS, ATTENTION_HEADS, GATED_MLP_NEURONS, EXPERTS]


def register_family(family: UnitFamily) -> None:
    """Make ``family`` known to scoring, removal, the report and checkpoint replay.

    Raises:
        ValueError: a family with the same name or history-row suffix is registered already.
    """
    for known in FAMILIES:
        if known.name == family.name or known.row_suffix == family.row_suffix:
            raise ValueError(
                f"a unit family named {known.name!r} with row suffix {known.row_suffix!r} is "
                f"registered already; give {family.name!r} its own name and row_suffix"
            )
    FAMILIES.append(family)


@contextlib.contextmanager
def registered(family: UnitFamily) -> Iterator[UnitFamily]:
    """``register_family(family)`` for the duration of a ``with`` block (tests, experiments)."""
    register_family(family)
    try:
        yield family
    finally:
        FAMILIES.remove(family)


def find_units(model: nn.Module, ignored: Optional[set] = None) -> Dict[str, Units]:
    """``{module name: Units}`` of every registered family in ``model`` (blocked ones too), in module
    registration order. A module claimed by two families belongs to the first registered."""
    found: Dict[str, Units] = {}
    for family in FAMILIES:
        for name, units in family.find(model, ignored).items():
            found.setdefault(name, units)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return dict(sorted(found.items(), key=lambda item: order.get(item[0], len(order))))


def removable(found: Dict[str, Units]) -> Dict[str, Units]:
    """The entries of :func:`find_units` whose units can be removed (not blocked)."""
    return {name: units for name, units in found.items() if not units.blocked}


def unit_count(module: nn.Module) -> Optional[int]:
    """The number of units ``module`` holds in the first family that knows it (None: no family does)."""
    for family in FAMILIES:
        count = family.unit_count(module)
        if count is not None:
            return count
    return None


@contextlib.contextmanager
def collecting(model: nn.Module) -> Iterator[None]:
    """Every family's :attr:`UnitFamily.collecting` context at once (the statistics pass, the estimate)."""
    with contextlib.ExitStack() as stack:
        for family in FAMILIES:
            stack.enter_context(family.collecting(model))
        yield


def family_of_module(module: nn.Module) -> Optional[UnitFamily]:
    """The first registered family that knows ``module`` (None: none does)."""
    for family in FAMILIES:
        if family.unit_count(module) is not None:
            return family
    return None


def _family_of(model: nn.Module, name: str) -> UnitFamily:
    module = dict(model.named_modules()).get(name)
    for family in FAMILIES:
        if module is not None and family.unit_count(module) is not None:
            return family
    raise ValueError(f"{name!r} is not a module of any registered unit family ({[f.name for f in FAMILIES]})")


def history_row(model: nn.Module, name: str, units: List[int]) -> list:
    """The pruning-history row ``[name + suffix, True, units]`` recording that ``units`` of the family
    module ``name`` were removed."""
    return [name + _family_of(model, name).row_suffix, True, [int(i) for i in units]]


def row_target(row_name: str) -> Optional[Tuple[UnitFamily, str]]:
    """``(family, module name)`` of a history row written by :func:`history_row` (None: a torch-pruning row)."""
    for family in FAMILIES:
        if row_name.endswith(family.row_suffix):
            return family, row_name[: -len(family.row_suffix)]
    return None


def replay_row(model: nn.Module, row_name: str, units: List[int]) -> None:
    """Remove the units a history row names from ``model`` (a freshly built one, being brought to the
    pruned shapes).

    Raises:
        ValueError: the row names no removable module of its family.
    """
    target = row_target(row_name)
    if target is None:
        raise ValueError(f"{row_name!r} is not a unit-family history row")
    family, name = target
    found = family.find(model, None).get(name)
    if found is None or found.blocked:
        reason = f" ({found.blocked})" if found is not None else ""
        raise ValueError(f"{name!r} is not a module whose {family.name} can be removed{reason}")
    found.remove(units)
