"""Wasserstein-1 distances between the per-class output distributions of units.

Everything here is pure tensor math: no hooks, no models.

The utilization score of a unit is the largest Wasserstein-1 distance between
the distributions of its output for any two classes (method.md §1.1), or, with
``pairs="mean"`` (our option), the mean of those distances over all class pairs. For a
unit whose output per image is a scalar (a Linear feature) the distance is the
exact 1-D W1. For a unit whose output per image is a map (a Conv channel) the
distance is the sliced W1: the mean, over ``P`` unit directions, of the 1-D W1
of the projected samples (the directions: :mod:`lightning_fair.collect.projections`;
the maps are projected as they stream past and only the projected values are kept).

1-D W1 between two empirical distributions equals the L1 distance between
their quantile functions, ``∫_0^1 |Qx(t) - Qy(t)| dt``. Both quantile
functions are step functions, so the integral is exact on the common
refinement of their steps. With equal sample sizes this is
``mean |sort(x) - sort(y)|``; with unequal sizes we still compute the exact
value (the reference code approximates it on ``max(n, m)`` levels).
For all class pairs at once, every class's quantile function is evaluated on
the union of all steps and weighted by the step widths, and W1 for every pair
is one L1 ``cdist`` between those vectors.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..config import PAIRS

__all__ = ["quantile_grid", "pairwise_w1", "class_pair_w1", "max_pairwise_w1", "wasserstein_1d"]


def quantile_grid(counts: Sequence[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Common refinement of the quantile steps of empirical distributions with ``counts`` samples.

    Returns, for each distribution, the index of its sorted sample that is its
    quantile on each interval of the refinement, and the interval widths
    (summing to 1). With equal counts ``n`` the grid is ``n`` intervals of
    width ``1/n`` and the indices are ``0..n-1``.

    Example:
        >>> idx, w = quantile_grid([2, 3])
        >>> [i.tolist() for i in idx], [round(x, 4) for x in w.tolist()]
        ([[0, 0, 1, 1], [0, 1, 1, 2]], [0.3333, 0.1667, 0.1667, 0.3333])
    """
    counts = [int(c) for c in counts]
    if any(c < 1 for c in counts):
        raise ValueError(f"every distribution needs at least one sample, got counts={counts}")
    if len(set(counts)) == 1:
        n = counts[0]
        index = torch.arange(n)
        return [index] * len(counts), torch.full((n,), 1.0 / n, dtype=torch.float64)
    # Breakpoints i/n of every distribution; distinct ones differ by at least 1/(n*m).
    distinct = sorted(set(counts))
    steps = torch.cat([torch.arange(c + 1, dtype=torch.float64) / c for c in distinct])
    steps = torch.unique(torch.round(steps * 2**40) / 2**40)
    widths = steps[1:] - steps[:-1]
    middle = (steps[1:] + steps[:-1]) / 2
    # On each interval the quantile of a distribution with c samples is its sample floor(t * c).
    indices = [torch.floor(middle * c).long().clamp_(max=c - 1) for c in counts]
    return indices, widths


