"""Which modules hold FAIR units, and which modules lie between a unit and what U observes."""

from __future__ import annotations

from typing import Iterable, Optional, Union

import torch
from torch import nn

__all__ = [
    "input_column_norms",
    "PRUNABLE_TYPES",
    "NORM_TYPES",
    "ACTIVATION_TYPES",
    "PASS_THROUGH_TYPES",
    "is_depthwise",
    "resolve_ignored",
    "input_key",
    "consumer_of",
]

#: Modules whose output channels / features are FAIR units.
PRUNABLE_TYPES = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)
#: Channel-wise normalisations that may sit between a unit and its nonlinearity.
NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
#: Element-wise nonlinearities.
ACTIVATION_TYPES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
)
#: Shape-preserving modules that do not change what a unit means (identity in eval mode).
PASS_THROUGH_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity)


def is_depthwise(module: nn.Module) -> bool:
    """True for a conv whose every output channel sees exactly one input channel."""
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and module.groups == module.in_channels


def resolve_ignored(model: nn.Module, ignored_layers: Optional[Iterable[Union[str, nn.Module]]]) -> set:
    """Turn ``ignored_layers`` (module objects or qualified names) into a set of modules.

    A module given by name or object ignores it and every submodule.

    Raises:
        ValueError: a name that is not a submodule of ``model``, or an object that is not in it.
    """
    if ignored_layers is None:
        return set()
    if isinstance(ignored_layers, (str, nn.Module)):
        ignored_layers = [ignored_layers]
    by_name = dict(model.named_modules())
    members = {id(m) for m in by_name.values()}
    ignored = set()
    for item in ignored_layers:
        if isinstance(item, str):
            if item not in by_name:
                raise ValueError(
                    f"ignored_layers names {item!r}, which is not a submodule of the model; "
                    f"use a name from model.named_modules(), e.g. {next(iter(n for n in by_name if n), '')!r}"
                )
            module = by_name[item]
        elif isinstance(item, nn.Module):
            if id(item) not in members:
                raise ValueError(f"ignored_layers holds a {type(item).__name__} that is not part of the model")
            module = item
        else:
            raise TypeError(f"ignored_layers must hold module names or nn.Module objects, got {type(item).__name__}")
        ignored.update(module.modules())
    return ignored


def candidate_layers(model: nn.Module, ignored: set) -> dict:
    """``{name: module}`` of every prunable-type module not ignored, in registration order."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_TYPES) and module not in ignored
    }


def units_view(tensor: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``[B, C, M]`` view of a layer output: batch, units, and everything else flattened
    (a unit holder with its own ``units_view``, e.g. attention heads, gives it)."""
    custom = getattr(module, "units_view", None)
    if custom is not None:
        return custom(tensor)
    if isinstance(module, nn.Linear):
        if tensor.dim() == 2:
            return tensor.unsqueeze(-1)
        moved = tensor.movedim(-1, 1)
        return moved.reshape(moved.shape[0], moved.shape[1], -1)
    return tensor.reshape(tensor.shape[0], tensor.shape[1], -1)


def batch_sum_per_unit(tensor: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Sum of a layer-output-shaped tensor over everything but the unit dimension."""
    return units_view(tensor, module).sum(dim=(0, 2))


def input_column_norms(module: nn.Module) -> torch.Tensor:
    """Per input channel of a Conv/Linear, the L2 norm of the weights that read it (float64)."""
    weight = module.weight.detach()
    if isinstance(module, nn.modules.conv._ConvTransposeNd):  # [C_in, C_out / groups, *k]
        squares = weight.flatten(1).abs().pow(2).sum(1)
    elif isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:  # [C_out, C_in / g, *k]
        g = module.groups
        per_group = weight.reshape(g, weight.shape[0] // g, *weight.shape[1:])  # [g, C_out / g, C_in / g, *k]
        squares = per_group.transpose(1, 2).flatten(2).abs().pow(2).sum(2).flatten()  # group-major: channel order
    else:  # Conv [C_out, C_in, *k], Linear [out, in]
        squares = weight.transpose(0, 1).flatten(1).abs().pow(2).sum(1)
    return squares.double().cpu().sqrt()


#: suffix of the statistics entry that observes a Conv/Linear's input (see :func:`input_key`)
_INPUT_SUFFIX = "<input>"


def input_key(consumer: str) -> str:
    """The key under which the statistics of ``consumer``'s input are kept beside the layers' (statistics, memory)."""
    return consumer + _INPUT_SUFFIX


def consumer_of(key: str) -> Optional[str]:
    """The consumer whose input ``key`` observes, or None for a layer's own entry."""
    return key[: -len(_INPUT_SUFFIX)] if key.endswith(_INPUT_SUFFIX) else None
