"""The calibration loss and accuracy, seen for free on the way: summed on the device during the
pass, read once at its end (no host round trip per batch on a GPU); summed across processes."""

from __future__ import annotations

from typing import Optional

import torch

from ..runtime.distributed import all_reduce_sum

__all__ = ["CalibrationTallies"]


class CalibrationTallies:
    """Sum of batch mean losses, top-1 hits and samples over the batches of a pass.

    Example:
        >>> t = CalibrationTallies()
        >>> t.add(torch.tensor(0.5), torch.tensor([[2.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        >>> t.settle(); (t.loss_sum, t.correct, t.seen)
        (0.5, 1, 2)
    """

    def __init__(self):
        self.loss_sum, self.correct, self.seen, self.batches = 0.0, 0, 0, 0
        self._pending: Optional[torch.Tensor] = None

    def add(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        tallies = torch.stack(
            [loss.detach().to(torch.float64), (logits.detach().argmax(1) == target).sum().to(torch.float64)]
        )
        self._pending = tallies if self._pending is None else self._pending + tallies
        self.seen += int(target.shape[0])

    def settle(self) -> None:
        """Read the device sums into ``loss_sum`` and ``correct``."""
        if self._pending is not None:
            loss, correct = self._pending.tolist()
            self.loss_sum, self.correct, self._pending = self.loss_sum + loss, self.correct + int(correct), None

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.batches, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.seen, 1)

    @property
    def nbytes(self) -> int:
        return 16

    def merge(self) -> None:
        """Sum over processes (collective; after :meth:`settle`)."""
        tallies = torch.tensor([self.loss_sum, self.correct, self.seen, self.batches], dtype=torch.float64)
        loss, correct, seen, batches = all_reduce_sum(tallies).tolist()
        self.loss_sum, self.correct, self.seen, self.batches = loss, int(correct), int(seen), int(batches)
