"""The seeded directions through which the statistics pass sees a conv channel's output map.

The sliced W1 of a unit whose output per image is a map (a Conv channel) is the mean, over ``P``
unit directions, of the 1-D W1 of the projected samples (method.md §1.1). Projection is linear, so
the maps are projected as they stream past and only the projected values are kept.
"""

from __future__ import annotations

import torch

__all__ = ["random_projections"]


def random_projections(dim: int, num_projections: int, *, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Seeded Gaussian directions normalised to unit length, as a ``[dim, num_projections]`` matrix.

    Example:
        >>> theta = random_projections(16, 4, seed=0)
        >>> torch.allclose(theta.norm(dim=0), torch.ones(4))
        True
    """
    generator = torch.Generator().manual_seed(int(seed))
    theta = torch.randn(dim, num_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    return theta.to(dtype)
