"""The reconstruction statistic: per scored layer, the sums behind R (method.md §1.2).

For every unit, the signed sum over batches, samples and positions of ``dL/dz * z`` (the
first-order Taylor estimate of the loss change if the unit were removed; R is its absolute value,
``reconstruction="abs_of_sum"``), and the sum over samples of the absolute value of its
per-sample sum (``"sum_of_abs"``). Two float64 vectors per layer; summed across processes.
"""

from __future__ import annotations

from typing import Dict

import torch

from ..runtime.distributed import all_reduce_sum

__all__ = ["TaylorSums"]


class TaylorSums:
    """``signed[layer]`` and ``absolute[layer]``: ``[C]`` float64 sums of ``dL/dz * z``.

    Example:
        >>> t = TaylorSums()
        >>> t.start("fc", 2)
        >>> t.add("fc", torch.tensor([[1.0, -2.0], [-3.0, 4.0]]))
        >>> t.signed["fc"].tolist(), t.absolute["fc"].tolist()
        ([-2.0, 2.0], [4.0, 6.0])
    """

    def __init__(self, device=None):
        self.device = device
        self.signed: Dict[str, torch.Tensor] = {}
        self.absolute: Dict[str, torch.Tensor] = {}

    def start(self, name: str, num_units: int) -> None:
        """Zero sums for a layer of ``num_units`` units."""
        self.signed[name] = torch.zeros(num_units, dtype=torch.float64, device=self.device)
        self.absolute[name] = torch.zeros(num_units, dtype=torch.float64, device=self.device)

    def add(self, name: str, per_sample: torch.Tensor) -> None:
        """Add one batch: ``per_sample [B, C]``, each sample's ``dL/dz * z`` summed over positions."""
        self.signed[name] += per_sample.sum(0).to(torch.float64)
        self.absolute[name] += per_sample.abs().sum(0).to(torch.float64)

    @property
    def nbytes(self) -> int:
        return sum(8 * t.numel() for t in list(self.signed.values()) + list(self.absolute.values()))

    def merge(self) -> None:
        """Sum over processes (collective; the layers in the same order on every rank)."""
        for name in self.signed:
            self.signed[name] = all_reduce_sum(self.signed[name])
            self.absolute[name] = all_reduce_sum(self.absolute[name])
