"""Point optimizers at a pruned model's new parameters, carrying their state for kept channels.

Pruning replaces every changed parameter with a new ``nn.Parameter``; an optimizer built
before still holds the old ones. :func:`repoint_optimizer` swaps them in each param group
(same position, so schedulers and per-group hyper-parameters are untouched) and slices every
state tensor shaped like the parameter (Adam's moments, SGD's momentum, ...) to the kept
channels. State it cannot map (e.g. the input side of a grouped conv) is dropped for that
parameter only, which the optimizer treats as a fresh start for it.
"""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

__all__ = ["OptimizerSnapshot", "repoint_optimizer", "slice_like"]


def _dim_sides(module: nn.Module, param_name: str) -> List[str]:
    """Which channel side ('out'/'in') each leading dimension of a parameter follows."""
    if param_name == "weight":
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            return ["in", "out"] if module.groups == 1 else ["in"]
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            return ["out", "in"] if getattr(module, "groups", 1) == 1 else ["out"]
    return ["out"]


def slice_like(
    tensor: torch.Tensor, old: torch.Tensor, new: torch.Tensor, sides: List[str], kept: Dict[str, torch.Tensor]
):
    """``tensor`` (shaped like ``old``) cut down to ``new``'s shape along the kept channels, or None."""
    if not isinstance(tensor, torch.Tensor) or tensor.shape != old.shape:
        return tensor if not isinstance(tensor, torch.Tensor) or tensor.dim() == 0 else None
    result = tensor
    for dim, side in enumerate(sides):
        if dim < new.dim() and new.shape[dim] != old.shape[dim]:
            if side not in kept:
                return None
            result = result.index_select(dim, kept[side].to(result.device))
    return result if result.shape == new.shape else None


def repoint_optimizer(
    optimizer: torch.optim.Optimizer,
    old_params: Dict[str, nn.Parameter],
    model: nn.Module,
    kept: Dict[str, Dict[str, torch.Tensor]],
) -> int:
    """Swap ``old_params`` (name -> parameter before pruning) for ``model``'s current ones.

    Returns the number of parameters whose state had to be dropped.
    """
    modules = dict(model.named_modules())
    new_params = dict(model.named_parameters())
    by_id = {id(p): name for name, p in old_params.items()}
    dropped = 0
    for group in optimizer.param_groups:
        for position, param in enumerate(group["params"]):
            name = by_id.get(id(param))
            if name is None or name not in new_params or new_params[name] is param:
                continue
            new = new_params[name]
            group["params"][position] = new
            state = optimizer.state.pop(param, None)
            if not state:
                continue
            module_name, _, param_name = name.rpartition(".")
            sides = _dim_sides(modules[module_name], param_name)
            carried = {
                key: slice_like(value, param, new, sides, kept.get(module_name, {})) for key, value in state.items()
            }
            if any(v is None for v in carried.values()):
                dropped += 1
                continue
            optimizer.state[new] = carried
    return dropped


class OptimizerSnapshot:
    """What a pruning may change in optimizers, to put back exactly if it fails: the list of
    param groups, every group's entries and params list (the same list objects), and every
    per-parameter state dict with its entries.

    Example:
        >>> p = nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
        >>> snapshot = OptimizerSnapshot([opt])
        >>> opt.param_groups[0]["params"][:] = [nn.Parameter(torch.ones(1))]
        >>> snapshot.restore()
        >>> opt.param_groups[0]["params"][0] is p
        True
    """

    def __init__(self, optimizers):
        self.optimizers = list(optimizers)
        self.groups = [
            (opt, list(opt.param_groups), [(g, dict(g), list(g["params"])) for g in opt.param_groups])
            for opt in self.optimizers
        ]
        self.states = [(opt, {p: (s, dict(s)) for p, s in opt.state.items()}) for opt in self.optimizers]

    def restore(self) -> None:
        for opt, param_groups, groups in self.groups:
            opt.param_groups[:] = param_groups
            for group, items, params in groups:
                group.clear()
                group.update(items)
                group["params"][:] = params  # the same list object, as it was
        for opt, states in self.states:
            opt.state.clear()
            for param, (state, items) in states.items():
                state.clear()
                state.update(items)
                opt.state[param] = state
