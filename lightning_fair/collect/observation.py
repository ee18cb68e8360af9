"""The forward hooks of one calibration batch: what U observes, and which samples it keeps.

For each scored layer, U observes its output, or that output after the norm and/or activation
that follow it (``observe``): a layer's output is followed through BatchNorm-like, activation
and shape-keeping pass-through modules by tensor identity, and the last stage reached is kept.
The input of every Conv/Linear that is not simply a scored layer's observed tensor (it comes
through a residual add, a pooling, a concatenation, ...) is observed as well, under
:func:`lightning_fair.units.channels.input_key`. Of each batch only the samples still needed (the first
``samples_per_class`` of each class) are kept, projected, in the collector's buffers.

:class:`BatchRecorder` is made, attached and committed by
:class:`lightning_fair.collect.collector.StatisticsCollector` once per batch.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..units.channels import (
    ACTIVATION_TYPES,
    NORM_TYPES,
    PASS_THROUGH_TYPES,
    consumer_of,
    input_key,
    units_view,
)
from .classes import rank_within_class

if TYPE_CHECKING:  # the collector imports this module at run time
    from .collector import StatisticsCollector

__all__ = ["BatchRecorder", "STAGES", "STAGE_NAMES"]

#: the tensors U may observe, in the order a layer's output goes through them
STAGES = {"output": 0, "norm": 1, "activation": 2}
STAGE_NAMES = {v: k for k, v in STAGES.items()}

#: activations called as functions in ``forward`` (``F.relu(x)``, ``torch.relu(x)``, ``x.relu()``,
#: in place or not): followed like the activation modules of :data:`lightning_fair.units.channels.ACTIVATION_TYPES`
ACTIVATION_FUNCTIONS = frozenset(
    {
        F.relu,
        F.relu_,
        torch.relu,
        torch.relu_,
        torch.Tensor.relu,
        torch.Tensor.relu_,
        F.relu6,
        F.leaky_relu,
        F.leaky_relu_,
        F.prelu,
        F.elu,
        F.elu_,
        F.selu,
        F.celu,
        F.gelu,
        F.silu,
        F.mish,
        F.hardswish,
        F.hardsigmoid,
        F.hardtanh,
        F.hardtanh_,
        F.softplus,
        F.sigmoid,
        F.tanh,
        torch.sigmoid,
        torch.sigmoid_,
        torch.tanh,
        torch.tanh_,
        torch.Tensor.sigmoid,
        torch.Tensor.sigmoid_,
        torch.Tensor.tanh,
        torch.Tensor.tanh_,
    }
)


class _FunctionalActivations(TorchFunctionMode):
    """Sees every torch function call of the forward; follows a layer's output through the
    activation functions of :data:`ACTIVATION_FUNCTIONS` (hooks cannot see them)."""

    def __init__(self, follow):
        super().__init__()
        self.follow = follow

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        if func in ACTIVATION_FUNCTIONS and args and isinstance(args[0], torch.Tensor):
            self.follow(args[0], output)
        return output


class BatchRecorder:
    """Forward hooks for one batch: keeps layer outputs and projects what U observes."""

    def __init__(self, collector: "StatisticsCollector", target: torch.Tensor):
        self.c = collector
        self.target = target
        self.outputs: Dict[str, torch.Tensor] = {}
        self.order: List[str] = []
        self.calls: Dict[str, int] = {}
        # id(tensor) -> (layer name, stage, tensor) for tensors derived from a layer output
        self.chain: Dict[int, tuple] = {}
        self.observed: Dict[str, tuple] = {}  # name -> (stage, projected [m, C, D])
        self.pooled: Dict[str, tuple] = {}  # name -> (stage, spatially averaged [B, C] float64), screening
        self.model_input: Optional[torch.Tensor] = None
        self.inputs_seen: Dict[int, tuple] = {}  # id -> (first consumer, tensor) of observed inputs (first batch)
        self.input_shapes: Dict[str, tuple] = {}  # consumer -> [B, C, M] shape of its observed input (first batch)
        self.map_sizes: Dict[str, int] = {}  # statistics key -> flattened size of one unit's observed map
        #: statistics keys whose tensor does not have the batch in its first dimension (not scored):
        #: sequence-first layouts (``batch_first=False``), windows folded into the batch
        self.off_batch: Dict[str, tuple] = {}
        self.selected = self._select(target)

    def _select(self, target: torch.Tensor) -> Optional[torch.Tensor]:
        """Indices of this batch's samples still needed for U (the first n per chosen class), on
        the device; worked out on the host from the labels (a copy of them only if they arrive on
        another device)."""
        counts = self.c.class_counts
        if target.dim() != 1:
            raise ValueError(f"labels must be one class index per sample, got shape {tuple(target.shape)}")
        labels = self.labels = target.detach().long().cpu()
        if labels.numel() and labels.min() < 0:
            raise ValueError("labels must be class indices >= 0")
        if counts is None:  # first batch: the number of classes is known once the forward returns
            counts = torch.zeros(int(labels.max()) + 1 if labels.numel() else 1, dtype=torch.long)
            room = self.c.samples_per_class - counts
        else:
            if labels.numel() and labels.max() >= counts.numel():
                raise ValueError(f"labels must lie in [0, {counts.numel()}) for a model with {counts.numel()} outputs")
            room = torch.where(self.c.class_slots >= 0, self.c.samples_per_class - counts, 0).clamp(min=0)
        keep = rank_within_class(labels) < room[labels]
        if not keep.any():
            return None
        self.selected_cpu = keep.nonzero().flatten()
        return self.selected_cpu.to(self.c.device, non_blocking=True)

    def attach(self) -> list:
        handles = []
        target_stage = STAGES[self.c.observe]
        for name, module in self.c.candidates.items():
            handles.append(module.register_forward_hook(self._layer_hook(name)))
        if target_stage > 0:
            for module in self.c.model.modules():
                if isinstance(module, NORM_TYPES):
                    stage = 1
                elif isinstance(module, ACTIVATION_TYPES):
                    stage = 2
                elif isinstance(module, PASS_THROUGH_TYPES):
                    stage = -1
                else:
                    continue
                handles.append(module.register_forward_hook(self._follow_hook(stage, target_stage)))
        for name, module in self.c.consumers.items():
            handles.append(module.register_forward_pre_hook(self._consumer_hook(name)))
        for name, units in self.c.heads.items():  # a head's output: its slice of the output projection's input
            handles.append(units.output.register_forward_pre_hook(self._head_hook(name)))
        return handles

    def _head_hook(self, name: str):
        def hook(module, args):
            self.order.append(name)
            self.calls[name] = self.calls.get(name, 0) + 1
            if args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
                self.outputs[name] = args[0]
                self._observe(name, 0, args[0])
            return None

        return hook

    def functional(self):
        """Context for the forward: follow layer outputs through activation *functions* too
        (``F.relu(self.bn(self.conv(x)))``), as through activation modules."""
        if STAGES[self.c.observe] < 2:
            return contextlib.nullcontext()
        follow = self._follow_hook(2, STAGES[self.c.observe])
        return _FunctionalActivations(lambda x, output: follow(None, (x,), output))

    def _consumer_hook(self, name: str):
        """Observe a Conv/Linear's input unless it is a scored layer's observed tensor itself."""

        def hook(module, args):
            if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
                return None
            x = args[0]
            entry = self.chain.get(id(x))
            if (entry is not None and entry[2] is x) or x is self.model_input:
                return None  # the producer's own U observes this very tensor; or no unit made it
            if self.c.class_counts is not None:  # later batches: what the first one decided
                if name in self.c.input_aliases:
                    return None
            else:
                self.c.input_order.append(name)
                first = self.inputs_seen.get(id(x))
                if first is not None and first[1] is x:  # an earlier consumer read this very tensor
                    self.c.input_aliases[name] = first[0]
                    return None
                self.inputs_seen[id(x)] = (name, x)
                calls = self.c.input_observed_calls
                calls[name] = calls.get(name, 0) + 1
                if x.dim() < 2:
                    return None
                self.input_shapes[name] = tuple(units_view(x, module).shape)
            self._observe(input_key(name), 0, x)
            return None

        return hook

    def _layer_hook(self, name: str):
        def hook(module, args, output):
            self.order.append(name)
            self.calls[name] = self.calls.get(name, 0) + 1
            if not isinstance(output, torch.Tensor) or not output.requires_grad:
                return None
            self.outputs[name] = output
            # Downstream in-place ops (ReLU(inplace=True)) act on the copy, so `output`
            # keeps the layer's true values and its own autograd history.
            passed = output.clone()
            self.chain[id(passed)] = (name, 0, passed)
            self._observe(name, 0, passed)
            return passed

        return hook

    def _follow_hook(self, stage: int, target_stage: int):
        def hook(module, args, output):
            if not args or not isinstance(output, torch.Tensor):
                return None
            entry = self.chain.get(id(args[0]))
            if entry is None or entry[2] is not args[0] or entry[1] >= 2:
                return None
            name, previous, _ = entry
            new_stage = previous if stage < 0 else stage
            if new_stage < previous or new_stage > target_stage or output.shape != args[0].shape:
                return None
            seen = self.chain.get(id(output))
            if seen is not None and seen[2] is output and seen[1] >= new_stage and output is not args[0]:
                return None  # an activation module's own functional call was followed already
            self.chain[id(output)] = (name, new_stage, output)
            if new_stage > previous:
                self._observe(name, new_stage, output)
            return None

        return hook

    def _observe(self, name: str, stage: int, tensor: torch.Tensor) -> None:
        if tensor.dim() == 0 or tensor.shape[0] != self.target.shape[0]:
            self.off_batch[name] = tuple(tensor.shape)
            return
        module = self.c.unit_module(name)
        if self.c.class_counts is None:
            self.map_sizes[name] = units_view(tensor, module).shape[2]
        if (
            self.c.collects_screening
            and consumer_of(name) is None
            and (self.c.class_counts is None or name in self.c.layers)
        ):
            with torch.no_grad():  # every image of the batch; only the last stage reached is kept
                view = units_view(tensor.detach(), module)
                self.pooled[name] = (stage, view.mean(2, dtype=torch.float64))
        if self.selected is None:
            return
        if self.c.class_counts is not None and (name not in self.c.layers or name not in self.c.channels):
            return  # after the first batch, only scored layers of this pass's chunk are observed
        with torch.no_grad():
            # A copy of the selected rows: later in-place ops cannot change it. Only the last
            # stage reached is projected, once, in commit().
            values = units_view(tensor.detach()[self.selected], module)
        self.observed[name] = (stage, values)

    def commit(self) -> None:
        """Write this batch's selected observations into the per-class buffers (one slot per
        chosen class, :mod:`lightning_fair.collect.classes`)."""
        if self.selected is None:
            return
        c = self.c
        labels = self.labels[self.selected_cpu]
        counts = c.class_counts
        positions = counts[labels] + rank_within_class(labels)
        slots = c.class_slots[labels]
        # first batch: more than n of a class may arrive, and classes U does not compare
        keep = ((positions < c.samples_per_class) & (slots >= 0)).nonzero().flatten()
        if keep.numel() == 0:
            return
        # rows of the selection, slots, positions: one copy to the device
        rows_d, slots_d, positions_d = (
            torch.stack([keep, slots[keep], positions[keep]]).to(c.device, non_blocking=True).unbind(0)
        )
        for name, stats in c.layers.items():
            if name not in self.observed or name not in c.channels:
                continue
            stage, values = self.observed[name]
            start, stop = c.channels[name]
            values = values.index_select(0, rows_d.to(values.device))[:, start:stop].float()
            c.checks.check(
                values,
                lambda name=name, stage=stage, batch=c.num_batches: (
                    f"the activations U observes for layer {name!r} ({STAGE_NAMES[stage]}) are not finite (NaN/inf) "
                    f"on calibration batch {batch}; check the inputs and the model's numerics before pruning"
                ),
            )
            map_size = values.shape[2]
            theta = c.projection(name, map_size)
            projected = values if theta is None else values @ theta
            if stats.samples is None:
                # rows past a class's count are never read: no need to zero them
                stats.samples = projected.new_empty(c.chosen_classes.numel(), c.samples_per_class, *projected.shape[1:])
                stats.observed = STAGE_NAMES[stage]
                stats.map_size = map_size
            stats.samples[slots_d, positions_d] = projected
        counts += torch.bincount(labels[keep], minlength=counts.numel())
