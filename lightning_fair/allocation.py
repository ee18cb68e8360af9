"""Tolerance of Difference (method.md §1.3): per-layer pruning counts from U and R.

Pure functions over score vectors; no model, no data.

For a layer of n units ranked by U ascending (removal order) and by R descending
(protection order), ``ToD(m) = |lowest-U m ∩ highest-R m| / m`` for ``m = 1..floor(0.99 n)``,
and the layer's count is the largest m with ``ToD(m) <= tolerance`` (0 if none).
A unit is in both sets iff ``max(rank_U, rank_R) < m``, so one sort per score and a
cumulative histogram give ToD for every m at once: O(n log n) per layer, after which
any tolerance is answered by a search over the precomputed curve.
"""

from __future__ import annotations

from typing import Dict, Mapping

import torch

from .ranking import Ranking, as_ranking

__all__ = ["tod_curve", "tolerance_count", "tolerance_counts", "removal_order", "global_counts",
           "global_thresholds", "uniform_counts", "uniform_ratios", "RANKINGS", "ALLOCATIONS", "Allocation",
           "ToDAllocation", "GlobalAllocation", "UniformAllocation", "allocation_for"]

#: Rankings the ToD counts can be applied to: which units of a layer go first.
#: "utilization_x_consumers" needs the model's consumer weights: :class:`~lightning_fair.removal.DependencyPlanner`
#: applies it (the removal score times how strongly the next layers read each unit), not :func:`removal_order`
RANKINGS = ("utilization", "l1", "random", "utilization_x_consumers")
#: How many units each layer loses: FAIR's per-layer ToD counts (``"tod"``), one global
#: threshold on U normalised by its layer's mean (``"global"``; needs a MACs/params target),
#: the same fraction of every layer (``"uniform"``; a ``ratio`` or a target), or ``"auto"``:
#: global under a target, ToD under a tolerance, uniform with a ratio.
ALLOCATIONS = ("auto", "tod", "global", "uniform")


def resolve_allocation(allocation: str, has_target: bool, has_ratio: bool = False) -> str:
    """``"auto"`` -> ``"uniform"`` with a ratio, ``"global"`` with a MACs/params target, else ``"tod"``."""
    if allocation == "auto":
        return "uniform" if has_ratio else "global" if has_target else "tod"
    return allocation


def _ranks(values: torch.Tensor, descending: bool) -> torch.Tensor:
    order = torch.sort(values.double(), descending=descending, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel(), device=order.device)
    return ranks


