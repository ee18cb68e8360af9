"""One pass over calibration batches: the statistics FAIR scores are made from.

For every prunable layer, one forward and one backward per batch collect

* the projected per-class samples of the observed tensor (for the utilization score):
  the first ``samples_per_class`` images of each class, each unit seen through
  ``num_projections`` seeded unit directions (conv maps; ``"auto"``: by the classes compared) or as its scalar (Linear);
* the signed sum over batches, samples and positions of ``dL/dz * z`` (for the
  reconstruction score), and the sum over samples of its per-sample absolute value
  (the ``"sum_of_abs"`` aggregation variant);
* the sum over samples of the input every Conv/Linear receives (per input channel and
  position), for mean-replacement compensation after removal;
* the projected per-class samples of the input of every Conv/Linear whose input is not simply
  one scored layer's observed tensor (it comes through a residual add, a pooling, a
  concatenation, ...): what the *consumers* of a coupled group's channels see, for the
  utilization score of channels shared through residual adds (:mod:`lightning_fair.removal.planner`);
* with ``screening=True``, per class: the number of images, and the sum and sum of squares of
  each unit's spatially averaged observed tensor (the tensor U observes, all images of the
  batch, not only the ones kept for U) and of every Conv/Linear's spatially averaged input
  (for the screening criterion's F-statistic, :mod:`lightning_fair.scoring.screening`), float64.

Both live in preallocated buffers, so memory does not grow with the number of batches.
The model is scored in eval mode and handed back exactly as it was: weights, buffers,
``.grad``, train/eval flags and ``requires_grad`` are never touched (gradients are taken
with :func:`torch.autograd.grad` with respect to layer outputs only).

The forward hooks of a batch (which tensor U observes, which samples are kept) are in
:mod:`lightning_fair.collect.observation`; splitting batches into ``(inputs, target)`` in
:mod:`lightning_fair.runtime.batches`.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import nn

from ..config import OBSERVATION_POINTS, check_projections
from ..runtime.batches import default_unpack, first_inputs, grad_inputs, select_logits
from ..runtime.distributed import is_distributed
from ..runtime.guards import preserved_modes
from ..units.channels import candidate_layers, consumer_of, input_key, units_view
from ..units.families import collecting, find_units, removable
from .classes import chosen_classes, class_slots, projections_for
from .finite import FiniteChecks
from .memory import MemoryEstimate, screening_bytes, unit_bytes
from .moments import ClassMoments
from .observation import STAGE_NAMES, BatchRecorder
from .projections import random_projections
from .ranks import merge_ranks

# default_unpack and first_inputs live in .batches; imported from here too
__all__ = ["LayerStatistics", "StatisticsCollector", "default_unpack", "first_inputs"]


@dataclass
class LayerStatistics:
    """What one pass gathered for one layer."""

    name: str
    num_units: int
    #: ``[K', n, C, D]`` projected observations of the K' classes U compares (the collector's
    #: ``chosen_classes``), the first ``class_counts[k]`` rows of class k's slot valid.
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

    @classmethod
    def empty(cls, name: str, channels: int, device) -> "LayerStatistics":
        """No batch seen yet: zero reconstruction sums on ``device``."""
        zeros = (torch.zeros(channels, dtype=torch.float64, device=device) for _ in range(2))
        return cls(name=name, num_units=channels, taylor_sum=next(zeros), taylor_abs_sum=next(zeros))


@dataclass
class StatisticsCollector:
    """Hooks a model, runs batches through it and keeps FAIR's statistics.

    Use :func:`lightning_fair.compute_scores` unless you need the raw statistics.
    """

    model: nn.Module
    samples_per_class: int = 32
    num_projections: Union[int, str] = "auto"
    #: U compares at most this many classes (a seeded random subset; None: all), :mod:`.classes`
    max_classes: Optional[int] = 100
    observe: str = "activation"
    seed: int = 0
    loss_fn: Optional[Callable] = None
    unpack: Callable = default_unpack
    #: picks the class logits from the model's output (:func:`lightning_fair.runtime.batches.select_logits`)
    logits: Optional[Callable] = None
    ignored: set = field(default_factory=set)
    #: merge the statistics of all processes of the default process group after the pass
    #: (DDP: each rank passes its own shard; see :mod:`lightning_fair.runtime.distributed`)
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
    #: transformers: score the attention output projections' channels too (the embedding dimension)
    prune_embedding: bool = False

    def __post_init__(self):
        if self.observe not in OBSERVATION_POINTS:
            raise ValueError(f"observe must be one of {OBSERVATION_POINTS}, got {self.observe!r}")
        if int(self.samples_per_class) < 1:
            raise ValueError(f"samples_per_class must be a positive integer, got {self.samples_per_class!r}")
        check_projections(self.num_projections)  # "auto": resolved on the first batch (:func:`.projections_for`)
        if self.max_classes is not None and (isinstance(self.max_classes, bool) or int(self.max_classes) < 2):
            raise ValueError(f"max_classes must be an integer >= 2 or None (all classes), got {self.max_classes!r}")
        self.loss_fn = self.loss_fn or nn.functional.cross_entropy
        self.layers: Dict[str, LayerStatistics] = {}
        #: ``[K]`` samples kept per class (host); the classes U compares; each class's slot (-1: none)
        self.class_counts: Optional[torch.Tensor] = None
        self.chosen_classes: Optional[torch.Tensor] = None
        self.class_slots: Optional[torch.Tensor] = None
        self.num_batches = 0
        # calibration loss (sum of batch means) and top-1 hits, seen for free on the way
        # (summed on the device during the pass, read once at its end)
        self.loss_sum, self.correct, self.seen = 0.0, 0, 0
        self._tallies: Optional[torch.Tensor] = None
        #: {name: Conv/Linear} that may be scored (not ignored)
        self.candidates = candidate_layers(self.model, self.ignored)
        # transformers: attention heads are units (lightning_fair.units.attention), observed at their output
        # projection's input; the projections' own channels are not units
        attention = find_units(self.model, self.ignored)
        projections = {name for units in attention.values() for name in units.projections(self.prune_embedding)}
        self.candidates = {n: m for n, m in self.candidates.items() if n not in projections}
        self.heads = removable(attention)
        for name, units in attention.items():
            if units.blocked and self.channels is None:  # warned once, by the first pass
                warnings.warn(
                    f"the {units.unit_noun} of {name!r} are not pruned ({units.blocked}); "
                    "its projections are kept whole"
                )
        # every Conv/Linear, ignored or not, is a consumer whose input mean is recorded
        self.input_sums: Dict[str, torch.Tensor] = {}
        self.input_counts: Dict[str, int] = {}
        self.input_calls: Dict[str, int] = {}
        #: {name: Conv/Linear}, ignored ones too: the consumers whose inputs are observed
        self.consumers = candidate_layers(self.model, set())
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
        #: where the buffers live (the model's first parameter's device)
        self.device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        #: NaN/inf checks: at once on the CPU, read once at the end of the pass on a GPU
        self.checks = FiniteChecks(self.device)
        self.on_plan: Optional[Callable] = None  # called with the MemoryEstimate after the first batch
        self.chunks: List[Dict[str, Tuple[int, int]]] = []

    # ------------------------------------------------------------------ the pass
    def run(self, batches: Iterable, max_batches: Optional[int] = None) -> "StatisticsCollector":
        """Run every batch (or the first ``max_batches``) once; return self."""
        with preserved_modes(self.model), collecting(self.model):
            self.model.eval()
            with torch.inference_mode(False), torch.enable_grad():
                for batch in batches:
                    if max_batches is not None and self.num_batches >= max_batches:
                        break
                    self.update(batch)
        self.settle()
        if self.distributed and is_distributed():
            merge_ranks(self)
        if self.num_batches == 0:
            raise ValueError("the calibration dataloader yielded no batches; pass a non-empty dataloader")
        return self

    @property
    def collects_screening(self) -> bool:
        """Whether this pass gathers the screening moments (``screening`` and ``reconstruction``)."""
        return bool(self.screening) and bool(self.reconstruction)

    def settle(self) -> None:
        """Read what the pass kept on the device: the deferred NaN/inf checks (raising for the first
        failure) and the loss/accuracy tallies. :meth:`run` calls it at the end of the pass."""
        self.checks.flush()
        if self._tallies is not None:
            loss, correct = self._tallies.tolist()
            self.loss_sum, self.correct, self._tallies = self.loss_sum + loss, self.correct + int(correct), None

    def update(self, batch) -> None:
        """One forward and one backward over ``batch`` (the model must already be in eval mode).
        No host round trip on a GPU while labels arrive on the CPU (as a DataLoader yields them);
        labels on the GPU are copied to the host once per batch (which classes' samples to keep)."""
        inputs, labels = self.unpack(batch)
        inputs = grad_inputs(inputs, self.device)
        labels = torch.as_tensor(labels)
        if labels.dim() == 2 and labels.shape[1] == 1:
            labels = labels.flatten()
        target = labels.to(self.device, non_blocking=True)
        if target.is_inference():
            target = target.clone()
        recorder = BatchRecorder(self, labels)
        recorder.model_input = inputs
        self._pooled_inputs = {}
        handles = recorder.attach()
        handles += [m.register_forward_pre_hook(self._input_hook(n)) for n, m in self.consumers.items()]
        try:
            with recorder.functional():
                output = self.model(inputs)
        finally:
            for handle in handles:
                handle.remove()
        logits = select_logits(output, self.logits)
        if self.num_batches == 0:
            self._first_batch(recorder, logits)
        if not self.reconstruction:  # a later pass of a split collection: utilization samples only
            with torch.no_grad():
                recorder.commit()
            self.num_batches += 1
            return
        loss = self.loss_fn(logits, target)
        self.checks.check(
            loss, lambda batch=self.num_batches, loss=loss: f"the calibration loss is {loss.item()} on batch {batch}"
        )
        names = [n for n in self.layers if n in recorder.outputs]
        grads = torch.autograd.grad(loss, [recorder.outputs[n] for n in names], allow_unused=True)
        with torch.no_grad():
            for name, grad in zip(names, grads):
                if grad is None:
                    continue
                per_sample = units_view(grad * recorder.outputs[name], self.unit_module(name)).sum(2)  # [B, C]
                self.checks.check(
                    per_sample,
                    lambda name=name, batch=self.num_batches: (
                        f"the output of layer {name!r} or the loss gradient at it is not finite (NaN/inf) on "
                        f"calibration batch {batch}; check the inputs and the model's numerics "
                        "(e.g. a division by zero, fp16 overflow) before pruning"
                    ),
                )
                stats = self.layers[name]
                stats.taylor_sum += per_sample.sum(0).to(torch.float64)
                stats.taylor_abs_sum += per_sample.abs().sum(0).to(torch.float64)
            recorder.commit()
            if self.collects_screening:
                self._accumulate_screening(recorder, target)
        tallies = torch.stack(
            [loss.detach().to(torch.float64), (logits.detach().argmax(1) == target).sum().to(torch.float64)]
        )
        self._tallies = tallies if self._tallies is None else self._tallies + tallies
        self.seen += int(target.shape[0])
        self.num_batches += 1

    def _accumulate_screening(self, recorder: "BatchRecorder", target: torch.Tensor) -> None:
        """Add this batch's per-class count, sum and sum of squares of every pooled value."""
        labels = target.detach().long().flatten()  # checked on the host by the recorder
        num_classes = self.class_counts.numel()
        for name, stats in self.layers.items():
            if name not in recorder.pooled:
                continue
            stage, values = recorder.pooled[name]
            self.checks.check(
                values,
                lambda name=name, stage=stage, batch=self.num_batches: (
                    f"the activations observed for layer {name!r} ({STAGE_NAMES[stage]}) are not finite (NaN/inf) "
                    f"on calibration batch {batch}; check the inputs and the model's numerics before pruning"
                ),
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
        return {
            name: moments
            for name, moments in self.input_moments.items()
            if moments is not None and self.input_calls.get(name) == self.num_batches
        }

    # ------------------------------------------------------------------ helpers
    def _first_batch(self, recorder: "BatchRecorder", logits: torch.Tensor) -> None:
        num_classes = logits.shape[1]
        if num_classes < 2:
            raise ValueError(f"the model's output has {num_classes} class; FAIR needs classification logits")
        self.class_counts = torch.zeros(num_classes, dtype=torch.long)
        self.chosen_classes = chosen_classes(num_classes, self.max_classes, self.seed)
        self.class_slots = class_slots(num_classes, self.chosen_classes)
        self.num_projections = projections_for(self.num_projections, self.chosen_classes.numel())
        executed = [n for n in dict.fromkeys(recorder.order) if n in self.candidates]
        if not executed:
            raise ValueError("no Conv or Linear layer ran in the forward pass (all ignored, or none in the model)")
        output_layer = executed[-1]
        units = [n for n in dict.fromkeys(recorder.order) if n in self.candidates or n in self.heads]
        for name in (n for n in units if n != output_layer):
            if name not in recorder.outputs:
                continue  # its output does not depend on anything differentiable
            if recorder.calls[name] > 1:
                warnings.warn(f"layer {name!r} runs {recorder.calls[name]} times per forward; it is not scored")
                continue
            if name in recorder.off_batch:
                warnings.warn(
                    f"the output of layer {name!r} has shape {list(recorder.off_batch[name])}, whose first "
                    f"dimension is not the batch ({logits.shape[0]} samples); it is not scored (a "
                    "sequence-first layout: use batch_first=True)"
                )
                continue
            out = recorder.outputs[name]
            module = self.unit_module(name)
            channels = units_view(out, module).shape[1]
            self.layers[name] = LayerStatistics.empty(name, channels, self.device)
            if self.collects_screening:
                self.layers[name].moments = ClassMoments.zeros(num_classes, channels, self.device)
        for name, shape in recorder.input_shapes.items():
            if self.input_observed_calls.get(name) != 1 or input_key(name) in recorder.off_batch:
                continue  # runs more than once per forward, or its input is not batch-first: no distribution
            key = input_key(name)
            channels = shape[1]
            self.layers[key] = LayerStatistics.empty(key, channels, self.device)
        self.output_layer = output_layer
        if not [n for n in self.layers if consumer_of(n) is None]:
            raise ValueError(
                f"the model has no prunable layer besides its output layer ({output_layer!r}); check ignored_layers"
            )
        compared = self.chosen_classes.numel()
        self.estimate = MemoryEstimate(
            compared,
            int(self.samples_per_class),
            int(self.num_projections),
            {
                name: (
                    stats.num_units,
                    unit_bytes(
                        compared, int(self.samples_per_class), recorder.map_sizes[name], int(self.num_projections)
                    ),
                )
                for name, stats in self.layers.items()
            },
            8 * sum(t.numel() for t in self.input_sums.values()),
            screening_bytes(
                num_classes,
                [s.num_units for s in self.layers.values() if s.moments is not None],
                [v.shape[1] for v in self._pooled_inputs.values()],
            )
            if self.collects_screening
            else 0,
            num_classes,
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
            if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
                with torch.no_grad():
                    x = args[0].detach().to(torch.float64)
                    accumulate_input(name, x, module, self.input_sums, self.input_counts)
                    pooled = pooled_input(x, module) if self.collects_screening else None
                    if pooled is not None:
                        self._pooled_inputs[name] = pooled

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
        if key in self.heads:
            return self.heads[key]
        return self.candidates[key] if consumer is None else self.consumers[consumer]

    def projection(self, name: str, map_size: int) -> Optional[torch.Tensor]:
        """The ``[map_size, P]`` seeded directions of a layer (None for scalar units)."""
        if map_size == 1:
            return None
        key = f"{name}:{map_size}"
        if key not in self._projections:
            layer_seed = zlib.crc32(name.encode()) ^ int(self.seed)
            self._projections[key] = random_projections(map_size, self.num_projections, seed=layer_seed).to(self.device)
        return self._projections[key]


def accumulate_input(
    name: str, x: torch.Tensor, module: nn.Module, sums: Dict[str, torch.Tensor], counts: Dict[str, int]
) -> None:
    """Add one batch's input ``x`` (float64) of ``module`` to ``sums[name]`` / ``counts[name]``:
    summed over samples (and tokens for a Linear) to ``[C_in, *spatial]`` / ``[in_features]``.
    An input whose shape changes between batches has no single mean: its count becomes -1."""
    if isinstance(module, nn.Linear):
        total, count = x.reshape(-1, x.shape[-1]).sum(0), x.numel() // max(x.shape[-1], 1)
    else:  # [B, C, *spatial] -> [C, *spatial]
        total, count = x.sum(0), x.shape[0]
    if name in sums and sums[name].shape == total.shape:
        sums[name] += total
        counts[name] += count
    elif name not in sums:
        sums[name], counts[name] = total, count
    else:
        counts[name] = -1


def pooled_input(x: torch.Tensor, module: nn.Module) -> Optional[torch.Tensor]:
    """``[B, C_in]``: one value per sample and input feature / channel (mean over the rest), or None."""
    if isinstance(module, nn.Linear):
        return x.reshape(x.shape[0], -1, x.shape[-1]).mean(1) if x.dim() > 1 else None
    return x.reshape(x.shape[0], x.shape[1], -1).mean(2) if x.dim() > 2 else None
