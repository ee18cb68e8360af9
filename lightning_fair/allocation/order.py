"""Which units of a layer go first once its count is known (the ``ranking`` option's plain orders).

``"utilization_x_consumers"`` and ``"utilization_x_group"`` read the weights of a coupled group's
layers and are applied by :class:`~lightning_fair.removal.planner.DependencyPlanner`.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..config import RANKINGS

__all__ = ["removal_order"]


def removal_order(
    ranking: str,
    utilization: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    *,
    seed: int = 0,
    last: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Unit indices of one layer, first-to-remove first.

    ``"utilization"``: lowest U first (FAIR). ``"l1"``: smallest L1 norm of the unit's
    weights first (``weight`` has units along dim 0). ``"random"``: a seeded permutation.
    ``last``: a bool mask of units that go after all others, in the same order among themselves
    (the units with massive activations, :mod:`lightning_fair.scoring.massive`).

    Example:
        >>> removal_order("utilization", torch.tensor([0.1, 0.5, 0.3])).tolist()
        [0, 2, 1]
        >>> u, last = torch.tensor([0.1, 0.5, 0.3]), torch.tensor([True, False, False])
        >>> removal_order("utilization", u, last=last).tolist()
        [2, 1, 0]
    """
    order = _order(ranking, utilization, weight, seed)
    if last is None or not bool(last.any()):
        return order
    late = last.to(order.device)[order]
    return torch.cat([order[~late], order[late]])


def _order(ranking: str, utilization: torch.Tensor, weight: Optional[torch.Tensor], seed: int) -> torch.Tensor:
    if ranking == "utilization":
        return torch.sort(utilization.double(), stable=True).indices
    if ranking == "l1":
        if weight is None:
            raise ValueError("ranking='l1' needs the layer's weight")
        return torch.sort(weight.detach().flatten(1).abs().sum(1).double().cpu(), stable=True).indices
    if ranking == "random":
        generator = torch.Generator().manual_seed(int(seed))
        return torch.randperm(utilization.numel(), generator=generator)
    if ranking in ("utilization_x_consumers", "utilization_x_group"):
        raise ValueError(
            f"ranking={ranking!r} reads the weights of a coupled group's layers: "
            "DependencyPlanner.plan applies it (pass the product as ranking='utilization' here)"
        )
    raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
