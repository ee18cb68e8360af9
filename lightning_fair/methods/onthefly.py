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

The parametrisation is in :mod:`lightning_fair.methods.hypersphere`, the penalty in
:mod:`lightning_fair.methods.polarization` (both importable from here too); the pruning is here. The
Lightning callback is :class:`lightning_fair.OnTheFlyPruning` (``lightning/onthefly.py``).

Example:
    >>> import torch
    >>> from lightning_fair.demos import zoo
    >>> from lightning_fair.methods.onthefly import add_polarization_grad, make_hyperspherical, prune_on_the_fly
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

from ..runtime.optim import OptimizerSnapshot
from .hypersphere import (
    EPS,
    Hyperspherical,
    direction_of,
    hypersphere_of,
    hyperspherical_layers,
    make_hyperspherical,
    per_row,
    plain_state_dict,
    register_hypersphere,
    row_norms,
    select_layers,
    unregister_hypersphere,
)
from .polarization import (
    PenaltyStats,
    add_polarization_grad,
    polarization_stats,
    smallest_entries,
)

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

#: ``recovery`` values: one shared value per output channel, per layer, or plain zeros.
RECOVERIES = ("channel", "layer", None)


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
        return {
            "ratio": self.ratio,
            "recovery": self.recovery,
            "weights": self.weights,
            "pruned": self.pruned,
            "zero_fraction": self.zero_fraction,
            "layers": [vars(row).copy() for row in self.layers],
        }

    def __str__(self) -> str:
        width = max([len("layer")] + [len(r.name) for r in self.layers])
        lines = [
            f"{'layer':<{width}}  {'weights':>9}  {'pruned':>9}  {'t':>8}  {'energy':>7}  pruned entries hold",
            "-" * (width + 62),
        ]
        for r in self.layers:
            low, high = r.value_range
            held = "0" if self.recovery is None else (f"{low:.3g}" if low == high else f"{low:.3g} .. {high:.3g}")
            lines.append(
                f"{r.name:<{width}}  {r.weights:>9}  {r.pruned:>9}  {r.threshold:>8.2e}  "
                f"{r.pruned_energy:>7.2%}  {held}"
            )
        lines.append("-" * (width + 62))
        meaning = {
            None: "set to zero",
            "channel": "set to the mean of the pruned values, one shared value per output channel (not zero)",
            "layer": "set to the mean of the pruned values, one shared value per layer (not zero)",
        }
        lines.append(
            f"pruned {self.pruned} of {self.weights} weights ({self.pruned / max(self.weights, 1):.1%}) in "
            f"{len(self.layers)} layer(s), {meaning[self.recovery]}; exactly zero now: "
            f"{self.zero_fraction:.1%}; dense MACs unchanged"
        )
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
def prune_on_the_fly(
    model: nn.Module,
    ratio: float,
    recovery: Optional[str] = "channel",
    layers: Optional[Sequence[str]] = None,
    optimizers: Iterable[torch.optim.Optimizer] = (),
) -> OnTheFlyReport:
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
            raise ValueError(
                "the model has no hyperspherical layer: call make_hyperspherical(model) before "
                "training, or name the layers to prune with layers=[...]"
            )
    else:
        targets = select_layers(model, layers)
    plan = []
    for name, module in targets.items():  # everything decided before anything changes
        weight = module.weight.detach()
        w_hat = weight / per_row(row_norms(weight).clamp_min(EPS), weight)
        mask = smallest_entries(w_hat.abs(), ratio)
        new, held = _recovered(weight, mask, recovery)
        row = OnTheFlyLayer(
            name,
            weight.numel(),
            int(mask.sum()),
            float(w_hat.abs()[mask].max()) if mask.any() else 0.0,
            float((w_hat.square() * mask).sum() / w_hat.square().sum().clamp_min(EPS)),
            held,
        )
        plan.append((modules[name], mask, new, row))
    optimizers = list(optimizers)
    saved_optimizers = OptimizerSnapshot(optimizers)
    radii = [hypersphere_of(module).radius for module, *_ in plan if hypersphere_of(module) is not None]
    done = []
    try:
        for module, mask, new, row in plan:
            hook = hypersphere_of(module)
            done.append((module, hook, direction_of(module).detach().clone()))
            if hook is not None:
                unregister_hypersphere(module)
            module.weight.copy_(new)
        for optimizer in optimizers:
            drop_from_optimizer(optimizer, remove=radii, reset=[module.weight for module, *_ in plan])
    except BaseException:
        saved_optimizers.restore()
        for module, hook, saved in reversed(done):
            if hook is not None and hypersphere_of(module) is None:
                register_hypersphere(module, hook)
            direction_of(module).copy_(saved)
        raise
    weights = sum(row.weights for *_, row in plan)
    zeros = sum(int((new == 0).sum()) for _, _, new, _ in plan)
    names = list(targets)
    return OnTheFlyReport(
        ratio,
        recovery,
        [row for *_, row in plan],
        weights,
        sum(row.pruned for *_, row in plan),
        zeros / max(weights, 1),
        {name: mask for name, (_, mask, *_) in zip(names, plan)},
    )


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


def drop_from_optimizer(
    optimizer: torch.optim.Optimizer, remove: Iterable[torch.Tensor] = (), reset: Iterable[torch.Tensor] = ()
) -> None:
    """Take the ``remove`` parameters out of ``optimizer`` (groups and state) and forget the
    state of the ``reset`` ones (it described ``V``, not the pruned weight)."""
    removed = {id(p) for p in remove}
    forget = removed | {id(p) for p in reset}
    for group in optimizer.param_groups:
        group["params"][:] = [p for p in group["params"] if id(p) not in removed]
    for param in [p for p in optimizer.state if id(p) in forget]:
        del optimizer.state[param]


def check_ratio(ratio) -> None:
    """``ratio`` must be a number in (0, 1); ValueError saying so otherwise."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise ValueError(
            f"ratio (the fraction of weights to prune per layer) must be a number in (0, 1), got {ratio!r}"
        )
