"""Pruning On-the-Fly (Liu & Liu, arXiv 2212.12651): our reconstruction, in plain PyTorch.

The paper's text is not available to us; from its abstract and our design notes we built:

* **Hyperspherical layers** (:func:`make_hyperspherical`): every chosen Conv/Linear weight is
  re-parametrised per output filter as ``W[o] = radius[o] * V[o] / ||V[o]||``
  (``torch.nn.utils.parametrize``). ``V`` is the layer's own weight Parameter (the same object,
  so an optimizer built before still trains it); ``radius`` is a new learnable Parameter
  initialised to the filter norms, so registering changes nothing in the network's function
  and its function class stays that of the plain layer (this is weight normalisation). The
  *normalised weights* ``w_hat[o] = V[o] / ||V[o]||`` lie on the unit sphere, one sphere per
  filter: that is where the penalty acts.
* **The polarising penalty** (:func:`add_polarization_grad`): per layer, with ``S`` the
  ``round(ratio * n)`` entries of smallest ``|w_hat|`` (``t``, the ``ratio``-quantile of
  ``|w_hat|``, recomputed at every optimizer step),
  ``P = penalty * (sum_{i in S} |w_hat_i| - beta * sum_{i not in S} |w_hat_i|)``, summed over
  the layers. Its gradient with respect to ``V`` (closed form, ``S`` held fixed, tangent to
  the sphere) is *added to* ``V.grad``; the training loss itself is never changed. Because
  each filter keeps unit norm on the sphere, pushing ``S`` towards zero moves that mass onto
  the kept entries instead of shrinking the layer.
* **Pruning without fine-tuning, with mean recovery** (:func:`prune_on_the_fly`): the
  parametrisation is removed keeping the final weights, then the same ``S`` is pruned: set to
  zero (``recovery=None``) or, as the abstract's "replacing the pruned values with their mean",
  every pruned entry is set to the mean of the pruned entries' values, one shared value per
  output channel (``recovery="channel"``) or per layer (``recovery="layer"``). With recovery
  the pruned entries are therefore **not zero**: they are tied to that shared value (storable
  as a sparse matrix plus one scalar per channel or layer). Dense MACs do not change either way.
  For inputs with a common mean ``mu`` the pruned entries' expected contribution
  ``mu * sum_S W`` is kept exactly by the tied mean and lost by zeroing.

The Lightning callback is :class:`lightning_fair.OnTheFlyPruning` (``onthefly_callback.py``).

Example:
    >>> import torch
    >>> from lightning_fair import zoo
    >>> from lightning_fair.onthefly import add_polarization_grad, make_hyperspherical, prune_on_the_fly
    >>> model = zoo.mlp(in_features=64, hidden=(32,))
    >>> make_hyperspherical(model)           # the output layer is left out
    ['features.1']
    >>> optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    >>> x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    >>> torch.nn.functional.cross_entropy(model(x), y).backward()
    >>> stats = add_polarization_grad(model, ratio=0.5, penalty=1e-3)
    >>> optimizer.step()
    >>> report = prune_on_the_fly(model, ratio=0.5, recovery="channel")
    >>> report.pruned, report.zero_fraction
    (1024, 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from .layers import resolve_ignored
from .optim import OptimizerSnapshot

__all__ = [
    "Hyperspherical",
    "OnTheFlyReport",
    "PenaltyStats",
    "RECOVERIES",
    "add_polarization_grad",
    "drop_from_optimizer",
    "hold_pruned",
    "hyperspherical_layers",
    "make_hyperspherical",
    "plain_state_dict",
    "polarization_stats",
    "prune_on_the_fly",
]

#: Layer types that can be made hyperspherical (per output filter: dim 0 of the weight).
SUPPORTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: ``recovery`` values: one shared value per output channel, per layer, or plain zeros.
RECOVERIES = ("channel", "layer", None)
_EPS = 1e-12
_ORIGINAL = "parametrizations.weight.original"
_RADIUS = "parametrizations.weight.0.radius"


def _row_norms(weight: torch.Tensor) -> torch.Tensor:
    return weight.flatten(1).norm(dim=1)


def _per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


class Hyperspherical(nn.Module):
    """``W = radius * V / ||V||`` per output filter (dim 0); ``radius`` is learnable.

    Registered with ``torch.nn.utils.parametrize`` by :func:`make_hyperspherical`; ``V`` is
    ``module.parametrizations.weight.original`` (the layer's weight Parameter object).
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.radius = nn.Parameter(_row_norms(weight.detach()).clone(), requires_grad=weight.requires_grad)

    def forward(self, direction: torch.Tensor) -> torch.Tensor:
        return direction * _per_row(self.radius / _row_norms(direction).clamp_min(_EPS), direction)


def hyperspherical_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """``{name: module}`` of the layers of ``model`` whose weight :func:`make_hyperspherical` parametrised."""
    return {name: module for name, module in model.named_modules() if hypersphere_of(module) is not None}


def hypersphere_of(module: nn.Module) -> Optional[Hyperspherical]:
    """Our hyperspherical parametrisation of ``module.weight`` (None if it has none)."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    chain = module.parametrizations.weight
    return chain[0] if len(chain) == 1 and isinstance(chain[0], Hyperspherical) else None


def select_layers(model: nn.Module, layers: Optional[Sequence[str]] = None, ignored_layers=None,
                  include_output: bool = False) -> Dict[str, nn.Module]:
    """The layers to make hyperspherical: ``layers`` by name, or every Conv1d/2d/3d and Linear
    not in ``ignored_layers``, less the last one registered (the output layer) unless
    ``include_output``. ValueError for a name that is not such a layer."""
    modules = dict(model.named_modules())
    if layers is not None:
        chosen = {}
        for name in layers:
            if name not in modules or not isinstance(modules[name], SUPPORTED):
                raise ValueError(f"layers names {name!r}, which is not a Conv1d/2d/3d or Linear of the model; "
                                 "use names from model.named_modules()")
            chosen[name] = modules[name]
        return chosen
    ignored = resolve_ignored(model, ignored_layers)
    candidates = [(n, m) for n, m in modules.items() if isinstance(m, SUPPORTED)]
    if candidates and not include_output:
        candidates = candidates[:-1]
    return {n: m for n, m in candidates if m not in ignored}


def make_hyperspherical(model: nn.Module, layers: Optional[Sequence[str]] = None, ignored_layers=None,
                        include_output: bool = False) -> List[str]:
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
            raise ValueError(f"{name}.weight already has another parametrization; leave the layer out "
                             "with ignored_layers=[...]")
    for module in chosen.values():
        if hypersphere_of(module) is None:
            _register(module, Hyperspherical(module.weight))
    return list(chosen)


def _register(module: nn.Module, hook: Hyperspherical) -> None:
    parametrize.register_parametrization(module, "weight", hook)
    hook.hook_id = module._register_load_state_dict_pre_hook(_load_plain_weight, with_module=True).id


def _load_plain_weight(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: a plain ``weight`` entry becomes ``V = W``, ``radius = ||W||``."""
    if prefix + "weight" in state_dict and prefix + _ORIGINAL not in state_dict and hypersphere_of(module) is not None:
        weight = state_dict.pop(prefix + "weight")
        state_dict[prefix + _ORIGINAL] = weight
        state_dict[prefix + _RADIUS] = _row_norms(weight)


def unregister_hypersphere(module: nn.Module, keep_original: bool = False) -> None:
    """Remove our parametrisation, the weight keeping its final value (the same Parameter object);
    ``keep_original``: the weight becomes ``V`` as it is (exactly a plain weight loaded into it)."""
    hook = hypersphere_of(module)
    module._load_state_dict_pre_hooks.pop(getattr(hook, "hook_id", None), None)
    # torch deletes the weight property from the module's class, which a deepcopy of the model
    # shares: give this module a class of its own first, so copies stay intact
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__,
                            {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")})
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=not keep_original)


# --------------------------------------------------------------------------- the penalty
def _direction(module: nn.Module) -> torch.Tensor:
    """``V`` of a hyperspherical layer, the weight itself for a plain one."""
    return module.parametrizations.weight.original if hypersphere_of(module) is not None else module.weight


def _smallest(magnitude: torch.Tensor, ratio: float) -> torch.Tensor:
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
    norms = _row_norms(direction).clamp_min(_EPS)
    w_hat = direction / _per_row(norms, direction)
    magnitude = w_hat.abs()
    mask = _smallest(magnitude, ratio)
    coefficient = torch.where(mask, torch.ones_like(w_hat), torch.full_like(w_hat, -beta))
    return norms, w_hat, magnitude, mask, coefficient


def add_polarization_grad(model: nn.Module, ratio: float, penalty: float, beta: float = 0.2,
                          params: Optional[Iterable[torch.Tensor]] = None) -> PenaltyStats:
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
        direction = _direction(module)
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
            along = _per_row((u * w_hat).flatten(1).sum(1), w_hat)
            grad = penalty * (u - along * w_hat) / _per_row(norms, w_hat)
            if direction.grad is None:
                direction.grad = grad.to(direction.dtype)
            else:
                direction.grad.add_(grad.to(direction.grad.dtype))
    separation = (kept_sum / kept_n.clamp_min(1)) / (pruned_sum / pruned_n.clamp_min(1)).clamp_min(_EPS)
    return PenaltyStats(value, pruned / total.clamp_min(_EPS), separation)


# --------------------------------------------------------------------------- pruning
@dataclass
class OnTheFlyLayer:
    """One pruned layer: entries, how many were pruned, and what they hold now."""

    name: str
    weights: int
    pruned: int
    #: max |w_hat| among the pruned entries (the threshold t actually used)
    threshold: float
    #: share of the normalised weights' squared norm in the pruned entries
    pruned_energy: float
    #: the shared value(s) the pruned entries now hold: [min, max] over channels (0, 0 when zeroed)
    value_range: List[float]


@dataclass
class OnTheFlyReport:
    """What :func:`prune_on_the_fly` did. ``print(report)`` shows a table.

    ``pruned`` entries (of ``weights`` in the pruned layers) were set to zero
    (``recovery=None``) or to one shared value per output channel / per layer; ``zero_fraction``
    is the share of those layers' weights that are exactly zero now (with recovery usually 0).
    ``masks`` (not saved by :meth:`to_dict`): ``{layer: bool tensor}`` of the pruned entries.
    """

    ratio: float
    recovery: Optional[str]
    layers: List[OnTheFlyLayer]
    weights: int
    pruned: int
    zero_fraction: float
    masks: Dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """Plain data (no tensors)."""
        return {"ratio": self.ratio, "recovery": self.recovery, "weights": self.weights, "pruned": self.pruned,
                "zero_fraction": self.zero_fraction, "layers": [vars(row).copy() for row in self.layers]}

    def __str__(self) -> str:
        width = max([len("layer")] + [len(r.name) for r in self.layers])
        lines = [f"{'layer':<{width}}  {'weights':>9}  {'pruned':>9}  {'t':>8}  {'energy':>7}  pruned entries hold",
                 "-" * (width + 62)]
        for r in self.layers:
            low, high = r.value_range
            held = "0" if self.recovery is None else (f"{low:.3g}" if low == high else f"{low:.3g} .. {high:.3g}")
            lines.append(f"{r.name:<{width}}  {r.weights:>9}  {r.pruned:>9}  {r.threshold:>8.2e}  "
                         f"{r.pruned_energy:>7.2%}  {held}")
        lines.append("-" * (width + 62))
        meaning = {None: "set to zero",
                   "channel": "set to the mean of the pruned values, one shared value per output channel (not zero)",
                   "layer": "set to the mean of the pruned values, one shared value per layer (not zero)"}
        lines.append(f"pruned {self.pruned} of {self.weights} weights ({self.pruned / max(self.weights, 1):.1%}) in "
                     f"{len(self.layers)} layer(s), {meaning[self.recovery]}; exactly zero now: "
                     f"{self.zero_fraction:.1%}; dense MACs unchanged")
        return "\n".join(lines)


def _recovered(weight: torch.Tensor, mask: torch.Tensor, recovery: Optional[str]):
    """``weight`` with the masked entries replaced, and the [min, max] of the value(s) they hold."""
    if recovery is None:
        return weight.masked_fill(mask, 0), [0.0, 0.0]
    rows, where = weight.flatten(1).double(), mask.flatten(1)
    if recovery == "layer":
        mean = rows[where].mean() if where.any() else rows.new_zeros(())
        means = mean.expand(rows.shape[0])
    else:
        means = (rows * where).sum(1) / where.sum(1).clamp_min(1)
    new = torch.where(where, means[:, None], rows).to(weight.dtype).view_as(weight)
    held = means[where.any(1)]
    return new, ([float(held.min()), float(held.max())] if held.numel() else [0.0, 0.0])


@torch.no_grad()
def prune_on_the_fly(model: nn.Module, ratio: float, recovery: Optional[str] = "channel",
                     layers: Optional[Sequence[str]] = None,
                     optimizers: Iterable[torch.optim.Optimizer] = ()) -> OnTheFlyReport:
    """Remove the hyperspherical parametrisation and prune each layer's smallest-``|w_hat|`` entries.

    Per layer, the ``round(ratio * n)`` entries of smallest normalised magnitude ``|w_hat|``
    (``w_hat = W / ||W||`` per output filter) are set to zero (``recovery=None``) or to the mean
    of their values per output channel (``"channel"``) or per layer (``"layer"``). ``layers``:
    names to prune (plain layers too: their weights are ranked the same way); by default the
    hyperspherical layers. Weight Parameters stay the same objects. ``optimizers``: each loses
    the ``radius`` Parameters and forgets its state for the pruned weights (it described ``V``),
    so training can go on (see :func:`hold_pruned` to keep pruned entries pruned). Atomic: on
    any failure the model (parametrisations, values) and the optimizers are put back as they
    were and the error propagates.

    Example: ``print(prune_on_the_fly(model, 0.5, recovery="channel", optimizers=[optimizer]))``.
    """
    check_ratio(ratio)
    if recovery not in RECOVERIES:
        raise ValueError(f"recovery must be 'channel', 'layer' or None, got {recovery!r}")
    modules = dict(model.named_modules())
    if layers is None:
        targets = hyperspherical_layers(model)
        if not targets:
            raise ValueError("the model has no hyperspherical layer: call make_hyperspherical(model) before "
                             "training, or name the layers to prune with layers=[...]")
    else:
        targets = select_layers(model, layers)
    plan = []
    for name, module in targets.items():  # everything decided before anything changes
        weight = module.weight.detach()
        w_hat = weight / _per_row(_row_norms(weight).clamp_min(_EPS), weight)
        mask = _smallest(w_hat.abs(), ratio)
        new, held = _recovered(weight, mask, recovery)
        row = OnTheFlyLayer(name, weight.numel(), int(mask.sum()),
                            float(w_hat.abs()[mask].max()) if mask.any() else 0.0,
                            float((w_hat.square() * mask).sum() / w_hat.square().sum().clamp_min(_EPS)), held)
        plan.append((modules[name], mask, new, row))
    optimizers = list(optimizers)
    saved_optimizers = OptimizerSnapshot(optimizers)
    radii = [hypersphere_of(module).radius for module, *_ in plan if hypersphere_of(module) is not None]
    done = []
    try:
        for module, mask, new, row in plan:
            hook = hypersphere_of(module)
            done.append((module, hook, _direction(module).detach().clone()))
            if hook is not None:
                unregister_hypersphere(module)
            module.weight.copy_(new)
        for optimizer in optimizers:
            drop_from_optimizer(optimizer, remove=radii, reset=[module.weight for module, *_ in plan])
    except BaseException:
        saved_optimizers.restore()
        for module, hook, saved in reversed(done):
            if hook is not None and hypersphere_of(module) is None:
                _register(module, hook)
            _direction(module).copy_(saved)
        raise
    weights = sum(row.weights for *_, row in plan)
    zeros = sum(int((new == 0).sum()) for _, _, new, _ in plan)
    names = list(targets)
    return OnTheFlyReport(ratio, recovery, [row for *_, row in plan], weights, sum(row.pruned for *_, row in plan),
                          zeros / max(weights, 1), {name: mask for name, (_, mask, *_) in zip(names, plan)})


@torch.no_grad()
def hold_pruned(model: nn.Module, masks: Dict[str, torch.Tensor], recovery: Optional[str]) -> None:
    """Keep pruned entries pruned while training goes on: their gradients are zeroed
    (``recovery=None``) or replaced by their mean per output channel / layer, so entries tied
    to one value get the same update (plain SGD/Adam, state started after pruning)."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        weight = getattr(modules.get(name), "weight", None)
        if weight is None or weight.grad is None or weight.shape != mask.shape:
            continue  # gone, or reshaped since (e.g. channels removed by FAIR pruning)
        mask = mask.to(weight.grad.device)
        weight.grad.copy_(_recovered(weight.grad, mask, recovery)[0])


def drop_from_optimizer(optimizer: torch.optim.Optimizer, remove: Iterable[torch.Tensor] = (),
                        reset: Iterable[torch.Tensor] = ()) -> None:
    """Take the ``remove`` parameters out of ``optimizer`` (groups and state) and forget the
    state of the ``reset`` ones (it described ``V``, not the pruned weight)."""
    removed = {id(p) for p in remove}
    forget = removed | {id(p) for p in reset}
    for group in optimizer.param_groups:
        group["params"][:] = [p for p in group["params"] if id(p) not in removed]
    for param in [p for p in optimizer.state if id(p) in forget]:
        del optimizer.state[param]


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
            plain[prefix + "weight"] = value * _per_row(radius / _row_norms(value).clamp_min(_EPS), value)
        else:
            plain[key] = value
    return plain


def check_ratio(ratio) -> None:
    """``ratio`` must be a number in (0, 1); ValueError saying so otherwise."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise ValueError(f"ratio (the fraction of weights to prune per layer) must be a number in (0, 1), got {ratio!r}")
