"""Dependency-aware removal of units through torch-pruning's DependencyGraph.

Channels coupled by residual adds, depthwise convs, norms or concatenation form one
*coupled group* and are always removed together. The graph is built by running the
model (torch-pruning traces autograd, not ``torch.fx``), so a ``forward`` with Python
checks or data-dependent branches works.

Coupled-group policy (method.md §1.4). A group whose root channels are the outputs of
several scored layers (e.g. the last conv of every block in a ResNet stage and the
shortcut conv) gets one decision:

* ``"min_count"`` (default, the reference's policy: prune less, not more): each member
  layer gets its own ToD count; the group removes the smallest of them (as a fraction of
  its channels).

* ``"joint"``: ToD is applied once to the group's combined scores: the group's U
  above and ``R = |Σ_members Σ dL/dz·z|`` (the first-order loss change of removing the
  channel from every member at once).

Which channels of such a group go: a channel shared through residual adds is one channel of
the residual stream; removing it takes it away from every layer that *reads* the stream, not
from one member's branch. So the group's channels are ranked by the utilization score of
what its consumers receive (``FairScores.input_utilization``: U of each consumer's input
channels, e.g. the block outputs after the add and the nonlinearity), each consumer's scores
normalised by their mean and averaged over the consumers. Where no consumer input was
observed (scores from an older version), the largest of the members' own normalised U is
used, so a channel goes only if it is unused everywhere.

``ranking="utilization_x_consumers"`` keeps every count and changes only which channels go: a
group's channels are ranked by the score above (for a residual stream: the consumers' input U)
times how strongly the next layers read each channel, the mean over the group's Conv/Linear
consumers of the L2 norm of the channel's input-weight column
(:meth:`DependencyPlanner.consumer_reading`); a group no Conv/Linear reads keeps its score.

A group that would touch the output channels of the output layer, of an ignored layer or
of a layer that was not scored is left whole.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops

from ..allocation.order import removal_order
from ..allocation.tolerance import count_from_curve, tod_curve
from ..config import GROUP_POLICIES
from ..runtime.guards import ModelSnapshot
from ..scoring.criterion import as_criterion_scores, layer_normalised
from ..units.channels import PRUNABLE_TYPES, input_column_norms, is_depthwise
from ..units.cost import measure
from .graph import (
    GraphState,
    GroupSearchTooLarge,
    bounded_group,
    build_graph,
    following_batchnorm,
    forward_problem,
    forward_shapes,
    frozen_index_mapping,
    leaving_one,
    side_size,
    unmapped_reshapes,
)

__all__ = ["CoupledGroup", "DependencyPlanner", "GROUP_POLICIES", "ModelSnapshot"]

#: torch-pruning ops whose channel mapping is a guess (or whose module may cache a size): a group
#: through one is checked by removing one channel and running the model
_PROBED = (ops.OPTYPE.RESHAPE, ops.OPTYPE.SLICE, ops.OPTYPE.UNBIND, ops.OPTYPE.EXPAND, ops.OPTYPE.PARAMETER)


@dataclass
class CoupledGroup:
    """Root channels of one coupled set and how each scored member maps onto them."""

    root: str
    num_channels: int
    #: {scored layer: (member channel idxs, root idxs)}
    members: Dict[str, tuple] = field(default_factory=dict)
    #: {Conv/Linear reading the channels: (its input channel idxs, root idxs)}
    consumers: Dict[str, tuple] = field(default_factory=dict)
    #: equal-size channel groups imposed by grouped convs (1 if none)
    channel_groups: int = 1
    #: why the group is never pruned ("" if it may be)
    blocked: str = ""
    #: (root idxs, channels) of every coupled item: a plan leaves each at least one channel
    limits: List[tuple] = field(default_factory=list)
    #: whether removal is checked by a forward first (the group passes a reshape, slice or parameter)
    probe: bool = False


def _out_pruning_fn(graph: tp.DependencyGraph, module: nn.Module):
    return graph.get_pruner_of_module(module).prune_out_channels


class DependencyPlanner:
    """Coupled groups of a model's scored layers, and the removal of chosen root channels.

    A group torch-pruning cannot cut is left whole, the reason in ``group.blocked`` (the report's
    notes): indices in another index space, a reshape it cannot map, a search that does not end,
    or removing a channel breaks the forward (docs/method.md, "Coupled channels")."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs,
        scored: List[str],
        protected: set,
        graph: Optional[tp.DependencyGraph] = None,
    ):
        self.model = model
        self.example_inputs = example_inputs
        self.modules = dict(model.named_modules())
        self.graph = graph if graph is not None else build_graph(model, example_inputs)
        self.snapshot = ModelSnapshot(model)
        self.snapshot.include(self.graph.module2node)  # concat/split ops keep channel sizes too
        self.graph_state = GraphState(self.graph)
        self._expected = None
        #: {root: why} of the groups the last :meth:`apply` skipped because torch-pruning refused them
        self.refused: Dict[str, str] = {}
        with frozen_index_mapping(self.graph):  # valid until a channel goes (a probe removes one group: fine)
            self.groups = self._find_groups(scored, protected)
            self._block_groups()
            for group in self.groups:
                if group.probe and not group.blocked and group.members:
                    self._probe(
                        group, [j * (group.num_channels // group.channel_groups) for j in range(group.channel_groups)]
                    )

    def _block_groups(self) -> None:
        """Block groups before the one-channel probes run (none here; a subclass's rules)."""

    def restore(self) -> None:
        """Put the model and the graph back as they were when the planner was made."""
        self.snapshot.restore()
        self.graph_state.restore()

    def _find_groups(self, scored: List[str], protected: set) -> List[CoupledGroup]:
        covered, groups = set(), []
        scored_set = set(scored)
        unmapped = set(unmapped_reshapes(self.graph))
        for name in scored:
            if name in covered:
                continue
            module = self.modules[name]
            group = CoupledGroup(root=name, num_channels=0)
            groups.append(group)
            try:
                full = bounded_group(self.graph, module)
            except GroupSearchTooLarge as error:
                group.blocked = str(error)
                continue
            n = group.num_channels = self.graph.get_out_channels(module)
            for item in full:
                target = item.dep.target.module
                target_name = self.graph._module2name.get(target)
                out_side = self.graph.is_out_channel_pruning_fn(item.dep.handler)
                idxs, roots = (
                    torch.as_tensor(item.idxs, dtype=torch.long),
                    torch.as_tensor(item.root_idxs, dtype=torch.long),
                )
                group.probe = group.probe or item.dep.target.type in _PROBED
                if item.dep.target in unmapped and not group.blocked:
                    group.blocked = (
                        "passes through a reshape whose channel mapping torch-pruning cannot work out "
                        "(a channel shuffle?)"
                    )
                size = side_size(self.graph, target, out_side, item.dep.handler)
                if size and idxs.numel():
                    if (int(idxs.max()) >= size or int(roots.max()) >= n) and not group.blocked:
                        group.blocked = (
                            f"torch-pruning maps its {n} channels onto {target_name or target!r} in "
                            f"another index space (index {int(idxs.max())} of {size}: a transpose or "
                            "reshape it follows as if it kept the channels)"
                        )
                    group.limits.append((roots.clamp(max=n - 1), size))
                if isinstance(target, nn.modules.conv._ConvNd) and target.groups > 1 and not is_depthwise(target):
                    group.channel_groups = max(group.channel_groups, target.groups)
                if not out_side and isinstance(target, PRUNABLE_TYPES) and target_name is not None:
                    group.consumers[target_name] = (idxs, roots)
                if not (out_side and isinstance(target, PRUNABLE_TYPES)):
                    continue
                if target_name in scored_set:
                    group.members[target_name] = (idxs, roots)
                    covered.add(target_name)
                elif not group.blocked:
                    reason = "protected" if target_name in protected else "not scored"
                    group.blocked = f"shares channels with {target_name!r} ({reason})"
            if group.channel_groups > 1 and n % group.channel_groups:
                group.blocked = group.blocked or f"{n} channels do not split into {group.channel_groups} groups"
        return groups

    def _probe(self, group: CoupledGroup, idxs) -> None:
        """Remove ``idxs`` of the group, run the model, put both back; block the group if that fails."""
        if self._expected is None:
            self._expected = forward_shapes(self.model, self.example_inputs)
        try:
            self._remove({group.root: torch.as_tensor(idxs)}, record_history=False)
            problem = "" if self.refused else forward_problem(self.model, self.example_inputs, self._expected)
        except Exception as error:  # torch-pruning's own removal fails on this group
            problem = f"{type(error).__name__}: {error}"
        finally:
            self.restore()
        if problem:
            group.blocked = f"removing its channels breaks the forward ({problem})"

    # ------------------------------------------------------------------ planning
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
        """Root channel indices to remove per group: ``{root layer: idxs}`` (empty groups omitted).

        ``scores``: a :class:`~lightning_fair.scoring.criterion.CriterionScores` (or ``FairScores``: FAIR's);
        ``ranking``: ``"utilization"`` (its removal score), ``"utilization_x_consumers"`` (the
        removal score times :meth:`consumer_reading`), ``"l1"`` or ``"random"``. The ranking
        changes which channels go, never how many."""
        scores = as_criterion_scores(scores)
        if policy not in GROUP_POLICIES:
            raise ValueError(f"group_policy must be one of {GROUP_POLICIES}, got {policy!r}")
        plan = {}
        for group in self.groups:
            if group.blocked or not group.members:
                continue
            n, g = group.num_channels, group.channel_groups
            utilization = _combine_removal(group, scores)
            if policy == "joint" and len(group.members) > 1:
                if tolerance is None:
                    raise ValueError("group_policy='joint' needs the tolerance")
                k = count_from_curve(tod_curve(utilization, _combine_taylor(group, scores)), tolerance)
            else:
                k = min(int(counts[name] * n / scores.removal[name].numel()) for name in group.members)
            k = (k // g) * g
            if k <= 0:
                continue
            order = self._order(group, ranking, utilization, seed, _combine_last(group, scores))
            positions = leaving_one(group.limits, order, k // g, n, g)
            if positions.numel():
                plan[group.root] = torch.cat([positions + j * (n // g) for j in range(g)]).sort().values
        return plan

    def _order(
        self, group: CoupledGroup, ranking: str, utilization: torch.Tensor, seed: int, last: Optional[torch.Tensor]
    ) -> torch.Tensor:
        n, g = group.num_channels, group.channel_groups
        if ranking == "l1":
            per_root = torch.zeros(n, dtype=torch.float64)
            for name, (idxs, roots) in group.members.items():
                module = self.modules[name]
                weight = module.weight.detach()
                if isinstance(module, nn.modules.conv._ConvTransposeNd):
                    weight = weight.transpose(0, 1)
                norms = weight.flatten(1).abs().sum(1).double().cpu()
                per_root.index_add_(0, roots, layer_normalised(norms)[idxs])
            utilization = per_root
            ranking = "utilization"
        elif ranking in ("utilization_x_consumers", "utilization_x_group"):
            reading = self.consumer_reading(group)
            if reading is not None:  # no Conv/Linear reads the group: its removal score alone
                total, readers = reading
                utilization = utilization * total / readers.clamp_min(1)
            if ranking == "utilization_x_group":
                utilization = utilization * self.member_writing(group)
            ranking = "utilization"
        folded = utilization.reshape(g, n // g).mean(0) if g > 1 else utilization
        if last is not None and g > 1:
            last = last.reshape(g, n // g).any(0)
        return removal_order(ranking, folded, seed=seed + zlib.crc32(group.root.encode()), last=last)

    def consumer_reading(self, group: CoupledGroup) -> Optional[tuple]:
        """How strongly the layers reading a group's channels read each of them, from their weights:
        ``(total, readers)``, per root channel the sum over the group's consumers of the L2 norm
        of the channel's input-weight column(s), and how many consumers read it (the
        ``"utilization_x_consumers"`` ranking multiplies the removal score by ``total / readers``,
        the mean over the consumers). None if no Conv/Linear reads the group.

        Consumers are the Conv/Linear layers torch-pruning finds reading the channels, after any
        BatchNorm, activation, pooling or residual add (for a residual stream: every block's
        first conv, the shortcut convs and the classifier that read it). A depthwise conv is not
        a consumer: the channel passes through it (its output is the same coupled channel) and
        its reader is the layer after it. A Linear after ``flatten`` reads a channel through
        several input columns (one per spatial position): their norms are summed. A grouped conv's
        column is the channel's input slice of its own group's filters; a transposed conv's is the
        channel's row ``weight[c]``. Norms: float32 sums of squares, square root in float64."""
        n = group.num_channels
        total = torch.zeros(n, dtype=torch.float64)
        readers = torch.zeros(n, dtype=torch.float64)
        found = False
        for name, (idxs, roots) in group.consumers.items():
            module = self.modules[name]
            if is_depthwise(module) or idxs.numel() == 0:
                continue
            columns = input_column_norms(module)
            if int(idxs.max()) >= columns.numel():
                continue  # not this module's input channels (torch-pruning bookkeeping): skip
            total.index_add_(0, roots, columns[idxs])
            read = torch.zeros(n, dtype=torch.bool)
            read[roots] = True
            readers += read.double()
            found = True
        return (total, readers) if found else None

    def member_writing(self, group: CoupledGroup) -> torch.Tensor:
        """How strongly the group's members write each root channel: per root channel the mean over
        the members of the layer-normalised L2 norm of the channel's output filter, times the scale
        ``|gamma| / sqrt(running_var + eps)`` of a BatchNorm right after the member where there is
        one (what reaches a residual stream from each branch). Ones where no member has a weight."""
        n = group.num_channels
        total = torch.zeros(n, dtype=torch.float64)
        writers = torch.zeros(n, dtype=torch.float64)
        for name, (idxs, roots) in group.members.items():
            module = self.modules[name]
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.dim() < 1:
                continue
            if isinstance(module, nn.modules.conv._ConvTransposeNd):
                weight = weight.transpose(0, 1)
            norms = weight.detach().flatten(1).float().pow(2).sum(1).double().sqrt().cpu()
            scale = _norm_scale(self.graph, module, norms.numel())
            if scale is not None:
                norms = norms * scale
            if int(idxs.max()) >= norms.numel():
                continue
            total.index_add_(0, roots, layer_normalised(norms)[idxs])
            writers.index_add_(0, roots, torch.ones(len(idxs), dtype=torch.float64))
        return torch.where(writers > 0, total / writers.clamp_min(1), torch.ones_like(total))

    # ------------------------------------------------------------------ removal
    def apply(self, plan: Dict[str, torch.Tensor], record_history: bool = True) -> Dict[str, Dict[str, torch.Tensor]]:
        """Remove the planned channels, group by group (not atomic: see :func:`lightning_fair.prune`).
        A group torch-pruning refuses is skipped and left whole (the reason in ``refused[root]``).

        Returns, for every module whose channels changed, the original indices it kept:
        ``{module name: {"out": idxs, "in": idxs}}`` (used to carry optimizer state).
        """
        return self._remove(plan, record_history)

    def _remove(self, plan: Dict[str, torch.Tensor], record_history: bool) -> Dict[str, Dict[str, torch.Tensor]]:
        kept: Dict[tuple, List[int]] = {}
        names = {id(m): n for n, m in self.modules.items()}
        self.refused = {}
        for root, idxs in plan.items():
            module = self.modules[root]
            group = self.graph.get_pruning_group(module, _out_pruning_fn(self.graph, module), idxs.tolist())
            if not self.graph.check_pruning_group(group):
                self.refused[root] = (
                    f"torch-pruning refused to remove {len(idxs)} of its channels (coupled with "
                    f"{len(group[0].idxs)} of them, they would leave a layer without channels); "
                    "left whole"
                )
                continue
            for item in group:
                target = item.dep.target.module
                if id(target) not in names:
                    continue  # torch-pruning's own bookkeeping ops
                side = "out" if self.graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
                key = (names[id(target)], side)
                if key not in kept:
                    size = (self.graph.get_out_channels if side == "out" else self.graph.get_in_channels)(target)
                    kept[key] = list(range(size))
                removed = set(int(i) for i in item.idxs)
                kept[key] = [k for position, k in enumerate(kept[key]) if position not in removed]
            group.prune(record_history=record_history)
        result: Dict[str, Dict[str, torch.Tensor]] = {}
        for (name, side), indices in kept.items():
            result.setdefault(name, {})[side] = torch.tensor(indices, dtype=torch.long)
        return result

    def apply_checked(self, plan: Dict[str, torch.Tensor], record_history: bool = True) -> tuple:
        """:meth:`apply`, then ``(MACs, params)`` of the pruned model. If that forward fails, the
        model is put back, each group is tried alone, those that break it alone are left whole
        (``blocked``) and the rest removed; if the rest still fails, the error is raised.

        Returns ``(kept, the plan applied, (MACs, params))``."""
        kept = self.apply(plan, record_history)
        applied = self._applied(plan)
        try:
            return kept, applied, measure(self.model, self.example_inputs)
        except Exception as error:  # what the pruned model raises; the groups to blame are found below
            self.restore()
            failure = error
        groups = {group.root: group for group in self.groups}
        with frozen_index_mapping(self.graph):
            for root, idxs in applied.items():
                self._probe(groups[root], idxs)
        kept = self.apply({root: idxs for root, idxs in applied.items() if not groups[root].blocked}, record_history)
        applied = self._applied(applied)
        try:
            return kept, applied, measure(self.model, self.example_inputs)
        except Exception as error:
            raise RuntimeError(
                f"the pruned model fails ({type(error).__name__}: {error}), although each coupled "
                "group removed alone runs"
            ) from failure

    def _applied(self, plan: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        skipped = {group.root for group in self.groups if group.blocked} | set(self.refused)
        return {root: idxs for root, idxs in plan.items() if root not in skipped}

    def history(self) -> list:
        """torch-pruning's pruning history as plain data (``[name, is_out, idxs]`` rows)."""
        return [[name, bool(is_out), [int(i) for i in idxs]] for name, is_out, idxs in self.graph.pruning_history()]


def _norm_scale(graph: tp.DependencyGraph, module: nn.Module, channels: int) -> Optional[torch.Tensor]:
    """``|gamma| / sqrt(running_var + eps)`` of the BatchNorm that alone follows ``module`` (None if none)."""
    norm = following_batchnorm(graph, module)
    if norm is None or norm.running_var is None or norm.running_var.numel() != channels:
        return None
    scale = (norm.running_var.detach().double() + norm.eps).rsqrt().cpu()
    return scale * norm.weight.detach().double().abs().cpu() if norm.weight is not None else scale


def _normalised(values: torch.Tensor) -> torch.Tensor:
    return layer_normalised(values.double())


def _combine_removal(group: CoupledGroup, scores) -> torch.Tensor:
    if len(group.members) > 1:
        seen = _consumers_removal(group, scores)
        if seen is not None:
            return seen
    if len(group.members) == 1:
        name, (idxs, roots) = next(iter(group.members.items()))
        combined = torch.zeros(group.num_channels, dtype=torch.float64)
        combined[roots] = scores.removal[name][idxs].double()
        return combined
    combined = torch.zeros(group.num_channels, dtype=torch.float64)
    for name, (idxs, roots) in group.members.items():
        combined[roots] = torch.maximum(combined[roots], _normalised(scores.removal[name])[idxs])
    return combined


def _combine_last(group: CoupledGroup, scores) -> Optional[torch.Tensor]:
    """Per root channel: whether any member marks it to go last (``scores.last``), or None."""
    marked = [(scores.last[name], idxs, roots) for name, (idxs, roots) in group.members.items() if name in scores.last]
    if not marked:
        return None
    combined = torch.zeros(group.num_channels, dtype=torch.bool)
    for mask, idxs, roots in marked:
        combined[roots] |= mask[idxs]
    return combined


def _consumers_removal(group: CoupledGroup, scores) -> Optional[torch.Tensor]:
    """Mean over the group's consumers of their input channels' normalised removal score (FAIR:
    U), per root channel (None if no consumer's input was observed)."""
    observed = scores.consumers
    total = torch.zeros(group.num_channels, dtype=torch.float64)
    weight = torch.zeros(group.num_channels, dtype=torch.float64)
    for name, (idxs, roots) in group.consumers.items():
        values = observed.get(name)
        if values is None or idxs.numel() == 0 or int(idxs.max()) >= values.numel():
            continue
        total.index_add_(0, roots, _normalised(values)[idxs])
        weight.index_add_(0, roots, torch.ones(len(idxs), dtype=torch.float64))
    if not bool((weight > 0).all()):
        return None
    return total / weight


def _combine_taylor(group: CoupledGroup, scores) -> torch.Tensor:
    combined = torch.zeros(group.num_channels, dtype=torch.float64)
    for name, (idxs, roots) in group.members.items():
        combined.index_add_(0, roots, scores.taylor_sum[name].double()[idxs])
    return combined.abs()
