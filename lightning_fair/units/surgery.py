"""Cutting rows and columns out of layers in place: what every unit family's ``remove`` does.

The new tensors are fresh ``nn.Parameter`` objects (same ``requires_grad``), so an optimizer holding
the old ones must be rebuilt or carried (:mod:`lightning_fair.runtime.optim`); ``out_features`` /
``in_features`` follow.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["keep_columns", "keep_rows", "new_parameter"]


def new_parameter(old: torch.Tensor, value: torch.Tensor) -> nn.Parameter:
    """A parameter holding a copy of ``value``, trainable like ``old``."""
    return nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad)


def keep_rows(layer: nn.Module, rows: torch.Tensor, weight: str = "weight", bias: str = "bias") -> None:
    """Keep these rows of ``layer.<weight>`` (dim 0) and of its bias, if it has one.

    Example:
        >>> fc = nn.Linear(3, 4)
        >>> keep_rows(fc, torch.tensor([0, 2])); fc.weight.shape, fc.bias.shape, fc.out_features
        (torch.Size([2, 3]), torch.Size([2]), 2)
    """
    old = getattr(layer, weight)
    rows = rows.to(old.device)
    setattr(layer, weight, new_parameter(old, old.index_select(0, rows)))
    if getattr(layer, bias, None) is not None:
        setattr(layer, bias, new_parameter(getattr(layer, bias), getattr(layer, bias).index_select(0, rows)))
    if isinstance(layer, nn.Linear):
        layer.out_features = int(rows.numel())


def keep_columns(layer: nn.Linear, columns: torch.Tensor) -> None:
    """Keep these input columns of a Linear layer (its bias is unchanged).

    Example:
        >>> fc = nn.Linear(3, 4)
        >>> keep_columns(fc, torch.tensor([1])); fc.weight.shape, fc.in_features
        (torch.Size([4, 1]), 1)
    """
    layer.weight = new_parameter(layer.weight, layer.weight.index_select(1, columns.to(layer.weight.device)))
    layer.in_features = int(columns.numel())