def tod_curve(utilization: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """``ToD(m)`` for ``m = 1..floor(0.99 n)`` as a float64 vector (entry ``m-1``).

    Example:
        >>> u = torch.tensor([0.1, 0.2, 0.3, 0.4]); r = torch.tensor([0.1, 0.2, 0.3, 0.4])
        >>> tod_curve(u, r).tolist()   # the lowest-U units are the least protected
        [0.0, 0.0, 0.6666666666666666]
        >>> tod_curve(u, r.flip(0)).tolist()   # the lowest-U units are the most protected
        [1.0, 1.0, 1.0]
    """
    utilization = torch.as_tensor(utilization).flatten()
    reconstruction = torch.as_tensor(reconstruction).flatten()
    if utilization.shape != reconstruction.shape:
        raise ValueError(f"U and R must have one value per unit, got {tuple(utilization.shape)} and {tuple(reconstruction.shape)}")
    n = utilization.numel()
    limit = int(0.99 * n)
    if limit < 1:
        return torch.zeros(0, dtype=torch.float64)
    both = torch.maximum(_ranks(utilization, False), _ranks(reconstruction, True))
    # overlap(m) = #{units with max rank < m}
    overlap = torch.bincount(both.cpu(), minlength=n).cumsum(0)[:limit].double()
    return overlap / torch.arange(1, limit + 1, dtype=torch.float64)


def check_tolerance(tolerance: float) -> float:
    tolerance = float(tolerance)
    if not 0.0 <= tolerance <= 1.0:
        raise ValueError(f"tolerance must lie in [0, 1] (a fraction of overlap), got {tolerance}")
    return tolerance


def count_from_curve(curve: torch.Tensor, tolerance: float) -> int:
    """Largest m with ``curve[m-1] <= tolerance`` (0 if none)."""
    passing = (curve <= check_tolerance(tolerance) + 1e-12).nonzero()
    return int(passing[-1]) + 1 if passing.numel() else 0


def tolerance_count(utilization: torch.Tensor, reconstruction: torch.Tensor, tolerance: float) -> int:
    """Number of units FAIR removes from one layer at ``tolerance``.

    Example:
        >>> tolerance_count(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.1, 0.2, 0.3, 0.4]), 0.0)
        2
    """
    return count_from_curve(tod_curve(utilization, reconstruction), tolerance)


def tolerance_counts(scores, tolerance: float) -> Dict[str, int]:
    """``{layer: units to remove}`` for every scored layer of a :class:`FairScores` (or a
    :class:`~lightning_fair.ranking.Ranking`).

    Example:
        ``counts = tolerance_counts(scores, 0.05)``; a second tolerance reuses the same scores.
    """
    check_tolerance(tolerance)
    ranking = as_ranking(scores)
    return {
        name: tolerance_count(ranking.removal[name], ranking.protection[name], tolerance)
        for name in ranking.layers
    }


def removal_order(
    ranking: str,
    utilization: torch.Tensor,
    weight: torch.Tensor = None,
    *,
    seed: int = 0,
) -> torch.Tensor:
    """Unit indices of one layer, first-to-remove first.

    ``"utilization"``: lowest U first (FAIR). ``"l1"``: smallest L1 norm of the unit's
    weights first (``weight`` has units along dim 0). ``"random"``: a seeded permutation.
    """
    if ranking == "utilization":
        return torch.sort(utilization.double(), stable=True).indices
    if ranking == "l1":
        if weight is None:
            raise ValueError("ranking='l1' needs the layer's weight")
        return torch.sort(weight.detach().flatten(1).abs().sum(1).double().cpu(), stable=True).indices
    if ranking == "random":
        generator = torch.Generator().manual_seed(int(seed))
        return torch.randperm(utilization.numel(), generator=generator)
    if ranking == "utilization_x_consumers":
        raise ValueError("ranking='utilization_x_consumers' reads the consumers' weights of a coupled group: "
                         "DependencyPlanner.plan applies it (pass the product as ranking='utilization' here)")
    raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")


def layer_curves(scores) -> Mapping[str, torch.Tensor]:
    """ToD curve of every scored layer, computed once for repeated allocation."""
    ranking = as_ranking(scores)
    return {name: tod_curve(ranking.removal[name], ranking.protection[name]) for name in ranking.layers}


def layer_normalised(values: torch.Tensor) -> torch.Tensor:
    """``values / mean(values)`` (the mean floored at 1e-12): one layer's scores on a common scale.

    Example:
        >>> layer_normalised(torch.tensor([1.0, 3.0])).tolist()
        [0.5, 1.5]
    """
    return values / values.mean().clamp_min(1e-12)


def _normalised_removal(ranking: Ranking, name: str) -> torch.Tensor:
    return layer_normalised(ranking.removal[name].double())


def global_counts(scores, threshold: float, layers=None) -> Dict[str, int]:
    """``{layer: units whose U / mean U of the layer < threshold}``, at most ``floor(0.99 n)``
    and always leaving one unit (the ``"global"`` allocation).

    Example:
        >>> from lightning_fair.scores import FairScores
        >>> s = FairScores({"a": torch.tensor([1., 2., 3.]), "b": torch.tensor([1., 1.])}, {"a": torch.ones(3), "b": torch.ones(2)})
        >>> global_counts(s, 0.9)   # a: 1/2 = 0.5 is below 0.9; b: all equal 1.0
        {'a': 1, 'b': 0}
    """
    ranking = as_ranking(scores)
    counts = {}
    for name in layers if layers is not None else ranking.layers:
        normalised = _normalised_removal(ranking, name)
        n = normalised.numel()
        counts[name] = min(int((normalised < threshold).sum()), int(0.99 * n), n - 1)
    return counts


def global_thresholds(scores, layers=None) -> list:
    """Every threshold at which :func:`global_counts` changes, ascending (search candidates)."""
    ranking = as_ranking(scores)
    values = torch.cat([_normalised_removal(ranking, n) for n in (layers if layers is not None else ranking.layers)])
    unique = torch.unique(values)
    return torch.cat([torch.zeros(1, dtype=torch.float64), unique, unique[-1:] + 1]).tolist()


def _uniform_count(ratio: float, n: int) -> int:
    return min(int(ratio * n + 1e-9), int(0.99 * n), n - 1)


def uniform_counts(scores, ratio: float, layers=None) -> Dict[str, int]:
    """``{layer: floor(ratio * n)}``: the same fraction of every layer's units (the ``"uniform"``
    allocation), at most ``floor(0.99 n)`` and always leaving one unit.

    Example:
        >>> from lightning_fair.scores import FairScores
        >>> s = FairScores({"a": torch.rand(10), "b": torch.rand(3)}, {"a": torch.ones(10), "b": torch.ones(3)})
        >>> uniform_counts(s, 0.5)
        {'a': 5, 'b': 1}
    """
    ratio = float(ratio)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio is the fraction of every layer's units to remove, in [0, 1), got {ratio}")
    ranking = as_ranking(scores)
    return {name: _uniform_count(ratio, ranking.removal[name].numel())
            for name in (layers if layers is not None else ranking.layers)}


def uniform_ratios(scores, layers=None) -> list:
    """Every ratio at which :func:`uniform_counts` changes, ascending (search candidates)."""
    ranking = as_ranking(scores)
    sizes = {ranking.removal[n].numel() for n in (layers if layers is not None else ranking.layers)}
    ratios = {j / n for n in sizes for j in range(n)}
    return sorted(ratios | {0.0, 1.0 - 1e-9})


class Allocation:
    """How many units each layer loses at a *level*: the two questions a target search asks.

    Built from a :class:`~lightning_fair.ranking.Ranking` (or ``FairScores``: FAIR's ranking).

    ``levels()`` are the ascending levels at which the counts change (search candidates);
    ``counts(level)`` is ``{layer: units to remove}``. ``level_name`` says what a level is;
    ``group_policy`` is how coupled groups combine their members' counts; ``tolerance(level)``
    is what the ``"joint"`` group policy needs (a ToD tolerance, or None).
    """

    level_name = "level"

    def __init__(self, scores, layers, group_policy: str = "min_count"):
        self.ranking, self.layers, self.group_policy = as_ranking(scores), list(layers), group_policy

    def levels(self) -> list:
        raise NotImplementedError

    def counts(self, level: float) -> Dict[str, int]:
        raise NotImplementedError

    def tolerance(self, level: float):
        return None


class ToDAllocation(Allocation):
    """FAIR's per-layer counts: the largest m with ``ToD(m) <= tolerance`` in every layer."""

    level_name = "tolerance"

    def __init__(self, scores, layers, group_policy: str = "min_count"):
        super().__init__(scores, layers, group_policy)
        self.curves = layer_curves(self.ranking)

    def levels(self) -> list:
        curves = list(self.curves.values()) + [torch.tensor([0.0, 1.0], dtype=torch.float64)]
        candidates = torch.unique(torch.cat(curves))
        return candidates[(candidates >= 0) & (candidates <= 1)].tolist()

    def counts(self, level: float) -> Dict[str, int]:
        return {name: count_from_curve(self.curves[name], level) for name in self.layers}

    def tolerance(self, level: float):
        return level


class GlobalAllocation(Allocation):
    """One threshold on layer-normalised scores across all layers (:func:`global_counts`)."""

    level_name = "threshold"

    def levels(self) -> list:
        return global_thresholds(self.ranking, self.layers)

    def counts(self, level: float) -> Dict[str, int]:
        return global_counts(self.ranking, level, self.layers)


class UniformAllocation(Allocation):
    """The same fraction of every layer (:func:`uniform_counts`); the level is that ratio."""

    level_name = "ratio"

    def levels(self) -> list:
        return uniform_ratios(self.ranking, self.layers)

    def counts(self, level: float) -> Dict[str, int]:
        return uniform_counts(self.ranking, level, self.layers)


def allocation_for(name: str, scores, layers, group_policy: str = "min_count") -> Allocation:
    """The :class:`Allocation` called ``name`` (``"tod"``, ``"global"`` or ``"uniform"``; resolve
    ``"auto"`` first with :func:`resolve_allocation`). Global and uniform counts are per layer
    already, so their coupled groups always take the smallest member count."""
    if name == "tod":
        return ToDAllocation(scores, layers, group_policy)
    if name == "global":
        return GlobalAllocation(scores, layers)
    if name == "uniform":
        return UniformAllocation(scores, layers)
    raise ValueError(f"allocation must be one of {ALLOCATIONS[1:]} here (resolve 'auto' first), got {name!r}")
