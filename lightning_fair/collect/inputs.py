"""The mean-replacement statistic: the mean input of every Conv/Linear.

After removal, a consumer of the removed units gets their mean contribution folded into its bias
(:mod:`lightning_fair.repair.compensation`). For that, every Conv/Linear (ignored ones too) has its
input summed over samples (and tokens for a Linear): ``[C_in, *spatial]`` for a conv,
``[in_features]`` for a Linear, float64. An input whose shape changes between batches, or a layer
that runs more or less than once per forward, has no single mean. Summed across processes.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from ..runtime.distributed import all_reduce_sum, check_same_everywhere

__all__ = ["InputMeans"]


class InputMeans:
    """Per consumer: the running input sum, the samples it counts (-1: the shape varied) and the calls.

    Example:
        >>> m, fc = InputMeans(), nn.Linear(2, 1)
        >>> m.add("fc", torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64), fc)
        >>> m.means(calls_per_pass=1)["fc"].tolist()
        [2.0, 3.0]
    """

    def __init__(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self.counts: Dict[str, int] = {}
        self.calls: Dict[str, int] = {}

    def add(self, name: str, x: torch.Tensor, module: nn.Module) -> None:
        """One call of ``module`` with input ``x`` (float64)."""
        self.calls[name] = self.calls.get(name, 0) + 1
        if isinstance(module, nn.Linear):
            total, count = x.reshape(-1, x.shape[-1]).sum(0), x.numel() // max(x.shape[-1], 1)
        else:  # [B, C, *spatial] -> [C, *spatial]
            total, count = x.sum(0), x.shape[0]
        if name in self.sums and self.sums[name].shape == total.shape:
            self.sums[name] += total
            self.counts[name] += count
        elif name not in self.sums:
            self.sums[name], self.counts[name] = total, count
        else:
            self.counts[name] = -1

    def called(self, name: str) -> None:
        """A call whose input is not a floating-point tensor (counted, not summed)."""
        self.calls[name] = self.calls.get(name, 0) + 1

    def once_per_forward(self, name: str, calls_per_pass: int) -> bool:
        return self.calls.get(name) == calls_per_pass

    def means(self, calls_per_pass: int) -> Dict[str, torch.Tensor]:
        """Mean input (host, float64) of every consumer called ``calls_per_pass`` times (once per batch)
        with a fixed input shape."""
        return {
            name: (total / self.counts[name]).cpu()
            for name, total in self.sums.items()
            if self.counts[name] > 0 and self.calls.get(name) == calls_per_pass
        }

    @property
    def nbytes(self) -> int:
        return 8 * sum(t.numel() for t in self.sums.values())

    def merge(self) -> None:
        """Sum over processes (collective); a shape that varied on one rank has no mean anywhere."""
        consumers = sorted(self.sums)
        check_same_everywhere([len(consumers)] + [self.sums[c].numel() for c in consumers], "the layer inputs")
        for name in consumers:
            self.sums[name] = all_reduce_sum(self.sums[name])
        local = torch.tensor(
            [max(self.counts[c], 0) for c in consumers]
            + [self.calls.get(c, 0) for c in consumers]
            + [float(self.counts[c] < 0) for c in consumers],
            dtype=torch.float64,
        )
        tallies = all_reduce_sum(local).tolist()
        k = len(consumers)
        for i, name in enumerate(consumers):
            self.counts[name] = -1 if tallies[2 * k + i] > 0 else int(tallies[i])
            self.calls[name] = int(tallies[k + i])
