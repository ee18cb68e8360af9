"""How many units each layer loses at a *level*: ToD counts at a tolerance, one global threshold (on
scores divided by their layer's mean, or standardised within their layer), or a uniform ratio,
behind one :class:`Allocation` interface that a target search (kept MACs or parameters) asks for its
levels and counts.

Pure functions over a :class:`~lightning_fair.scoring.criterion.CriterionScores`; no model, no data.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional

import torch

from ..config import ALLOCATIONS
from ..scoring.criterion import as_criterion_scores, layer_normalised, layer_standardised
from .tolerance import count_from_curve, layer_curves

__all__ = [
    "Allocation",
    "GlobalAllocation",
    "StandardisedAllocation",
    "ToDAllocation",
    "UniformAllocation",
    "UniformShapes",
    "AllowedCounts",
    "allocation_for",
    "global_counts",
    "global_thresholds",
    "layer_kind",
    "multiples_kept",
    "nearest_allowed",
    "uniform_counts",
    "uniform_ratios",
]


def global_counts(scores, threshold: float, layers=None, normalise=layer_normalised) -> Dict[str, int]:
    """``{layer: units whose normalised score < threshold}``, at most ``floor(0.99 n)`` and always
    leaving one unit; ``normalise`` puts one layer's removal scores on the common scale: U / mean U of
    the layer (:func:`~lightning_fair.scoring.criterion.layer_normalised`, the ``"global"``
    allocation) or its z-scores (:func:`~lightning_fair.scoring.criterion.layer_standardised`,
    ``"standardised"``).

    Example:
        >>> from lightning_fair.scoring.fair import FairScores
        >>> u = {"a": torch.tensor([1., 2., 3.]), "b": torch.tensor([1., 1.])}
        >>> s = FairScores(u, {"a": torch.ones(3), "b": torch.ones(2)})
        >>> global_counts(s, 0.9)   # a: 1/2 = 0.5 is below 0.9; b: all equal 1.0
        {'a': 1, 'b': 0}
    """
    ranking = as_criterion_scores(scores)
    counts = {}
    for name in layers if layers is not None else ranking.layers:
        normalised = normalise(ranking.removal[name].double())
        n = normalised.numel()
        counts[name] = min(int((normalised < threshold).sum()), int(0.99 * n), n - 1)
    return counts


def global_thresholds(scores, layers=None, normalise=layer_normalised) -> list:
    """Every threshold at which :func:`global_counts` changes, ascending (search candidates): one
    below every score (0 for scores that are never negative), the scores, one above them."""
    ranking = as_criterion_scores(scores)
    names = layers if layers is not None else ranking.layers
    values = torch.cat([normalise(ranking.removal[n].double()) for n in names])
    unique = torch.unique(values)
    lowest = torch.zeros(1, dtype=torch.float64) if unique[0] >= 0 else unique[:1] - 1
    return torch.cat([lowest, unique, unique[-1:] + 1]).tolist()


def _uniform_count(ratio: float, n: int) -> int:
    return min(int(ratio * n + 1e-9), int(0.99 * n), n - 1)


def uniform_counts(scores, ratio: float, layers=None) -> Dict[str, int]:
    """``{layer: floor(ratio * n)}``: the same fraction of every layer's units (the ``"uniform"``
    allocation), at most ``floor(0.99 n)`` and always leaving one unit.

    Example:
        >>> from lightning_fair.scoring.fair import FairScores
        >>> s = FairScores({"a": torch.rand(10), "b": torch.rand(3)}, {"a": torch.ones(10), "b": torch.ones(3)})
        >>> uniform_counts(s, 0.5)
        {'a': 5, 'b': 1}
    """
    ratio = float(ratio)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio is the fraction of every layer's units to remove, in [0, 1), got {ratio}")
    ranking = as_criterion_scores(scores)
    return {
        name: _uniform_count(ratio, ranking.removal[name].numel())
        for name in (layers if layers is not None else ranking.layers)
    }


def uniform_ratios(scores, layers=None) -> list:
    """Every ratio at which :func:`uniform_counts` changes, ascending (search candidates)."""
    ranking = as_criterion_scores(scores)
    sizes = {ranking.removal[n].numel() for n in (layers if layers is not None else ranking.layers)}
    ratios = {j / n for n in sizes for j in range(n)}
    return sorted(ratios | {0.0, 1.0 - 1e-9})


class Allocation:
    """How many units each layer loses at a *level*: the two questions a target search asks.

    Built from a :class:`~lightning_fair.scoring.criterion.CriterionScores` (or ``FairScores``: FAIR's ranking).

    ``levels()`` are the ascending levels at which the counts change (search candidates);
    ``counts(level)`` is ``{layer: units to remove}``. ``level_name`` says what a level is;
    ``group_policy`` is how coupled groups combine their members' counts; ``tolerance(level)``
    is what the ``"joint"`` group policy needs (a ToD tolerance, or None).
    """

    level_name = "level"

    def __init__(self, scores, layers, group_policy: str = "min_count"):
        self.ranking, self.layers, self.group_policy = as_criterion_scores(scores), list(layers), group_policy

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
    """One threshold across all layers on scores divided by their layer's mean (:func:`global_counts`)."""

    level_name = "threshold"
    #: one layer's removal scores on the scale the threshold is on
    normalise = staticmethod(layer_normalised)

    def levels(self) -> list:
        return global_thresholds(self.ranking, self.layers, self.normalise)

    def counts(self, level: float) -> Dict[str, int]:
        return global_counts(self.ranking, level, self.layers, self.normalise)


class StandardisedAllocation(GlobalAllocation):
    """One threshold across all layers on scores standardised within their layer (z-scores: FLAP's
    adaptive structure search, An et al. 2024): a layer loses the units below ``mean + level * std``
    of its own scores, so what decides its count is the shape of its score distribution, not how
    far below the mean its weakest units lie (:func:`global_counts`)."""

    normalise = staticmethod(layer_standardised)


class UniformAllocation(Allocation):
    """The same fraction of every layer (:func:`uniform_counts`); the level is that ratio."""

    level_name = "ratio"

    def levels(self) -> list:
        return uniform_ratios(self.ranking, self.layers)

    def counts(self, level: float) -> Dict[str, int]:
        return uniform_counts(self.ranking, level, self.layers)


def layer_kind(name: str) -> str:
    """A layer's name with its block index (the first numeric part) as ``*``: the layers of one
    kind across blocks; numbers after it (positions inside a block) stay.

    Example:
        >>> layer_kind("model.layers.12.mlp"), layer_kind("blocks.0.2"), layer_kind("head")
        ('model.layers.*.mlp', 'blocks.*.2', 'head')
    """
    return re.sub(r"\.\d+(?=\.|$)", ".*", name, count=1)


def nearest_allowed(count: float, allowed: Optional[List[int]]) -> int:
    """``count`` rounded, or the nearest of ``allowed`` (the smaller on a tie)."""
    if allowed is None:
        return int(round(count))
    return min(allowed, key=lambda a: (abs(a - count), a))


def multiples_kept(units: int, multiple: int) -> Optional[List[int]]:
    """The unit counts a layer of ``units`` may lose so that what it keeps is a multiple of
    ``multiple`` (the ``round_to`` option); None (any count) for a layer of fewer than twice
    ``multiple`` units, which rounding would empty or leave whole.

    Example:
        >>> multiples_kept(100, 32), multiples_kept(40, 32)
        ([0, 4, 36, 68], None)
    """
    if units < 2 * multiple:
        return None
    return [0] + [units - kept for kept in range(units // multiple * multiple, 0, -multiple) if kept < units]


class AllowedCounts(Allocation):
    """Another allocation's counts, each layer's the nearest of its ``allowed`` counts (the smaller
    on a tie; layers not listed as they were): what a config accepts, or widths rounded to a
    multiple (``round_to``). The levels are the other allocation's; coupled groups take the
    smallest member count.

    Example:
        >>> from lightning_fair.scoring.fair import FairScores
        >>> u = {"b.0.fc": torch.tensor([1., 2., 3., 4.]), "b.1.fc": torch.tensor([1., 1., 1., 5.])}
        >>> inner = GlobalAllocation(FairScores(u, {n: torch.ones(4) for n in u}), list(u))
        >>> inner.counts(0.9), AllowedCounts(inner, {"b.1.fc": [0, 2]}).counts(0.9)
        ({'b.0.fc': 2, 'b.1.fc': 3}, {'b.0.fc': 2, 'b.1.fc': 2})
    """

    def __init__(self, inner: Allocation, allowed: Optional[Dict[str, List[int]]] = None):
        super().__init__(inner.ranking, inner.layers, "min_count")
        self.inner, self.level_name, self.allowed = inner, inner.level_name, dict(allowed or {})

    def levels(self) -> list:
        return self.inner.levels()

    def counts(self, level: float) -> Dict[str, int]:
        counts = self.inner.counts(level)
        return {name: nearest_allowed(count, self.allowed.get(name)) for name, count in counts.items()}


class UniformShapes(AllowedCounts):
    """Another allocation's counts made equal across the layers of a kind (the same
    :func:`layer_kind` and number of units): each loses the mean of their counts, rounded
    (``shapes="uniform"``: one head count and one MLP width for all blocks, as a standard
    Hugging Face config holds), or the nearest of the layer's ``allowed`` counts (the smaller on a
    tie; a config may accept only some head counts).

    Example:
        >>> from lightning_fair.scoring.fair import FairScores
        >>> u = {"b.0.fc": torch.tensor([1., 2., 3., 4.]), "b.1.fc": torch.tensor([1., 1., 1., 5.])}
        >>> inner = GlobalAllocation(FairScores(u, {n: torch.ones(4) for n in u}), list(u))
        >>> inner.counts(0.9), UniformShapes(inner).counts(0.9)
        ({'b.0.fc': 2, 'b.1.fc': 3}, {'b.0.fc': 2, 'b.1.fc': 2})
        >>> UniformShapes(inner, {"b.0.fc": [0, 3], "b.1.fc": [0, 3]}).counts(0.9)
        {'b.0.fc': 3, 'b.1.fc': 3}
    """

    def __init__(self, inner: Allocation, allowed: Optional[Dict[str, List[int]]] = None):
        super().__init__(inner, allowed)
        kinds: Dict[tuple, list] = {}
        for name in self.layers:
            kinds.setdefault((layer_kind(name), self.ranking.removal[name].numel()), []).append(name)
        self.kinds = list(kinds.items())

    def counts(self, level: float) -> Dict[str, int]:
        counts = self.inner.counts(level)
        for (_, n), members in self.kinds:
            mean = sum(counts[m] for m in members) / len(members)
            count = nearest_allowed(mean, self.allowed.get(members[0]))
            for member in members:
                counts[member] = min(count, n - 1)
        return counts


def allocation_for(name: str, scores, layers, group_policy: str = "min_count") -> Allocation:
    """The :class:`Allocation` called ``name`` (``"tod"``, ``"global"``, ``"standardised"`` or
    ``"uniform"``; resolve ``"auto"`` first with :func:`resolve_allocation`). Global and uniform counts are per layer
    already, so their coupled groups always take the smallest member count."""
    if name == "tod":
        return ToDAllocation(scores, layers, group_policy)
    if name == "global":
        return GlobalAllocation(scores, layers)
    if name == "standardised":
        return StandardisedAllocation(scores, layers)
    if name == "uniform":
        return UniformAllocation(scores, layers)
    raise ValueError(f"allocation must be one of {ALLOCATIONS[1:]} here (resolve 'auto' first), got {name!r}")
