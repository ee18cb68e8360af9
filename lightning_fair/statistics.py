"""One pass over calibration batches: the statistics FAIR scores are made from.

For every prunable layer, one forward and one backward per batch collect

* the projected per-class samples of the observed tensor (for the utilization score):
  the first ``samples_per_class`` images of each class, each unit seen through
  ``num_projections`` seeded unit directions (conv maps) or as its scalar (Linear);
* the signed sum over batches, samples and positions of ``dL/dz * z`` (for the
  reconstruction score), and the sum over samples of its per-sample absolute value
  (the ``"sum_of_abs"`` aggregation variant);
* the sum over samples of the input every Conv/Linear receives (per input channel and
  position), for mean-replacement compensation after removal;
* the projected per-class samples of the input of every Conv/Linear whose input is not simply
  one scored layer's observed tensor (it comes through a residual add, a pooling, a
  concatenation, ...): what the *consumers* of a coupled group's channels see, for the
  utilization score of channels shared through residual adds (:mod:`lightning_fair.removal`);
* with ``screening=True``, per class: the number of images, and the sum and sum of squares of
  each unit's spatially averaged observed tensor (the tensor U observes, all images of the
  batch, not only the ones kept for U) and of every Conv/Linear's spatially averaged input
  (for the screening criterion's F-statistic, :mod:`lightning_fair.screening`), float64.

Both live in preallocated buffers, so memory does not grow with the number of batches.
The model is scored in eval mode and handed back exactly as it was: weights, buffers,
``.grad``, train/eval flags and ``requires_grad`` are never touched (gradients are taken
with :func:`torch.autograd.grad` with respect to layer outputs only).
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from .distances import random_projections
from .distributed import is_distributed, merge_ranks
from .guards import preserved_modes
from .memory import MemoryEstimate, screening_bytes, unit_bytes
from .screening import ClassMoments
from .layers import (
    ACTIVATION_TYPES,
    NORM_TYPES,
    OBSERVATION_POINTS,
    PASS_THROUGH_TYPES,
    candidate_layers,
    consumer_of,
    input_key,
    units_view,
)

__all__ = ["LayerStatistics", "RECONSTRUCTIONS", "StatisticsCollector", "default_unpack", "first_inputs"]

#: How R aggregates dL/dz * z: the paper's absolute value of the total (``"abs_of_sum"``),
#: or the sum over samples of each sample's absolute value (``"sum_of_abs"``).
RECONSTRUCTIONS = ("abs_of_sum", "sum_of_abs")

_STAGE = {"output": 0, "norm": 1, "activation": 2}
_STAGE_NAME = {v: k for k, v in _STAGE.items()}


def default_unpack(batch):
    """Split a batch into ``(inputs, target)``: ``(x, y, ...)`` sequences and dicts with
    ``x``/``input``/``image`` and ``y``/``label``/``target`` keys are understood."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, dict):
        xs = [k for k in ("x", "input", "inputs", "image", "images") if k in batch]
        ys = [k for k in ("y", "label", "labels", "target", "targets") if k in batch]
        if xs and ys:
            return batch[xs[0]], batch[ys[0]]
    raise TypeError(
        f"cannot find (inputs, target) in a batch of type {type(batch).__name__}; batches must be "
        "(inputs, labels, ...) sequences or dicts with 'x' and 'y' keys, or pass "
        "unpack=lambda batch: (inputs, labels)"
    )


def first_inputs(dataloader, unpack=default_unpack):
    """The first calibration batch's inputs (one sample if a tensor): example inputs for tracing."""
    with torch.inference_mode(False):  # under trainer.validate: a normal tensor, usable for tracing
        for batch in dataloader:
            inputs, _ = unpack(batch)
            if isinstance(inputs, torch.Tensor):
                inputs = inputs[:1].clone()
            return inputs
    raise ValueError("the calibration dataloader yielded no batches; pass a non-empty dataloader")


@dataclass
class LayerStatistics:
    """What one pass gathered for one layer."""

    name: str
    num_units: int
    #: ``[K, n, C, D]`` projected observations, the first ``counts[k]`` rows of class k valid.
    samples: Optional[torch.Tensor] = None
    #: ``[C]`` signed sum of dL/dz * z.
    taylor_sum: Optional[torch.Tensor] = None
    #: ``[C]`` sum over samples of |sum over positions of dL/dz * z| (per-sample aggregation).
    taylor_abs_sum: Optional[torch.Tensor] = None
    #: which tensor was observed: "output", "norm" or "activation".
    observed: str = "output"
    #: flattened size of a unit's output per image (1 for a scalar unit).
    map_size: int = 1
    #: screening statistics (``screening=True``): per class, the count, sum and sum of squares of
    #: each unit's spatially averaged observed tensor.
    moments: Optional[ClassMoments] = None


