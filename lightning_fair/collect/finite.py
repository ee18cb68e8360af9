"""Checks that the statistics pass's tensors are finite, without a host round trip per check.

Reading a flag computed on a GPU (``bool(torch.isfinite(x).all())``) waits for every queued
kernel: one such check per layer and batch would stall the device dozens of times a batch. On
the CPU a check costs nothing, so it runs at once; on any other device the flags stay on the
device and :meth:`FiniteChecks.flush` reads them all with one transfer, at the end of the pass.
Either way the first failure raises :class:`FloatingPointError` with its own message (which
names the layer and the batch).
"""

from __future__ import annotations

from typing import Callable, List, Tuple

import torch

__all__ = ["FiniteChecks"]


class FiniteChecks:
    """Finiteness checks of one pass: immediate on the CPU, deferred to :meth:`flush` elsewhere.

    Example:
        >>> checks = FiniteChecks(torch.device("cpu"))
        >>> checks.check(torch.ones(3), lambda: "never raised")
        >>> checks.check(torch.tensor([1.0, float("nan")]), lambda: "layer 'a' is not finite")
        Traceback (most recent call last):
        ...
        FloatingPointError: layer 'a' is not finite
    """

    def __init__(self, device: torch.device):
        self.immediate = torch.device(device).type == "cpu"
        self.pending: List[Tuple[torch.Tensor, Callable[[], str]]] = []

    def check(self, tensor: torch.Tensor, message: Callable[[], str]) -> None:
        """Raise ``FloatingPointError(message())`` if ``tensor`` holds a NaN or an infinity (now on the
        CPU; at :meth:`flush` on another device)."""
        # min and max are NaN if any value is, and +-inf if any is: a reduction, no mask as large as the tensor
        finite = (
            torch.isfinite(torch.stack(torch.aminmax(tensor.detach()))).all()
            if tensor.numel()
            else torch.ones((), dtype=torch.bool, device=tensor.device)
        )
        if self.immediate:
            if not bool(finite):
                raise FloatingPointError(message())
        else:
            self.pending.append((finite, message))

    def flush(self) -> None:
        """Read every deferred flag with one transfer; raise for the first that failed."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        flags = torch.stack([flag for flag, _ in pending]).cpu()
        failed = (~flags).nonzero()
        if failed.numel():
            raise FloatingPointError(pending[int(failed[0])][1]())
