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

from ..config import check_tolerance
from ..scoring.criterion import as_criterion_scores

__all__ = ["tod_curve", "tolerance_count", "tolerance_counts"]


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
        raise ValueError(
            f"U and R must have one value per unit, got {tuple(utilization.shape)} and {tuple(reconstruction.shape)}"
        )
    n = utilization.numel()
    limit = int(0.99 * n)
    if limit < 1:
        return torch.zeros(0, dtype=torch.float64)
    both = torch.maximum(_ranks(utilization, False), _ranks(reconstruction, True))
    # overlap(m) = #{units with max rank < m}
    overlap = torch.bincount(both.cpu(), minlength=n).cumsum(0)[:limit].double()
    return overlap / torch.arange(1, limit + 1, dtype=torch.float64)


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
    :class:`~lightning_fair.scoring.criterion.CriterionScores`).

    Example:
        ``counts = tolerance_counts(scores, 0.05)``; a second tolerance reuses the same scores.
    """
    check_tolerance(tolerance)
    ranking = as_criterion_scores(scores)
    return {
        name: tolerance_count(ranking.removal[name], ranking.protection[name], tolerance) for name in ranking.layers
    }


def layer_curves(scores) -> Mapping[str, torch.Tensor]:
    """ToD curve of every scored layer, computed once for repeated allocation."""
    ranking = as_criterion_scores(scores)
    return {name: tod_curve(ranking.removal[name], ranking.protection[name]) for name in ranking.layers}