@dataclass
class StatisticsCollector:
    """Hooks a model, runs batches through it and keeps FAIR's statistics.

    Use :func:`lightning_fair.compute_scores` unless you need the raw statistics.
    """

    model: nn.Module
    samples_per_class: int = 32
    num_projections: int = 128
    observe: str = "activation"
    seed: int = 0
    loss_fn: Optional[Callable] = None
    unpack: Callable = default_unpack
    ignored: set = field(default_factory=set)
    #: merge the statistics of all processes of the default process group after the pass
    #: (DDP: each rank passes its own shard; see :mod:`lightning_fair.distributed`)
    distributed: bool = False
    #: bytes the utilization samples of one pass may take (None: no limit); over it, this pass
    #: collects the first chunk of units only and ``chunks`` lists the rest (see :mod:`.memory`)
    memory_budget: Optional[int] = None
    #: collect utilization samples only for these channel ranges ``{layer: (start, stop)}``
    channels: Optional[Dict[str, Tuple[int, int]]] = None
    #: also collect the reconstruction sums (one backward per batch); False: forward only
    reconstruction: bool = True
    #: also collect the screening statistics (per-class count, sum and sum of squares of each
    #: unit's and each Conv/Linear input's spatially averaged values; only with ``reconstruction``)
    screening: bool = False

    def __post_init__(self):
        if self.observe not in OBSERVATION_POINTS:
            raise ValueError(f"observe must be one of {OBSERVATION_POINTS}, got {self.observe!r}")
        if int(self.samples_per_class) < 1:
            raise ValueError(f"samples_per_class must be a positive integer, got {self.samples_per_class!r}")
        if int(self.num_projections) < 1:
            raise ValueError(f"num_projections must be a positive integer, got {self.num_projections!r}")
        self.loss_fn = self.loss_fn or nn.functional.cross_entropy
        self.layers: Dict[str, LayerStatistics] = {}
        self.class_counts: Optional[torch.Tensor] = None
        self.num_batches = 0
        # calibration loss (sum of batch means) and top-1 hits, seen for free on the way
        self.loss_sum, self.correct, self.seen = 0.0, 0, 0
        self._modules = candidate_layers(self.model, self.ignored)
        # every Conv/Linear, ignored or not, is a consumer whose input mean is recorded
        self.input_sums: Dict[str, torch.Tensor] = {}
        self.input_counts: Dict[str, int] = {}
        self.input_calls: Dict[str, int] = {}
        self._consumers = candidate_layers(self.model, set())
        #: calls per forward of each consumer input observed for U (first batch)
        self.input_observed_calls: Dict[str, int] = {}
        #: {consumer: an earlier consumer reading the very same tensor}: observed once, under the first
        self.input_aliases: Dict[str, str] = {}
        #: consumers whose input is observed apart (aliases too), in execution order (first batch)
        self.input_order: List[str] = []
        #: per Conv/Linear: moments of its spatially averaged input, None if its width varied (screening)
        self.input_moments: Dict[str, Optional[ClassMoments]] = {}
        self._pooled_inputs: Dict[str, torch.Tensor] = {}
        self._projections: Dict[str, torch.Tensor] = {}
        self._device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        self.on_plan: Optional[Callable] = None  # called with the MemoryEstimate after the first batch
        self.chunks: List[Dict[str, Tuple[int, int]]] = []

    # ------------------------------------------------------------------ the pass
    def run(self, batches: Iterable, max_batches: Optional[int] = None) -> "StatisticsCollector":
        """Run every batch (or the first ``max_batches``) once; return self."""
        with preserved_modes(self.model):
            self.model.eval()
            with torch.inference_mode(False), torch.enable_grad():
                for batch in batches:
                    if max_batches is not None and self.num_batches >= max_batches:
                        break
                    self.update(batch)
        if self.distributed and is_distributed():
            merge_ranks(self)
        if self.num_batches == 0:
            raise ValueError("the calibration dataloader yielded no batches; pass a non-empty dataloader")
        return self

    @property
    def _collects_screening(self) -> bool:
        return bool(self.screening) and bool(self.reconstruction)

    def update(self, batch) -> None:
        """One forward and one backward over ``batch`` (the model must already be in eval mode)."""
        inputs, target = self.unpack(batch)
        inputs = _to_grad_tensor(inputs, self._device)
        target = torch.as_tensor(target).to(self._device)
        if target.dim() == 2 and target.shape[1] == 1:
            target = target.flatten()
        if target.is_inference():
            target = target.clone()
        recorder = _BatchRecorder(self, target)
        recorder.model_input = inputs
        self._pooled_inputs = {}
        handles = recorder.attach()
        handles += [m.register_forward_pre_hook(self._input_hook(n)) for n, m in self._consumers.items()]
        try:
            logits = self.model(inputs)
        finally:
            for handle in handles:
                handle.remove()
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ValueError(
                "the model's output must be class logits of shape [batch, num_classes], got "
                f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}"
            )
        if self.num_batches == 0:
            self._first_batch(recorder, logits)
        if not self.reconstruction:  # a later pass of a split collection: utilization samples only
            with torch.no_grad():
                recorder.commit()
            self.num_batches += 1
            return
        loss = self.loss_fn(logits, target)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the calibration loss is {loss.item()} on batch {self.num_batches}")
        names = [n for n in self.layers if n in recorder.outputs]
        grads = torch.autograd.grad(loss, [recorder.outputs[n] for n in names], allow_unused=True)
        with torch.no_grad():
            for name, grad in zip(names, grads):
                if grad is None:
                    continue
                per_sample = units_view(grad * recorder.outputs[name], self._modules[name]).sum(2)  # [B, C]
                if not torch.isfinite(per_sample).all():
                    raise FloatingPointError(
                        f"the output of layer {name!r} or the loss gradient at it is not finite (NaN/inf) on "
                        f"calibration batch {self.num_batches}; check the inputs and the model's numerics "
                        "(e.g. a division by zero, fp16 overflow) before pruning"
                    )
                stats = self.layers[name]
                stats.taylor_sum += per_sample.sum(0).to(torch.float64)
                stats.taylor_abs_sum += per_sample.abs().sum(0).to(torch.float64)
            recorder.commit()
            if self._collects_screening:
                self._accumulate_screening(recorder, target)
        self.loss_sum += float(loss.detach())
        self.correct += int((logits.detach().argmax(1) == target).sum())
        self.seen += int(target.shape[0])
        self.num_batches += 1

    def _accumulate_screening(self, recorder: "_BatchRecorder", target: torch.Tensor) -> None:
        """Add this batch's per-class count, sum and sum of squares of every pooled value."""
        labels = target.detach().long().flatten()
        num_classes = self.class_counts.numel()
        if labels.numel() and int(labels.max()) >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}) for a model with {num_classes} outputs")
        for name, stats in self.layers.items():
            if name not in recorder.pooled:
                continue
            stage, values = recorder.pooled[name]
            if not torch.isfinite(values).all():
                raise FloatingPointError(
                    f"the activations observed for layer {name!r} ({_STAGE_NAME[stage]}) are not finite (NaN/inf) "
                    f"on calibration batch {self.num_batches}; check the inputs and the model's numerics before pruning"
                )
            stats.moments.add(labels, values)
        for name, values in self._pooled_inputs.items():
            moments = self.input_moments.get(name, False)
            if moments is None:
                continue
            if values.shape[0] != labels.numel() or (moments and moments.total.shape[1] != values.shape[1]):
                # its first dimension is not the batch, or its width varies: no per-feature statistic
                self.input_moments[name] = None
                continue
            if not moments:
                moments = self.input_moments[name] = ClassMoments.zeros(num_classes, values.shape[1], values.device)
            moments.add(labels, values)
        self._pooled_inputs = {}

    def input_class_moments(self) -> Dict[str, ClassMoments]:
        """Moments of the spatially averaged input of every Conv/Linear that ran once per forward with a
        fixed input width (``screening=True``)."""
        return {name: moments for name, moments in self.input_moments.items()
                if moments is not None and self.input_calls.get(name) == self.num_batches}

    # ------------------------------------------------------------------ helpers
    def _first_batch(self, recorder: "_BatchRecorder", logits: torch.Tensor) -> None:
        num_classes = logits.shape[1]
        if num_classes < 2:
            raise ValueError(f"the model's output has {num_classes} class; FAIR needs classification logits")
        self.class_counts = torch.zeros(num_classes, dtype=torch.long)
        executed = [n for n in dict.fromkeys(recorder.order) if n in self._modules]
        if not executed:
            raise ValueError("no Conv or Linear layer ran in the forward pass (all ignored, or none in the model)")
        output_layer = executed[-1]
        for name in executed[:-1]:
            if name not in recorder.outputs:
                continue  # its output does not depend on anything differentiable
            if recorder.calls[name] > 1:
                warnings.warn(f"layer {name!r} runs {recorder.calls[name]} times per forward; it is not scored")
                continue
            out = recorder.outputs[name]
            module = self._modules[name]
            channels = units_view(out, module).shape[1]
            self.layers[name] = LayerStatistics(
                name=name,
                num_units=channels,
                taylor_sum=torch.zeros(channels, dtype=torch.float64, device=self._device),
                taylor_abs_sum=torch.zeros(channels, dtype=torch.float64, device=self._device),
            )
            if self._collects_screening:
                self.layers[name].moments = ClassMoments.zeros(num_classes, channels, self._device)
        for name, shape in recorder.input_shapes.items():
            if self.input_observed_calls.get(name) != 1:
                continue  # runs more than once per forward: no single input distribution
            key = input_key(name)
            channels = shape[1]
            self.layers[key] = LayerStatistics(
                name=key, num_units=channels,
                taylor_sum=torch.zeros(channels, dtype=torch.float64, device=self._device),
                taylor_abs_sum=torch.zeros(channels, dtype=torch.float64, device=self._device),
            )
        self.output_layer = output_layer
        if not [n for n in self.layers if consumer_of(n) is None]:
            raise ValueError(
                "the model has no prunable layer besides its output layer "
                f"({output_layer!r}); check ignored_layers"
            )
        self.estimate = MemoryEstimate(
            num_classes, int(self.samples_per_class), int(self.num_projections),
            {name: (stats.num_units, unit_bytes(num_classes, int(self.samples_per_class),
                                               recorder.map_sizes[name], int(self.num_projections)))
             for name, stats in self.layers.items()},
            8 * sum(t.numel() for t in self.input_sums.values()),
            screening_bytes(num_classes, [s.num_units for s in self.layers.values() if s.moments is not None],
                            [v.shape[1] for v in self._pooled_inputs.values()]) if self._collects_screening else 0,
        )
        if self.channels is None:
            self.chunks = self.estimate.chunks(self.memory_budget)
            self.channels = self.chunks[0]
        else:
            self.chunks = [self.channels]
        if self.on_plan is not None:
            self.on_plan(self.estimate)

    def _input_hook(self, name: str):
        def hook(module, args):
            self.input_calls[name] = self.input_calls.get(name, 0) + 1
            if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
                return None
            with torch.no_grad():
                x = args[0].detach().to(torch.float64)
                if isinstance(module, nn.Linear):
                    total, count = x.reshape(-1, x.shape[-1]).sum(0), x.numel() // max(x.shape[-1], 1)
                else:  # [B, C, *spatial] -> [C, *spatial]
                    total, count = x.sum(0), x.shape[0]
                if name in self.input_sums and self.input_sums[name].shape == total.shape:
                    self.input_sums[name] += total
                    self.input_counts[name] += count
                elif name not in self.input_sums:
                    self.input_sums[name], self.input_counts[name] = total, count
                else:  # the input shape changes between batches: no single mean
                    self.input_counts[name] = -1
                if self._collects_screening:  # one value per sample and input feature / channel
                    if isinstance(module, nn.Linear):
                        pooled = x.reshape(x.shape[0], -1, x.shape[-1]).mean(1) if x.dim() > 1 else None
                    else:
                        pooled = x.reshape(x.shape[0], x.shape[1], -1).mean(2) if x.dim() > 2 else None
                    if pooled is not None:
                        self._pooled_inputs[name] = pooled
            return None

        return hook

    def input_means(self) -> Dict[str, torch.Tensor]:
        """Mean input of every Conv/Linear that ran once per forward with a fixed input shape:
        ``[C_in, *spatial]`` for a conv, ``[in_features]`` for a Linear (float64)."""
        per_forward = self.num_batches
        return {
            name: (total / self.input_counts[name]).cpu()
            for name, total in self.input_sums.items()
            if self.input_counts[name] > 0 and self.input_calls.get(name) == per_forward
        }

    def unit_module(self, key: str) -> nn.Module:
        """The module whose units a statistics entry holds: the layer, or the consumer of an input."""
        consumer = consumer_of(key)
        return self._modules[key] if consumer is None else self._consumers[consumer]

    def projection(self, name: str, map_size: int) -> Optional[torch.Tensor]:
        """The ``[map_size, P]`` seeded directions of a layer (None for scalar units)."""
        if map_size == 1:
            return None
        key = f"{name}:{map_size}"
        if key not in self._projections:
            layer_seed = zlib.crc32(name.encode()) ^ int(self.seed)
            self._projections[key] = random_projections(map_size, self.num_projections, seed=layer_seed).to(self._device)
        return self._projections[key]


