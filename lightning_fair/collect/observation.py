"""The forward hooks of one calibration batch: what U observes, and which samples it keeps.

For each scored layer, U observes its output, or that output after the norm and/or activation
that follow it (``observe``): a layer's output is followed through BatchNorm-like, activation
and shape-keeping pass-through modules by tensor identity, and the last stage reached is kept.
The input of every Conv/Linear that is not simply a scored layer's observed tensor (it comes
through a residual add, a pooling, a concatenation, ...) is observed as well, under
:func:`lightning_fair.units.channels.input_key`. Of each batch only the samples still needed (the first
``samples_per_class`` of each class, :meth:`lightning_fair.collect.samples.ClassSamples.select`)
are kept for U.

:class:`BatchRecorder` is made and attached by :class:`lightning_fair.collect.collector.StatisticsCollector`
once per batch; it only reads the collector, which then takes what the recorder saw into its
accumulators (and, on the first batch, the layout: which inputs are observed apart).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..runtime.batches import token_samples
from ..units.channels import (
    ACTIVATION_TYPES,
    NORM_TYPES,
    PASS_THROUGH_TYPES,
    consumer_of,
    input_key,
    units_view,
)
from .peaks import unit_peaks

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

    def __init__(
        self,
        collector: "StatisticsCollector",
        labels: torch.Tensor,
        tokens: Optional[tuple] = None,
        padding: Optional[torch.Tensor] = None,
    ):
        """``labels``: the batch's class indices on the host, checked (one per sample; -1: a sample of
        no class U compares). ``tokens``: the ``(batch, length)`` of next-token prediction, whose
        samples are token positions (:func:`lightning_fair.runtime.batches.token_samples`).
        ``padding``: classification of padded sequences, the ``[batch, length]`` attention mask: a
        ``[batch, length, ...]`` activation's padded positions are zeroed in what U observes, so a
        unit's map holds its real tokens only (the projections of a map then see what they would
        see of the unpadded sequence)."""
        self.c = collector
        self.labels = labels
        self.tokens = tokens
        self.padding = padding
        self.outputs: Dict[str, torch.Tensor] = {}
        self.order: List[str] = []
        self.calls: Dict[str, int] = {}
        # id(tensor) -> (layer name, stage, tensor) for tensors derived from a layer output
        self.chain: Dict[int, tuple] = {}
        self.observed: Dict[str, tuple] = {}  # name -> (stage, selected rows [m, C, M])
        self.peaks: Dict[str, torch.Tensor] = {}  # scored layer -> [C] largest |value| of every sample
        #: next-token prediction: which samples (positions) predict a token (not padding, no -100 target)
        self.real_samples: Optional[torch.Tensor] = None
        self.pooled: Dict[str, tuple] = {}  # name -> (stage, spatially averaged [B, C] float64), screening
        self.model_input: Optional[torch.Tensor] = None
        # first batch only: the layout of the observed consumer inputs
        self.inputs_seen: Dict[int, tuple] = {}  # id -> (first consumer, tensor) of observed inputs
        self.input_shapes: Dict[str, tuple] = {}  # consumer -> [B, C, M] shape of its observed input
        self.input_calls: Dict[str, int] = {}  # consumer -> calls per forward of its observed input
        self.input_aliases: Dict[str, str] = {}  # consumer -> an earlier consumer reading the very same tensor
        self.input_order: List[str] = []  # consumers whose input is observed, in execution order
        self.map_sizes: Dict[str, int] = {}  # statistics key -> flattened size of one unit's observed map
        #: statistics keys whose tensor does not have the batch in its first dimension (not scored):
        #: sequence-first layouts (``batch_first=False``), windows folded into the batch
        self.off_batch: Dict[str, tuple] = {}
        keep = collector.class_samples.select(labels)
        #: indices of the samples still needed for U, on the host and on the device (None: none)
        self.selected_cpu = keep if keep.numel() else None
        self.selected = keep.to(collector.device, non_blocking=True) if keep.numel() else None

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
            handles.append(units.output.register_forward_pre_hook(self._head_hook(name, units), with_kwargs=True))
        return handles

    def _head_hook(self, name: str, units):
        expose = getattr(units, "expose", None)  # units whose outputs a family makes visible (experts)

        def hook(module, args, kwargs):
            self.order.append(name)
            self.calls[name] = self.calls.get(name, 0) + 1
            changed = None
            if expose is not None:
                tensor, args, kwargs = expose(args, kwargs)
                changed = (args, kwargs)
            else:
                tensor = args[0] if args else None
            if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                self.outputs[name] = tensor
                self._observe(name, 0, tensor)
            return changed

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
            if name in self.c.family_layers:
                return None  # its input channels are units of a family, or the embedding dimension
            x = args[0]
            entry = self.chain.get(id(x))
            if (entry is not None and entry[2] is x) or x is self.model_input:
                return None  # the producer's own U observes this very tensor; or no unit made it
            if self.c.class_samples.started:  # later batches: what the first one decided
                if name in self.c.input_aliases:
                    return None
            else:
                self.input_order.append(name)
                first = self.inputs_seen.get(id(x))
                if first is not None and first[1] is x:  # an earlier consumer read this very tensor
                    self.input_aliases[name] = first[0]
                    return None
                self.inputs_seen[id(x)] = (name, x)
                self.input_calls[name] = self.input_calls.get(name, 0) + 1
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
        if self.tokens is not None:
            samples = token_samples(tensor, *self.tokens)
            if samples is None:  # not one value per token position
                self.off_batch[name] = tuple(tensor.shape)
                return
            tensor = samples
        if tensor.dim() == 0 or tensor.shape[0] != self.labels.shape[0]:
            self.off_batch[name] = tuple(tensor.shape)
            return
        module = self.c.unit_module(name)
        first = not self.c.class_samples.started
        if first:
            self.map_sizes[name] = units_view(tensor, module).shape[2]
        if self.c.collects_screening and consumer_of(name) is None and (first or name in self.c.layers):
            with torch.no_grad():  # every image of the batch; only the last stage reached is kept
                view = units_view(tensor.detach(), module)
                self.pooled[name] = (stage, view.mean(2, dtype=torch.float64))
        if consumer_of(name) is None and (first or name in self.c.layers):
            self._peak(name, tensor, module)
        if self.selected is None:
            return
        if not first and (name not in self.c.layers or name not in (self.c.channels or {})):
            return  # after the first batch, only scored layers of this pass's chunk are observed
        with torch.no_grad():
            # A copy of the selected rows: later in-place ops cannot change it. Only the last
            # stage reached is projected, once, in commit().
            rows = tensor.detach()[self.selected]
            mask = self._padding_of(tensor)
            if mask is not None:
                rows = zero_padding(rows, mask[self.selected])
            values = units_view(rows, module)
        self.observed[name] = (stage, values)

    def _padding_of(self, tensor: torch.Tensor) -> Optional[torch.Tensor]:
        """The batch's ``[batch, length]`` real-token mask if ``tensor`` is ``[batch, length, ...]``, else None."""
        mask = self.padding
        if mask is None or tensor.dim() < 3 or tuple(tensor.shape[:2]) != tuple(mask.shape):
            return None
        return mask

    def _peak(self, name: str, tensor: torch.Tensor, module) -> None:
        """Each unit's largest ``|value|`` over the whole batch (padded positions zeroed, positions
        without a next-token target left out); a later stage replaces an earlier one
        (:mod:`lightning_fair.collect.peaks`)."""
        with torch.no_grad():
            values = tensor.detach()
            if self.real_samples is not None and values.shape[0] == self.real_samples.numel():
                values = values[self.real_samples.to(values.device)]
            mask = self._padding_of(values)
            if mask is not None:
                values = zero_padding(values, mask)
            self.peaks[name] = unit_peaks(units_view(values, module))


def zero_padding(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` ``[n, length, ...]`` with the positions ``mask`` ``[n, length]`` marks False zeroed.

    Example:
        >>> zero_padding(torch.ones(1, 3, 2), torch.tensor([[True, True, False]]))[0, :, 0].tolist()
        [1.0, 1.0, 0.0]
    """
    keep = mask.to(device=values.device, dtype=values.dtype)
    return values * keep.reshape(*keep.shape, *([1] * (values.dim() - 2)))
