"""Which units of a layer go first once its count is known (the ``ranking`` option's plain orders).

``"utilization_x_consumers"`` and ``"utilization_x_group"`` read the weights of a coupled group's
layers and are applied by :class:`~lightning_fair.removal.planner.DependencyPlanner`.
"""

from __future__ import annotations

import torch

from ..config import RANKINGS

__all__ = ["removal_order"]


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
    if ranking in ("utilization_x_consumers", "utilization_x_group"):
        raise ValueError(
            f"ranking={ranking!r} reads the weights of a coupled group's layers: "
            "DependencyPlanner.plan applies it (pass the product as ranking='utilization' here)"
        )
    raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
