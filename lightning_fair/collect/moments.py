"""Per-class moments of one value per image and feature, streamed batch by batch.

The statistic of the screening criterion's F-statistic (:mod:`lightning_fair.scoring.screening`):
per class, the number of images and the sum and sum of squares of each unit's spatially averaged
observed tensor (and of every Conv/Linear's spatially averaged input), float64; summed across
processes. :class:`ScreeningMoments` keeps them for a pass; :func:`screening_bytes` is their size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import nn

from ..runtime.distributed import all_reduce_sum, check_same_everywhere

__all__ = ["ClassMoments", "ScreeningMoments", "screening_bytes"]


def screening_bytes(num_classes: int, units: List[int], input_widths: List[int]) -> int:
    """Bytes of the screening statistics: per-class count, sum and sum of squares (float64) of every
    scored layer's units and every Conv/Linear's input channels / features."""
    return sum(16 * num_classes * c + 8 * num_classes for c in list(units) + list(input_widths))


@dataclass
class ClassMoments:
    """Per-class count ``[K]``, sum and sum of squares ``[K, C]`` (float64) of one value per image and
    feature, streamed batch by batch: all that the F-statistic needs, in ``16 K C + 8 K`` bytes.

    Example:
        >>> m = ClassMoments.zeros(2, 1)
        >>> m.add(torch.tensor([0, 0, 1, 1]), torch.tensor([[1.], [2.], [3.], [5.]], dtype=torch.float64))
        >>> m.count.tolist(), m.total.tolist()
        ([2.0, 2.0], [[3.0], [8.0]])
    """

    count: torch.Tensor
    total: torch.Tensor
    squares: torch.Tensor

    @classmethod
    def zeros(cls, num_classes: int, width: int, device=None) -> "ClassMoments":
        def zeros(*shape):
            return torch.zeros(*shape, dtype=torch.float64, device=device)

        return cls(zeros(num_classes), zeros(num_classes, width), zeros(num_classes, width))

    def add(self, labels: torch.Tensor, values: torch.Tensor) -> None:
        """Add a batch: ``labels [B]`` class indices, ``values [B, C]`` float64."""
        # one-hot products instead of index_add: deterministic on every device
        one_hot = nn.functional.one_hot(labels.to(values.device).long(), self.count.numel()).to(torch.float64).t()
        self.count += one_hot.sum(1)
        self.total += one_hot @ values
        self.squares += one_hot @ values.square()

    def tensors(self) -> list:
        return [self.count, self.total, self.squares]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


class ScreeningMoments:
    """The screening statistic of a pass: :class:`ClassMoments` of every scored layer's units
    (``layers``) and of every Conv/Linear's spatially averaged input (``inputs``; None where the
    input is not batch-first or its width varies: no per-feature statistic).

    Example:
        >>> s = ScreeningMoments(num_classes=2)
        >>> s.start("fc", 1)
        >>> s.add("fc", torch.tensor([0, 1]), torch.tensor([[1.0], [3.0]], dtype=torch.float64))
        >>> s.layers["fc"].total.tolist()
        [[1.0], [3.0]]
    """

    def __init__(self, num_classes: int, device=None):
        self.num_classes = num_classes
        self.device = device
        self.layers: Dict[str, ClassMoments] = {}
        self.inputs: Dict[str, Optional[ClassMoments]] = {}

    def start(self, name: str, width: int) -> None:
        self.layers[name] = ClassMoments.zeros(self.num_classes, width, self.device)

    def add(self, name: str, labels: torch.Tensor, values: torch.Tensor) -> None:
        """One batch of a layer's pooled ``[B, C]`` values (float64)."""
        self.layers[name].add(labels, values)

    def add_input(self, name: str, labels: torch.Tensor, values: torch.Tensor) -> None:
        """One batch of a Conv/Linear's pooled ``[B, C_in]`` input (float64)."""
        seen = name in self.inputs
        moments = self.inputs.get(name)
        if seen and moments is None:
            return
        if values.shape[0] != labels.numel() or (moments is not None and moments.total.shape[1] != values.shape[1]):
            # its first dimension is not the batch, or its width varies: no per-feature statistic
            self.inputs[name] = None
            return
        if moments is None:
            moments = self.inputs[name] = ClassMoments.zeros(self.num_classes, values.shape[1], values.device)
        moments.add(labels, values)

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.layers.values()) + sum(m.nbytes for m in self.inputs.values() if m)

    def merge(self) -> None:
        """Sum over processes (collective): layers, then layer inputs (valid on every rank)."""
        for name, layer in self.layers.items():
            self.layers[name] = ClassMoments(*map(all_reduce_sum, layer.tensors()))
        consumers = sorted(self.inputs)
        check_same_everywhere([len(consumers)], "the layer inputs")
        invalid = all_reduce_sum(torch.tensor([float(self.inputs[c] is None) for c in consumers]))
        valid = {c: m for c, m, bad in zip(consumers, map(self.inputs.get, consumers), invalid.tolist()) if not bad}
        check_same_everywhere([m.total.numel() for m in valid.values() if m], "the layer input widths")
        for name in consumers:
            found = valid.get(name)
            self.inputs[name] = ClassMoments(*map(all_reduce_sum, found.tensors())) if found else None
