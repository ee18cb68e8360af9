"""What every Conv/Linear receives during the statistics pass: its mean input (for mean-replacement
compensation, :mod:`lightning_fair.compensation`) and, for screening, its spatially averaged input
per sample (:mod:`lightning_fair.screening`)."""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

__all__ = ["accumulate_input", "pooled_input"]


def accumulate_input(name: str, x: torch.Tensor, module: nn.Module, sums: Dict[str, torch.Tensor],
                     counts: Dict[str, int]) -> None:
    """Add one batch's input ``x`` (float64) of ``module`` to ``sums[name]`` / ``counts[name]``:
    summed over samples (and tokens for a Linear) to ``[C_in, *spatial]`` / ``[in_features]``.
    An input whose shape changes between batches has no single mean: its count becomes -1."""
    if isinstance(module, nn.Linear):
        total, count = x.reshape(-1, x.shape[-1]).sum(0), x.numel() // max(x.shape[-1], 1)
    else:  # [B, C, *spatial] -> [C, *spatial]
        total, count = x.sum(0), x.shape[0]
    if name in sums and sums[name].shape == total.shape:
        sums[name] += total
        counts[name] += count
    elif name not in sums:
        sums[name], counts[name] = total, count
    else:
        counts[name] = -1


def pooled_input(x: torch.Tensor, module: nn.Module) -> Optional[torch.Tensor]:
    """``[B, C_in]``: one value per sample and input feature / channel (mean over the rest), or None."""
    if isinstance(module, nn.Linear):
        return x.reshape(x.shape[0], -1, x.shape[-1]).mean(1) if x.dim() > 1 else None
    return x.reshape(x.shape[0], x.shape[1], -1).mean(2) if x.dim() > 2 else None
