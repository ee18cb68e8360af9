"""Hyperspherical layers: ``W[o] = radius[o] * V[o] / ||V[o]||`` per output filter.

The parametrisation that on-the-fly pruning (:mod:`lightning_fair.methods.onthefly`) trains: registered
with ``torch.nn.utils.parametrize`` on a Conv/Linear weight, removed keeping the final weights,
and folded out of a state_dict for the plain model. ``V`` is the layer's own weight Parameter
(the same object, so an optimizer built before still trains it); ``radius`` is a new learnable
Parameter initialised to the filter norms, so registering changes nothing in the network's function.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..units.channels import resolve_ignored

__all__ = [
    "EPS",
    "Hyperspherical",
    "SUPPORTED",
    "direction_of",
    "hypersphere_of",
    "hyperspherical_layers",
    "make_hyperspherical",
    "per_row",
    "plain_state_dict",
    "register_hypersphere",
    "row_norms",
    "select_layers",
    "unregister_hypersphere",
]

#: Layer types that can be made hyperspherical (per output filter: dim 0 of the weight).
SUPPORTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: norms are clamped to at least this before dividing by them
EPS = 1e-12
_ORIGINAL = "parametrizations.weight.original"
_RADIUS = "parametrizations.weight.0.radius"


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each output filter (row of dim 0)."""
    return weight.flatten(1).norm(dim=1)


def per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` (one per output filter) shaped to broadcast against ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class Hyperspherical(nn.Module):
    """``W = radius * V / ||V||`` per output filter (dim 0); ``radius`` is learnable.

    Registered with ``torch.nn.utils.parametrize`` by :func:`make_hyperspherical`; ``V`` is
    ``module.parametrizations.weight.original`` (the layer's weight Parameter object).
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.radius = nn.Parameter(row_norms(weight.detach()).clone(), requires_grad=weight.requires_grad)

    def forward(self, direction: torch.Tensor) -> torch.Tensor:
        return direction * per_row(self.radius / row_norms(direction).clamp_min(EPS), direction)


def hyperspherical_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """``{name: module}`` of the layers of ``model`` whose weight :func:`make_hyperspherical` parametrised."""
    return {name: module for name, module in model.named_modules() if hypersphere_of(module) is not None}


def hypersphere_of(module: nn.Module) -> Optional[Hyperspherical]:
    """Our hyperspherical parametrisation of ``module.weight`` (None if it has none)."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    chain = module.parametrizations.weight
    return chain[0] if len(chain) == 1 and isinstance(chain[0], Hyperspherical) else None


def select_layers(
    model: nn.Module, layers: Optional[Sequence[str]] = None, ignored_layers=None, include_output: bool = False
) -> Dict[str, nn.Module]:
    """The layers to make hyperspherical: ``layers`` by name, or every Conv1d/2d/3d and Linear
    not in ``ignored_layers``, less the last one registered (the output layer) unless
    ``include_output``. ValueError for a name that is not such a layer."""
    modules = dict(model.named_modules())
    if layers is not None:
        chosen = {}
        for name in layers:
            if name not in modules or not isinstance(modules[name], SUPPORTED):
                raise ValueError(
                    f"layers names {name!r}, which is not a Conv1d/2d/3d or Linear of the model; "
                    "use names from model.named_modules()"
                )
            chosen[name] = modules[name]
        return chosen
    ignored = resolve_ignored(model, ignored_layers)
    candidates = [(n, m) for n, m in modules.items() if isinstance(m, SUPPORTED)]
    if candidates and not include_output:
        candidates = candidates[:-1]
    return {n: m for n, m in candidates if m not in ignored}


def make_hyperspherical(
    model: nn.Module, layers: Optional[Sequence[str]] = None, ignored_layers=None, include_output: bool = False
) -> List[str]:
    """Register :class:`Hyperspherical` on the chosen layers' weights (see :func:`select_layers`).

    Layers already hyperspherical are kept as they are; a weight with another parametrisation
    is refused (ValueError). The layer's weight Parameter stays the same object (now
    ``parametrizations.weight.original``), so optimizers built before keep training it; the new
    ``radius`` Parameters are only in optimizers built after (Lightning: register in ``setup``).
    A plain ``weight`` entry given to ``load_state_dict`` later is loaded as ``V = W`` with
    ``radius = ||W||`` (the same function). Returns the names of the hyperspherical layers.

    Example: ``make_hyperspherical(model, ignored_layers=["features.0"])``.
    """
    chosen = select_layers(model, layers, ignored_layers, include_output)
    for name, module in chosen.items():
        if parametrize.is_parametrized(module, "weight") and hypersphere_of(module) is None:
            raise ValueError(
                f"{name}.weight already has another parametrization; leave the layer out with ignored_layers=[...]"
            )
    for module in chosen.values():
        if hypersphere_of(module) is None:
            register_hypersphere(module, Hyperspherical(module.weight))
    return list(chosen)


def register_hypersphere(module: nn.Module, hook: Hyperspherical) -> None:
    """Register ``hook`` on ``module.weight``; a plain ``weight`` loaded into the module later becomes
    ``V = W``, ``radius = ||W||``."""
    parametrize.register_parametrization(module, "weight", hook)
    hook.hook_id = module._register_load_state_dict_pre_hook(_load_plain_weight, with_module=True).id


def _load_plain_weight(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: a plain ``weight`` entry becomes ``V = W``, ``radius = ||W||``."""
    if prefix + "weight" in state_dict and prefix + _ORIGINAL not in state_dict and hypersphere_of(module) is not None:
        weight = state_dict.pop(prefix + "weight")
        state_dict[prefix + _ORIGINAL] = weight
        state_dict[prefix + _RADIUS] = row_norms(weight)


def unregister_hypersphere(module: nn.Module, keep_original: bool = False) -> None:
    """Remove our parametrisation, the weight keeping its final value (the same Parameter object);
    ``keep_original``: the weight becomes ``V`` as it is (exactly a plain weight loaded into it)."""
    hook = hypersphere_of(module)
    module._load_state_dict_pre_hooks.pop(getattr(hook, "hook_id", None), None)
    # torch deletes the weight property from the module's class, which a deepcopy of the model
    # shares: give this module a class of its own first, so copies stay intact
    cls = type(module)
    module.__class__ = type(
        cls.__name__, cls.__bases__, {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    )
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=not keep_original)


def direction_of(module: nn.Module) -> torch.Tensor:
    """``V`` of a hyperspherical layer, the weight itself for a plain one."""
    return module.parametrizations.weight.original if hypersphere_of(module) is not None else module.weight


def plain_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A state_dict of a model with hyperspherical layers, with each ``<layer>.parametrizations.
    weight.original`` / ``.0.radius`` pair folded into ``<layer>.weight`` (``radius * V / ||V||``),
    to load into the plain model (e.g. a checkpoint ``ModelCheckpoint`` wrote during training).

    Example: ``model.load_state_dict(plain_state_dict(torch.load(path, weights_only=True)["state_dict"]))``.
    """
    plain = {}
    for key, value in state_dict.items():
        if key.endswith(_RADIUS):
            continue
        if key.endswith(_ORIGINAL):
            prefix = key[: -len(_ORIGINAL)]
            if prefix + _RADIUS not in state_dict:
                raise ValueError(f"{key} has no {prefix + _RADIUS}: not a hyperspherical layer of lightning_fair")
            radius = state_dict[prefix + _RADIUS]
            plain[prefix + "weight"] = value * per_row(radius / row_norms(value).clamp_min(EPS), value)
        else:
            plain[key] = value
    return plain