def _sort_last(values: torch.Tensor) -> torch.Tensor:
    """Sort along the last dimension. On CPU, NumPy sorts many short rows several times faster."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64) and not values.requires_grad:
        return torch.from_numpy(np.sort(values.numpy(), axis=-1))
    return torch.sort(values, dim=-1).values


def pairwise_w1(quantiles: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """W1 between every pair of distributions given on a common quantile grid.

    Args:
        quantiles: ``[..., K, L]``: K distributions, each as its quantile function on L intervals.
        widths: ``[L]`` interval widths (non-negative, summing to 1).

    Returns:
        ``[..., K, K]`` distances.
    """
    weighted = quantiles * widths.to(quantiles.dtype)
    batch_shape = weighted.shape[:-2]
    flat = weighted.reshape(-1, *weighted.shape[-2:])
    distances = torch.cdist(flat, flat, p=1)
    return distances.reshape(*batch_shape, *distances.shape[-2:])


def max_pairwise_w1(samples: Sequence[torch.Tensor], *, max_elements: int = 2**25) -> torch.Tensor:
    """Utilization score as published: max over class pairs of the mean over projections of the
    1-D W1 (:func:`class_pair_w1` with ``pairs="max"``)."""
    return class_pair_w1(samples, pairs="max", max_elements=max_elements)


def class_pair_w1(samples: Sequence[torch.Tensor], *, pairs: str = "max", max_elements: int = 2**25) -> torch.Tensor:
    """Utilization score: the mean over projections of the 1-D W1 between two classes' samples,
    combined over the unordered class pairs by their maximum (``pairs="max"``, the paper's) or
    their mean (``pairs="mean"``).

    Args:
        samples: one tensor per class, each ``[n_k, C, D]``: ``n_k`` samples of C units,
            each seen through D projections (D = 1 for scalar units). Classes may have
            different ``n_k``.
        pairs: ``"max"`` or ``"mean"``.
        max_elements: the work is split over units so no intermediate holds more elements.

    Returns:
        ``[C]`` scores (zeros when fewer than two classes are given).

    Example:
        >>> a, b, c = torch.zeros(2, 1, 1), torch.ones(2, 1, 1), 3 * torch.ones(2, 1, 1)
        >>> class_pair_w1([a, b, c]).item(), class_pair_w1([a, b, c], pairs="mean").item()
        (3.0, 2.0)
    """
    if pairs not in PAIRS:
        raise ValueError(f"pairs must be one of {PAIRS}, got {pairs!r}")
    if len(samples) < 2:
        channels = samples[0].shape[1] if samples else 0
        return torch.zeros(channels, device=samples[0].device if samples else None)
    device = samples[0].device
    indices, widths = quantile_grid([s.shape[0] for s in samples])
    indices, widths = [i.to(device) for i in indices], widths.to(device)
    # [C, D, n_k] views; each chunk of units is sorted when it is scored, so no sorted copy of the
    # whole layer is ever held (only the chunk's, within ``max_elements``)
    views = [s.permute(1, 2, 0) for s in samples]
    num_classes = len(samples)
    equal = len({s.shape[0] for s in samples}) == 1
    channels, dim = views[0].shape[:2]
    levels = widths.numel()
    per_channel = max(1, dim * num_classes * max(levels, num_classes))
    chunk = max(1, max_elements // per_channel)
    dtype = torch.promote_types(samples[0].dtype, torch.float32)
    result = torch.empty(channels, dtype=dtype, device=device)
    for start in range(0, channels, chunk):
        stop = min(channels, start + chunk)
        # [c, D, K, L]: each class's quantile function per (unit, projection).
        if equal:  # the sorted samples are the quantile functions: one sort for every class
            grid = _sort_last(torch.stack([v[start:stop] for v in views], dim=2)).to(dtype)
        else:
            grid = torch.stack(
                [
                    _sort_last(v[start:stop].contiguous()).to(dtype).index_select(-1, idx)
                    for v, idx in zip(views, indices)
                ],
                dim=2,
            )
        distances = pairwise_w1(grid, widths)  # [c, D, K, K]
        per_pair = distances.mean(dim=1)  # [c, K, K], symmetric, zero diagonal
        if pairs == "max":
            result[start:stop] = per_pair.amax(dim=(-2, -1))
        else:  # every unordered pair counted twice in the full matrix, the diagonal is zero
            result[start:stop] = per_pair.sum(dim=(-2, -1)) / (num_classes * (num_classes - 1))
    return result


def wasserstein_1d(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact 1-D W1 between the empirical distributions of samples ``x`` and ``y`` (along dim 0).

    Example:
        >>> float(wasserstein_1d(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0])))
        1.0
    """
    x2 = x.reshape(x.shape[0], -1, 1)
    y2 = y.reshape(y.shape[0], -1, 1)
    indices, widths = quantile_grid([x2.shape[0], y2.shape[0]])
    indices, widths = [i.to(x.device) for i in indices], widths.to(x.device)
    qx = torch.sort(x2, dim=0).values.index_select(0, indices[0])
    qy = torch.sort(y2, dim=0).values.index_select(0, indices[1])
    w = widths.to(torch.promote_types(x.dtype, torch.float32)).reshape(-1, 1, 1)
    return ((qx - qy).abs() * w).sum(dim=0).reshape(x.shape[1:])
