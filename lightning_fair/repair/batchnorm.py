"""Re-estimate BatchNorm running statistics after pruning.

Removing channels changes what every later layer sees: the input distribution of each
following norm layer shifts, but its ``running_mean``/``running_var`` still describe the
unpruned network. In eval mode those stale statistics mis-normalise every activation, and on
BatchNorm networks they cost most of the one-shot accuracy of a structured prune (the weights
are often fine; the normalisation is not). A few forward passes over calibration data fix it.

:func:`recalibrate_bn` works like :func:`torch.optim.swa_utils.update_bn`: the norm layers
normalise with batch statistics (train mode) while every other module stays in eval mode
(dropout off), under ``torch.no_grad()``. Instead of a running average of per-batch statistics
it pools the exact first and second moments of each norm's input over all samples, positions
and batches (float64, per-batch mean/M2 merged with Chan's parallel formula), so unequal batch
sizes are weighted correctly and large activation offsets lose no precision. Only
``running_mean`` and ``running_var`` change; the model is otherwise handed back bit for bit,
and left untouched if the pass fails.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ..runtime.batches import batch_inputs, call_model, inputs_to, model_device
from ..runtime.distributed import all_gather_tensor, is_distributed
from ..runtime.guards import on_uncompiled, preserved_modes

__all__ = ["recalibrate_bn"]


class _Moments:
    """Per-channel pooled count, mean and sum of squared deviations (M2), in float64."""

    def __init__(self):
        self.count = 0
        self.mean: Optional[torch.Tensor] = None
        self.m2: Optional[torch.Tensor] = None

    def add(self, x: torch.Tensor, channel_dim: int) -> None:
        if x.numel() == 0:
            return
        x = x.detach().to(torch.float64)
        dims = [d for d in range(x.dim()) if d != channel_dim]
        n = x.numel() // x.shape[channel_dim]
        var, mean = torch.var_mean(x, dim=dims, correction=0) if dims else (torch.zeros_like(x), x)
        self.merge(n, mean, var * n)

    def merge(self, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Pool in another set of ``n`` values per channel with its mean and M2 (Chan et al.)."""
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total


def _pool_across_ranks(norms: Dict[str, _NormBase], moments: Dict[str, "_Moments"]) -> None:
    """Replace each rank's moments by the pooled moments of all ranks (merged in rank order)."""
    for name in sorted(norms):
        mo, template = moments[name], norms[name].running_mean
        mean = mo.mean if mo.mean is not None else torch.zeros(template.shape, dtype=torch.float64)
        m2 = mo.m2 if mo.m2 is not None else torch.zeros(template.shape, dtype=torch.float64)
        packed = torch.cat([torch.tensor([float(mo.count)], dtype=torch.float64), mean.cpu(), m2.cpu()])
        pooled = _Moments()
        for part in all_gather_tensor(packed.to(template.device)):
            part = part.cpu()
            count, c = int(part[0]), template.numel()
            if count:
                pooled.merge(count, part[1 : 1 + c].reshape(template.shape), part[1 + c :].reshape(template.shape))
        moments[name] = pooled


def _tracked_norms(model: nn.Module) -> Dict[str, _NormBase]:
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, _NormBase) and m.track_running_stats and m.running_mean is not None
    }


