"""Which classes the utilization score compares, and where each kept sample goes.

U is the largest distance between the per-class distributions of a unit's output over all
pairs of classes (method.md §1.1). Its cost grows with the number of classes K: the samples
kept grow as K (``K * n * C * D`` values per layer) and the pairs as ``K (K - 1) / 2``. Like the
reference (which scores at most 100 randomly chosen classes), U compares at most
``max_classes`` classes: with more classes than that, a seeded random subset of the model's
classes is chosen once, on the first batch, and only their samples are kept. With at most
``max_classes`` classes nothing changes (every class, no random draw).

The number of projections of the sliced W1 follows the classes compared too
(``num_projections="auto"``, the default, :func:`projections_for`): 128 directions when fewer than
``MANY_CLASSES`` classes are compared, 32 from there on. With many classes the maximum over many
pairs is steady enough that 32 directions move U no more than other random directions do; with
10 classes they move it clearly (docs/method.md, "Many classes"; ``examples/benchmarks/class_cap.py``).

Pure tensor bookkeeping on the host: labels arrive from the data loader, usually on the CPU.
"""

from __future__ import annotations

import zlib
from typing import Optional, Union

import torch

from ..config import AUTO_PROJECTIONS, MANY_CLASSES, check_projections

__all__ = [
    "chosen_classes",
    "class_slots",
    "rank_within_class",
    "check_projections",
    "projections_for",
    "AUTO_PROJECTIONS",
    "MANY_CLASSES",
]


def projections_for(num_projections: Union[int, str], compared: int) -> int:
    """The directions of the sliced W1 when U compares ``compared`` classes: ``num_projections``
    itself if an integer; ``"auto"``: 128 below ``MANY_CLASSES`` compared classes, 32 from there on.

    Example:
        >>> projections_for("auto", 10), projections_for("auto", 100), projections_for(64, 1000)
        (128, 32, 64)
    """
    check_projections(num_projections)
    if num_projections == "auto":
        return AUTO_PROJECTIONS["many" if compared >= MANY_CLASSES else "few"]
    return int(num_projections)


def chosen_classes(num_classes: int, max_classes: Optional[int], seed: int) -> torch.Tensor:
    """The classes U compares, ascending: all ``num_classes`` if ``max_classes`` is None or not
    smaller, else a seeded random subset of ``max_classes`` of them.

    Example:
        >>> chosen_classes(10, 100, seed=0).tolist() == list(range(10))
        True
        >>> again = chosen_classes(1000, 100, seed=0)
        >>> chosen_classes(1000, 100, seed=0).shape, bool((chosen_classes(1000, 100, seed=0) == again).all())
        (torch.Size([100]), True)
    """
    if max_classes is None or num_classes <= max_classes:
        return torch.arange(num_classes)
    if max_classes < 2:
        raise ValueError(f"max_classes must be at least 2 (U compares pairs of classes), got {max_classes}")
    generator = torch.Generator().manual_seed(zlib.crc32(b"classes") ^ int(seed))
    return torch.randperm(num_classes, generator=generator)[:max_classes].sort().values


def class_slots(num_classes: int, chosen: torch.Tensor) -> torch.Tensor:
    """``[num_classes]``: the buffer slot of each chosen class, -1 for the others.

    Example:
        >>> class_slots(5, torch.tensor([1, 3])).tolist()
        [-1, 0, -1, 1, -1]
    """
    slots = torch.full((num_classes,), -1, dtype=torch.long)
    slots[chosen] = torch.arange(chosen.numel())
    return slots


def rank_within_class(labels: torch.Tensor) -> torch.Tensor:
    """Position of each sample among the samples of its class in this batch (0 for the first),
    in O(B log B) on the labels' device, whatever the number of classes.

    Example:
        >>> rank_within_class(torch.tensor([3, 1, 3, 3, 1])).tolist()
        [0, 0, 1, 2, 1]
    """
    labels = labels.flatten()
    if labels.numel() == 0:
        return labels.clone()
    order = torch.sort(labels, stable=True).indices
    ordered = labels[order]
    position = torch.arange(labels.numel(), device=labels.device)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    first = torch.cummax(torch.where(starts, position, torch.zeros_like(position)), dim=0).values
    rank = torch.empty_like(position)
    rank[order] = position - first
    return rank
