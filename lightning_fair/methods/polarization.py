"""The polarising penalty of on-the-fly pruning, on the normalised weights of hyperspherical layers.

Per layer, with ``S`` the ``round(ratio * n)`` entries of smallest ``|w_hat|`` (recomputed at
every optimizer step), ``P = penalty * (sum_{i in S} |w_hat_i| - beta * sum_{i not in S} |w_hat_i|)``,
summed over the layers; its gradient with respect to ``V`` (closed form, ``S`` held fixed,
tangent to the sphere) is *added to* ``V.grad`` (see :mod:`lightning_fair.methods.onthefly`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import nn

from .hypersphere import EPS, direction_of, hyperspherical_layers, per_row, row_norms

__all__ = ["PenaltyStats", "add_polarization_grad", "polarization_stats", "smallest_entries"]


def smallest_entries(magnitude: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean mask (shaped like ``magnitude``) of its ``round(ratio * n)`` smallest entries."""
    flat = magnitude.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    count = int(round(ratio * flat.numel()))
    if count:
        mask[torch.topk(flat, count, largest=False, sorted=False).indices] = True
    return mask.view_as(magnitude)


@dataclass
class PenaltyStats:
    """The penalty and how far the normalised weights are from being safely prunable.

    ``value``: the penalty ``P`` (including ``penalty``, summed over layers). ``pruned_energy``:
    the share of the normalised weights' squared norm that pruning now would remove (each
    filter has norm 1; 0 means pruning changes nothing). ``separation``: mean ``|w_hat|`` of the
    kept entries over that of the would-be-pruned ones. Tensors (no device sync).
    """

    value: torch.Tensor
    pruned_energy: torch.Tensor
    separation: torch.Tensor


def _layer_terms(direction: torch.Tensor, ratio: float, beta: float):
    norms = row_norms(direction).clamp_min(EPS)
    w_hat = direction / per_row(norms, direction)
    magnitude = w_hat.abs()
    mask = smallest_entries(magnitude, ratio)
    coefficient = torch.where(mask, torch.ones_like(w_hat), torch.full_like(w_hat, -beta))
    return norms, w_hat, magnitude, mask, coefficient


def add_polarization_grad(
    model: nn.Module, ratio: float, penalty: float, beta: float = 0.2, params: Optional[Iterable[torch.Tensor]] = None
) -> PenaltyStats:
    """Add ``d P / d V`` to the ``.grad`` of every hyperspherical layer's ``V``; return the stats.

    Call it after the loss's backward and before the optimizer step (the loss is not changed).
    ``params``: only layers whose ``V`` is among them (e.g. one optimizer's parameters). A ``V``
    with no ``.grad`` yet gets one. ``S`` (the would-be-pruned set) is recomputed from the
    current weights.
    """
    return _polarize(model, ratio, penalty, beta, params, apply=True)


def polarization_stats(model: nn.Module, ratio: float, beta: float = 0.2) -> PenaltyStats:
    """:class:`PenaltyStats` of the hyperspherical layers now (``value`` with ``penalty=1``); no gradient touched."""
    return _polarize(model, ratio, 1.0, beta, None, apply=False)


@torch.no_grad()
def _polarize(model, ratio, penalty, beta, params, apply: bool) -> PenaltyStats:
    wanted = None if params is None else {id(p) for p in params}
    device = next(iter(model.parameters())).device
    value, pruned, total, kept_sum, pruned_sum, kept_n, pruned_n = (torch.zeros((), device=device) for _ in range(7))
    for module in hyperspherical_layers(model).values():
        direction = direction_of(module)
        if wanted is not None and id(direction) not in wanted:
            continue
        norms, w_hat, magnitude, mask, coefficient = _layer_terms(direction.detach(), ratio, beta)
        value += penalty * (coefficient * magnitude).sum().float()
        pruned += (w_hat.square() * mask).sum().float()
        total += w_hat.square().sum().float()
        pruned_sum += (magnitude * mask).sum().float()
        kept_sum += (magnitude * ~mask).sum().float()
        pruned_n += mask.sum()
        kept_n += (~mask).sum()
        if apply and penalty and direction.requires_grad:
            # d/dV of sum c_i |w_hat_i| with w_hat = V / ||V|| (per row): (u - (u . w_hat) w_hat) / ||V||
            u = coefficient * torch.sign(w_hat)
            along = per_row((u * w_hat).flatten(1).sum(1), w_hat)
            grad = penalty * (u - along * w_hat) / per_row(norms, w_hat)
            if direction.grad is None:
                direction.grad = grad.to(direction.dtype)
            else:
                direction.grad.add_(grad.to(direction.grad.dtype))
    separation = (kept_sum / kept_n.clamp_min(1)) / (pruned_sum / pruned_n.clamp_min(1)).clamp_min(EPS)
    return PenaltyStats(value, pruned / total.clamp_min(EPS), separation)