@on_uncompiled
def recalibrate_bn(
    model: nn.Module,
    dataloader,
    *,
    max_batches: Optional[int] = None,
    unpack: Optional[Callable] = None,
    distributed: bool = False,
) -> List[str]:
    """Re-estimate, in place, the running mean/variance of every norm layer from calibration data.

    Every :class:`~torch.nn.modules.batchnorm._NormBase` module that tracks running statistics
    (BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm with ``track_running_stats=True``) gets
    ``running_mean`` := the mean and ``running_var`` := the unbiased variance (``N/(N-1)``, as
    BatchNorm uses) of its input, pooled exactly over all samples, spatial positions and batches.
    The pass runs under ``torch.no_grad()`` with the norm layers in train mode and every other
    module in eval mode (as :func:`torch.optim.swa_utils.update_bn`). Call it after pruning and
    before evaluating or fine-tuning; the training images make good calibration data.

    Nothing else changes: ``num_batches_tracked``, ``momentum``, other parameters and buffers,
    ``.grad``, ``requires_grad`` and train/eval flags are handed back exactly as they were. If
    the pass raises, the model is left untouched and the error propagates. Works inside
    ``torch.inference_mode()`` (e.g. Lightning's ``trainer.validate``).

    Args:
        model: the network, changed in place.
        dataloader: an iterable of batches: tensors (the inputs), ``(inputs,)``,
            ``(inputs, target, ...)`` or dicts with ``x``/``input``/``image`` keys. Inputs are
            moved to the device of the model's first parameter or buffer.
        max_batches: use at most this many batches (default: all).
        unpack: ``batch -> (inputs, target)`` (or ``-> inputs``) for other batch layouts;
            default :func:`lightning_fair.runtime.batches.default_unpack`.
        distributed: inside a ``torch.distributed`` process group (e.g. DDP), each process
            passes its own shard and the moments of all processes are pooled, so every rank ends
            with the same statistics (collective: call on every rank).

    Returns:
        The qualified names of the re-estimated layers, in ``named_modules`` order. A norm layer
        that never ran during the pass keeps its statistics and is reported with a warning.
        A model without such layers returns ``[]`` without reading the dataloader.

    Raises:
        ValueError: ``max_batches`` is not a positive int, or the dataloader yields no batch.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_fair import recalibrate_bn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
        >>> batches = [torch.randn(8, 1, 6, 6) + 5.0 for _ in range(3)]
        >>> recalibrate_bn(model, batches)
        ['1']
        >>> bool((model[1].running_mean != 0).all()), int(model[1].num_batches_tracked), model.training
        (True, 0, False)
    """
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise ValueError(f"max_batches must be a positive int or None (use every batch), got {max_batches!r}")
    norms = _tracked_norms(model)
    if not norms:
        return []
    lazy = [name for name, m in norms.items() if isinstance(m.running_mean, nn.parameter.UninitializedBuffer)]
    if lazy:
        raise ValueError(
            f"norm layers {lazy} are lazy and not initialised yet; run one forward pass through "
            "the model before recalibrate_bn"
        )

    iterator = iter(dataloader)
    sentinel = object()
    first = next(iterator, sentinel)
    if first is sentinel:
        raise ValueError(
            "the dataloader passed to recalibrate_bn yielded no batches; pass a dataloader over "
            "(a few hundred) calibration samples, e.g. the training data"
        )

    device = model_device(model)
    moments = {name: _Moments() for name in norms}

    def make_hook(name: str):
        def hook(module, args):
            x = args[0]
            # InstanceNorm accepts unbatched (C, *) input; everything else has channels in dim 1.
            unbatched = hasattr(module, "_get_no_batch_dim") and x.dim() == module._get_no_batch_dim()
            moments[name].add(x, 0 if unbatched else 1)

        return hook

    with torch.inference_mode(False), torch.no_grad():
        saved = {
            name: (
                m.momentum,
                m.running_mean.clone(),
                m.running_var.clone(),
                None if m.num_batches_tracked is None else m.num_batches_tracked.clone(),
            )
            for name, m in norms.items()
        }
        norm_ids = {id(m) for m in norms.values()}
        handles = []

        def restore():
            for h in handles:
                h.remove()
            for name, m in norms.items():
                momentum, mean, var, tracked = saved[name]
                m.momentum = momentum
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                if tracked is not None:
                    m.num_batches_tracked.copy_(tracked)

        with preserved_modes(model):
            try:
                for m in model.modules():
                    m.training = id(m) in norm_ids
                for name, m in norms.items():
                    # momentum 0 keeps the running buffers as they are during the pass (BatchNorm still
                    # bumps num_batches_tracked and non-finite batch stats would leak in: both are
                    # restored from the snapshot afterwards).
                    m.momentum = 0.0
                    handles.append(m.register_forward_pre_hook(make_hook(name)))
                batch, used = first, 0
                while batch is not sentinel:
                    inputs = inputs_to(batch_inputs(batch, unpack), device)
                    call_model(model, inputs)
                    used += 1
                    if max_batches is not None and used >= max_batches:
                        break
                    batch = next(iterator, sentinel)
            finally:
                restore()
        if distributed and is_distributed():
            _pool_across_ranks(norms, moments)

        updated, stale = [], []
        for name, m in norms.items():
            mo = moments[name]
            if mo.mean is None or mo.count < 2:
                stale.append(name)
                continue
            m.running_mean.copy_(mo.mean)
            m.running_var.copy_(mo.m2 / (mo.count - 1))
            updated.append(name)
    if stale:
        warnings.warn(
            f"recalibrate_bn: norm layers {stale} saw no input (fewer than 2 values per channel) "
            "during the calibration pass; their running statistics were left unchanged",
            stacklevel=3,  # past the on_uncompiled wrapper: the caller's line
        )
    return updated