class _BatchRecorder:
    """Forward hooks for one batch: keeps layer outputs and projects what U observes."""

    def __init__(self, collector: StatisticsCollector, target: torch.Tensor):
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
        self.selected = self._select(target)

    def _select(self, target: torch.Tensor) -> Optional[torch.Tensor]:
        """Indices of this batch's samples still needed for U (the first n per class)."""
        counts = self.c.class_counts
        labels = target.detach().long().cpu().flatten()
        if target.dim() != 1:
            raise ValueError(f"labels must be one class index per sample, got shape {tuple(target.shape)}")
        if labels.numel() and labels.min() < 0:
            raise ValueError("labels must be class indices >= 0")
        if counts is None:  # first batch: the number of classes is known once the forward returns
            counts = torch.zeros(int(labels.max()) + 1 if labels.numel() else 1, dtype=torch.long)
        elif labels.numel() and labels.max() >= counts.numel():
            raise ValueError(f"labels must lie in [0, {counts.numel()}) for a model with {counts.numel()} outputs")
        room = (self.c.samples_per_class - counts).clamp(min=0)
        one_hot = torch.nn.functional.one_hot(labels, counts.numel())
        rank = (one_hot.cumsum(0) * one_hot).sum(1) - 1  # position of each sample within its class
        keep = rank < room[labels]
        if not keep.any():
            return None
        return keep.nonzero().flatten().to(target.device)

    def attach(self) -> list:
        handles = []
        target_stage = _STAGE[self.c.observe]
        for name, module in self.c._modules.items():
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
        for name, module in self.c._consumers.items():
            handles.append(module.register_forward_pre_hook(self._consumer_hook(name)))
        return handles

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
            self.chain[id(output)] = (name, new_stage, output)
            if new_stage > previous:
                self._observe(name, new_stage, output)
            return None

        return hook

    def _observe(self, name: str, stage: int, tensor: torch.Tensor) -> None:
        module = self.c.unit_module(name)
        if self.c.class_counts is None:
            self.map_sizes[name] = units_view(tensor, module).shape[2]
        if self.c._collects_screening and consumer_of(name) is None and (
                self.c.class_counts is None or name in self.c.layers):
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
        """Write this batch's selected observations into the per-class buffers."""
        if self.selected is None:
            return
        c = self.c
        labels = self.target.detach().long()[self.selected].cpu()
        counts = c.class_counts
        positions = torch.empty_like(labels)
        for k in labels.unique().tolist():
            mask = labels == k
            positions[mask] = counts[k] + torch.arange(int(mask.sum()))
        keep = positions < c.samples_per_class  # first batch: more than n of a class may arrive
        labels_d = labels[keep].to(c._device)
        positions_d = positions[keep].to(c._device)
        for name, stats in c.layers.items():
            if name not in self.observed or name not in c.channels:
                continue
            stage, values = self.observed[name]
            start, stop = c.channels[name]
            values = values[keep.to(values.device), start:stop].float()
            if not torch.isfinite(values).all():
                raise FloatingPointError(
                    f"the activations U observes for layer {name!r} ({_STAGE_NAME[stage]}) are not finite (NaN/inf) "
                    f"on calibration batch {c.num_batches}; check the inputs and the model's numerics before pruning"
                )
            map_size = values.shape[2]
            theta = c.projection(name, map_size)
            projected = values if theta is None else values @ theta
            if stats.samples is None:
                stats.samples = projected.new_zeros(counts.numel(), c.samples_per_class, *projected.shape[1:])
                stats.observed = _STAGE_NAME[stage]
                stats.map_size = map_size
            stats.samples[labels_d, positions_d] = projected
        counts += torch.bincount(labels[keep], minlength=counts.numel())


def _to_grad_tensor(inputs, device):
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"model inputs must be a tensor, got {type(inputs).__name__}; pass unpack=... to extract it")
    inputs = inputs.to(device)
    if inputs.is_inference():
        inputs = inputs.clone()
    if inputs.is_floating_point():
        # Makes every layer output part of the graph even when all parameters are frozen.
        inputs = inputs.detach().requires_grad_(True)
    return inputs
