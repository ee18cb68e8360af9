"""The massive-activation statistic: per scored layer, each unit's largest absolute value.

For every unit, the largest ``|value|`` of the tensor U observes (the layer's output, or that
output after its norm / nonlinearity), over every sample, position and calibration batch (padded
token positions excluded): one float32 vector per layer, its maximum taken across processes.

It finds the units that carry *massive activations* (Sun et al. 2024, arXiv 2402.17762): a few
units of a transformer that take values many times larger than any other unit's on a few tokens
([CLS]/[SEP], the first token), acting as a bias the attention relies on. They separate no classes
and their first-order Taylor estimate is near zero, so U and R both rank them for removal; removing
them breaks the model (docs/method.md, "Massive activations"; :mod:`lightning_fair.scoring.massive`).
"""

from __future__ import annotations

from typing import Dict

import torch

from ..runtime.distributed import all_reduce_max

__all__ = ["ActivationPeaks", "unit_peaks"]


def unit_peaks(values: torch.Tensor) -> torch.Tensor:
    """``[C]`` the largest ``|value|`` of each unit in units views ``values`` ``[samples, C, M]``.

    Example:
        >>> unit_peaks(torch.tensor([[[1.0], [-4.0]], [[3.0], [2.0]]])).tolist()
        [3.0, 4.0]
    """
    return values.detach().abs().amax(dim=(0, 2)).float()


class ActivationPeaks:
    """``peaks[layer]``: ``[C]`` the largest ``|value|`` each unit took so far.

    Example:
        >>> p = ActivationPeaks()
        >>> p.add("fc", torch.tensor([3.0, 4.0]))
        >>> p.add("fc", torch.tensor([0.5, 5.0]))
        >>> p.peaks["fc"].tolist()
        [3.0, 5.0]
    """

    def __init__(self):
        self.peaks: Dict[str, torch.Tensor] = {}

    def add(self, name: str, peak: torch.Tensor) -> None:
        """One batch's :func:`unit_peaks` of what U observes for ``name``."""
        current = self.peaks.get(name)
        self.peaks[name] = peak if current is None or current.shape != peak.shape else torch.maximum(current, peak)

    @property
    def nbytes(self) -> int:
        return sum(4 * t.numel() for t in self.peaks.values())

    def merge(self) -> None:
        """The maximum over processes (collective; the layers in the same order on every rank)."""
        for name in sorted(self.peaks):
            self.peaks[name] = all_reduce_max(self.peaks[name])

    def result(self) -> Dict[str, torch.Tensor]:
        """Each layer's peaks on the host."""
        return {name: peak.cpu() for name, peak in self.peaks.items()}
