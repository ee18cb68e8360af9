"""Removal planning for models with unit families: whole family units (attention heads) beside
torch-pruning's coupled groups.

:class:`TransformerPlanner` is a :class:`~lightning_fair.removal.planner.DependencyPlanner` whose
scored layers may include modules of a unit family (:func:`lightning_fair.units.families.find_units`;
attention modules, whose units are heads): they are counted by the same allocation as every other
layer and removed by the family's own ``Units.remove`` (not through torch-pruning's graph, which cuts
through the head layout). Everything else (MLP hidden neurons, convs) goes through the dependency
graph as before. A family's projections are never channel units, so the groups of the dimension they
read and write (a transformer's embedding dimension, the residual stream: embeddings, LayerNorms,
output projections, cls/position tokens) hold an unscored layer and are left whole.

Family units are removed first and recorded as history rows ``[module + "<heads>", True, units]``
(:func:`lightning_fair.units.families.history_row`), which :func:`lightning_fair.removal.history.replay_pruning`
replays. Family units and the dependency graph's groups touch disjoint layers, so the order between
the two kinds of rows does not matter.
"""

from __future__ import annotations

import warnings
import zlib
from typing import Dict, List, Optional

import torch
from torch import nn

from ..allocation.order import removal_order
from ..scoring.criterion import as_criterion_scores
from ..units.families import Units, find_units, history_row, removable
from .graph import GroupSearchTooLarge, bounded_group
from .planner import CoupledGroup, DependencyPlanner

__all__ = ["EMBEDDING_NOTE", "TransformerPlanner", "head_order", "planner_for"]

#: why the groups of a transformer's embedding dimension are left whole
EMBEDDING_NOTE = "the embedding dimension (residual stream) of a transformer is not pruned"


def head_order(
    units: Units, removal: torch.Tensor, ranking: str, seed: int = 0, last: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Units of one family module (heads of an attention module), first-to-remove first, under
    ``ranking`` (as channels: ``"utilization_x_consumers"`` multiplies the removal score by how strongly
    the output projection reads each unit, the L2 norm of its columns over their mean); ``last``: units
    that go after all others (:func:`~lightning_fair.allocation.order.removal_order`)."""
    removal = removal.double()
    if ranking in ("utilization_x_consumers", "utilization_x_group"):  # a head's members: its own rows
        reading = units.output_columns()
        return removal_order("utilization", removal * reading / reading.mean().clamp_min(1e-12), last=last)
    return removal_order(ranking, removal, units.weight, seed=seed + zlib.crc32(units.name.encode()), last=last)


class TransformerPlanner(DependencyPlanner):
    """Coupled channel groups plus whole attention heads (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs,
        scored: List[str],
        protected: set,
        heads: Dict[str, Units],
        prune_embedding: bool = False,
        graph=None,
        same_layout: bool = False,
    ):
        self.heads = {name: units for name, units in heads.items() if name in scored}
        self.prune_embedding = prune_embedding
        #: modules losing the same count end in the same layout (``shapes="uniform"``; ``Units.choose``)
        self.same_layout = same_layout
        self.head_rows: list = []
        with warnings.catch_warnings():  # cls/position tokens: their groups are the embedding dimension, kept
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            super().__init__(model, example_inputs, [n for n in scored if n not in self.heads], protected, graph=graph)

    def _block_groups(self) -> None:
        """The embedding dimension's groups blocked and attention kept whole listed, before any probe."""
        attention = find_units(self.model).values()
        self._keep_embedding(
            [units for units in attention if units.fixed_embedding] if self.prune_embedding else attention,
            EMBEDDING_NOTE + (" (nn.MultiheadAttention)" if self.prune_embedding else ""),
        )
        # attention whose heads are not units: listed with the reason (the report's notes)
        self.groups += [
            CoupledGroup(
                root=units.name, num_channels=units.num_units, blocked=f"{units.unit_noun} kept ({units.blocked})"
            )
            for units in attention
            if units.blocked
        ]

    def _keep_embedding(self, attention, note: str) -> None:
        """Block every group that reaches an attention module's channels other than through its heads:
        the embedding dimension (residual stream), which q/k/v read and the output projection writes."""
        touching = {id(m) for units in attention for m in (units.module, units.output, *units.inputs)}
        for group in self.groups:  # a group blocked for another reason gets this one, which says more
            try:
                items = bounded_group(self.graph, self.modules[group.root])
            except GroupSearchTooLarge:
                continue  # blocked already, with that reason (removal.DependencyPlanner._find_groups)
            if any(id(item.dep.target.module) in touching for item in items):
                group.blocked = note

    def plan(
        self,
        scores,
        counts: Dict[str, int],
        *,
        ranking: str = "utilization",
        policy: str = "min_count",
        tolerance: Optional[float] = None,
        seed: int = 0,
    ) -> Dict[str, torch.Tensor]:
        """Root channels per coupled group, and ``{attention: head indices}`` per attention module."""
        plan = super().plan(scores, counts, ranking=ranking, policy=policy, tolerance=tolerance, seed=seed)
        ranked = as_criterion_scores(scores)
        for name, units in self.heads.items():
            k = min(int(counts.get(name, 0)), units.num_units - 1)
            if k > 0:
                order = head_order(units, ranked.removal[name], ranking, seed, last=ranked.last.get(name))
                choose = getattr(units, "choose", None)  # optional: any k units can go without it
                if choose is None:
                    chosen = order[:k]
                else:
                    chosen = choose(order, k, same_layout=True) if self.same_layout else choose(order, k)
                if chosen.numel():
                    plan[name] = chosen.sort().values
        return plan

    def apply(self, plan: Dict[str, torch.Tensor], record_history: bool = True) -> Dict[str, Dict[str, torch.Tensor]]:
        kept: Dict[str, Dict[str, torch.Tensor]] = {}
        for name, idxs in plan.items():
            if name in self.heads:
                if record_history:  # the row names the family, which the module no longer shows once pruned
                    row = history_row(self.model, name, idxs.tolist())
                kept.update(self.heads[name].remove(idxs.tolist()))
                if record_history:
                    self.head_rows.append(row)
        for name, sides in (
            super().apply({n: i for n, i in plan.items() if n not in self.heads}, record_history).items()
        ):
            kept.setdefault(name, {}).update(sides)  # a module may lose heads on one side, channels on the other
        return kept

    def history(self) -> list:
        return [list(row) for row in self.head_rows] + super().history()


def planner_for(
    model: nn.Module,
    example_inputs,
    scored: List[str],
    protected: set,
    prune_embedding: bool = False,
    graph=None,
    same_layout: bool = False,
) -> DependencyPlanner:
    """A :class:`TransformerPlanner` if the model has unit-family modules (attention), else a
    :class:`~lightning_fair.removal.planner.DependencyPlanner`. ``prune_embedding``: the groups of the
    embedding dimension are pruned like any other (except around ``nn.MultiheadAttention``);
    ``graph``: torch-pruning's graph of ``model`` if already built
    (:func:`lightning_fair.removal.graph.build_graph`); ``same_layout``: see :class:`TransformerPlanner`."""
    found = find_units(model)
    if not found:
        return DependencyPlanner(model, example_inputs, scored, protected, graph=graph)
    heads = {name: units for name, units in removable(found).items() if name in scored}
    return TransformerPlanner(
        model, example_inputs, scored, protected, heads, prune_embedding, graph=graph, same_layout=same_layout
    )
