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
* each unit's largest absolute value of the observed tensor over every sample (the units with
  massive activations, kept by :mod:`lightning_fair.scoring.massive`);
* the projected per-class samples of the input of every Conv/Linear whose input is not simply
  one scored layer's observed tensor (it comes through a residual add, a pooling, a
  concatenation, ...): what the *consumers* of a coupled group's channels see, for the
  utilization score of channels shared through residual adds (:mod:`lightning_fair.removal.planner`);
* with ``screening=True``, per class: the number of images, and the sum and sum of squares of
  each unit's spatially averaged observed tensor (the tensor U observes, all images of the
  batch, not only the ones kept for U) and of every Conv/Linear's spatially averaged input
  (for the screening criterion's F-statistic, :mod:`lightning_fair.scoring.screening`), float64.

Each statistic is one accumulator in its own module, with its update, its merge across processes
and its size: :mod:`.samples` (U), :mod:`.taylor` (R), :mod:`.inputs` (mean replacement),
:mod:`.moments` (screening), :mod:`.peaks` (massive activations), :mod:`.tallies` (calibration loss
and accuracy). They live in
preallocated buffers, so memory does not grow with the number of batches.
The model is scored in eval mode and handed back exactly as it was: weights, buffers,
``.grad``, train/eval flags and ``requires_grad`` are never touched (gradients are taken
with :func:`torch.autograd.grad` with respect to layer outputs only).

The forward hooks of a batch (which tensor U observes, which samples are kept) are in
:mod:`lightning_fair.collect.observation`; splitting batches into ``(inputs, target)`` in
:mod:`lightning_fair.runtime.batches`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import nn

from ..config import OBSERVATION_POINTS, PAIRS, check_projections
from ..runtime.batches import (
    IGNORE_INDEX,
    call_model,
    default_unpack,
    first_inputs,
    grad_inputs,
    is_token_target,
    main_input,
    mask_padding,
    next_token_pairs,
    padding_mask,
    real_rows,
    select_logits,
)
from ..runtime.distributed import is_distributed
from ..runtime.guards import preserved_modes
from ..units.channels import candidate_layers, consumer_of, input_key, units_view
from ..units.families import collecting, find_units, removable
from .finite import FiniteChecks
from .inputs import InputMeans
from .memory import MemoryEstimate
from .moments import ClassMoments, ScreeningMoments, screening_bytes
from .observation import STAGE_NAMES, BatchRecorder
from .peaks import ActivationPeaks
from .ranks import merge_ranks
from .samples import ClassSamples, unit_bytes
from .tallies import CalibrationTallies
from .taylor import TaylorSums
from .tokens import NextTokenClasses

# default_unpack and first_inputs live in .batches; imported from here too
__all__ = ["LayerStatistics", "StatisticsCollector", "default_unpack", "first_inputs"]


@dataclass
class LayerStatistics:
    """What the pass knows of one scored layer (its statistics are in the collector's accumulators)."""

    name: str
    num_units: int
    #: which tensor was observed: "output", "norm" or "activation".
    observed: str = "output"
    #: flattened size of a unit's output per image (1 for a scalar unit).
    map_size: int = 1


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
    #: next-token prediction: what a class is for U, ``"frequent"`` or ``"clusters"`` (:mod:`.tokens`)
    token_classes: str = "frequent"
    #: how U combines the class pairs' distances, ``"max"`` or ``"mean"`` (read when scoring)
    pairs: str = "max"
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
        if self.pairs not in PAIRS:
            raise ValueError(f"pairs must be one of {PAIRS}, got {self.pairs!r}")
        if int(self.samples_per_class) < 1:
            raise ValueError(f"samples_per_class must be a positive integer, got {self.samples_per_class!r}")
        check_projections(self.num_projections)  # "auto": resolved on the first batch (:func:`.projections_for`)
        if self.max_classes is not None and (isinstance(self.max_classes, bool) or int(self.max_classes) < 2):
            raise ValueError(f"max_classes must be an integer >= 2 or None (all classes), got {self.max_classes!r}")
        self.loss_fn = self.loss_fn or nn.functional.cross_entropy
        self.layers: Dict[str, LayerStatistics] = {}
        #: where the buffers live (the model's first parameter's device)
        self.device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        # the statistics, one accumulator each (screening: made on the first batch, once K is known)
        self.class_samples = ClassSamples(
            self.samples_per_class, self.num_projections, self.max_classes, self.seed, self.device
        )
        self.taylor = TaylorSums(self.device)
        self.inputs = InputMeans()
        self.peaks = ActivationPeaks()
        self.tallies = CalibrationTallies()
        #: next-token prediction (token ids as inputs and target, :func:`is_token_target`): decided on
        #: the first batch; every position is a sample, its class the next token (:mod:`.tokens`)
        self.next_token: Optional[bool] = None
        self.next_token_classes = NextTokenClasses(self.max_classes, self.token_classes, self.seed)
        self.screening_moments: Optional[ScreeningMoments] = None
        #: {name: Conv/Linear} that may be scored (not ignored)
        self.candidates = candidate_layers(self.model, self.ignored)
        # transformers: attention heads are units (lightning_fair.units.attention), observed at their output
        # projection's input; the projections' own channels are not units
        attention = find_units(self.model, self.ignored)
        projections = {name for units in attention.values() for name in units.projections(self.prune_embedding)}
        self.candidates = {n: m for n, m in self.candidates.items() if n not in projections}
        self.heads = removable(attention)
        #: Conv/Linear whose inputs U does not observe: the layers of unit families, whose input
        #: channels are units of the family or (unless ``prune_embedding``) the embedding dimension
        self.family_layers = (
            set() if self.prune_embedding else projections | {u.output_name for u in self.heads.values()}
        )
        for name, units in attention.items():
            if units.blocked and self.channels is None:  # warned once, by the first pass
                warnings.warn(
                    f"the {units.unit_noun} of {name!r} are not pruned ({units.blocked}); "
                    "its projections are kept whole"
                )
        #: {name: Conv/Linear}, ignored ones too: the consumers whose inputs are observed
        self.consumers = candidate_layers(self.model, set())
        #: decided on the first batch (:class:`.observation.BatchRecorder`): calls per forward of each
        #: consumer input observed for U; {consumer: an earlier consumer reading the very same tensor}
        #: (observed once, under the first); consumers whose input is observed apart, in execution order
        self.input_observed_calls: Dict[str, int] = {}
        self.input_aliases: Dict[str, str] = {}
        self.input_order: List[str] = []
        self._pooled_inputs: Dict[str, torch.Tensor] = {}
        #: this batch's real tokens when its keyword inputs are padded (:func:`padding_mask`), else None
        self._padding: Optional[torch.Tensor] = None
        #: NaN/inf checks: at once on the CPU, read once at the end of the pass on a GPU
        self.checks = FiniteChecks(self.device)
        self.on_plan: Optional[Callable] = None  # called with the MemoryEstimate after the first batch
        self.chunks: List[Dict[str, Tuple[int, int]]] = []

    def statistics(self) -> list:
        """The accumulators of this pass (each with ``merge`` across processes and ``nbytes``)."""
        found = [self.taylor, self.screening_moments, self.class_samples, self.inputs, self.peaks, self.tallies]
        return [s for s in found if s is not None]

    @property
    def num_batches(self) -> int:
        return self.tallies.batches

    @property
    def class_counts(self) -> Optional[torch.Tensor]:
        """``[K]`` samples kept per class for U (host); None before the first batch."""
        return self.class_samples.counts if self.class_samples.started else None

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
        self.tallies.settle()

    def update(self, batch) -> None:
        """One forward and one backward over ``batch`` (the model must already be in eval mode).
        No host round trip on a GPU while labels arrive on the CPU (as a DataLoader yields them);
        labels on the GPU are copied to the host once per batch (which classes' samples to keep)."""
        inputs, labels = self.unpack(batch)
        tokens = is_token_target(inputs, labels)
        if self.next_token is None:
            self.next_token = tokens
            if tokens and self.collects_screening:
                raise ValueError("screening=True needs class labels; it does not score next-token prediction")
        elif tokens != self.next_token:
            raise ValueError(
                "every calibration batch must have the same kind of target: token ids (next-token prediction) "
                f"or class labels; batch {self.num_batches} differs from the first"
            )
        inputs = grad_inputs(inputs, self.device)
        labels = torch.as_tensor(labels)
        if tokens:  # padded positions are neither samples nor in the loss
            labels = mask_padding(inputs, labels)
        if labels.dim() == 2 and labels.shape[1] == 1 and not tokens:
            labels = labels.flatten()
        target = labels.to(self.device, non_blocking=True)
        if target.is_inference():
            target = target.clone()
        if tokens:
            following = labels.detach().long().cpu()[:, 1:].reshape(-1)
            if not self.next_token_classes.num_classes:
                self.next_token_classes.fit(following, self.model)
            recorder = BatchRecorder(self, self.next_token_classes(following), tuple(main_input(inputs).shape))
            predicting = following != IGNORE_INDEX  # padded positions, and those that predict padding
            if not bool(predicting.all()):
                recorder.real_samples = predicting
        else:
            mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
            padded = isinstance(mask, torch.Tensor) and mask.dim() == 2 and not bool((mask != 0).all())
            recorder = BatchRecorder(self, self.checked_labels(labels), padding=(mask != 0) if padded else None)
        recorder.model_input = main_input(inputs)
        self._padding = padding_mask(inputs)
        self._pooled_inputs = {}
        handles = recorder.attach()
        handles += [m.register_forward_pre_hook(self._input_hook(n)) for n, m in self.consumers.items()]
        try:
            with recorder.functional():
                output = call_model(self.model, inputs)
        finally:
            for handle in handles:
                handle.remove()
        logits = select_logits(output, self.logits, tokens=tokens)
        if tokens:
            logits, target = next_token_pairs(logits, target)
        if self.num_batches == 0:
            self._first_batch(recorder, logits)
        for name, peak in recorder.peaks.items():
            if name in self.layers:
                self.peaks.add(name, peak)
        if not self.reconstruction:  # a later pass of a split collection: utilization samples only
            with torch.no_grad():
                self._add_samples(recorder)
            self.tallies.batches += 1
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
                self.taylor.add(name, per_sample)
            self._add_samples(recorder)
            if self.collects_screening:
                self._add_screening(recorder, target)
        if tokens:  # positions without a target count for neither the loss nor the accuracy
            scored = target != IGNORE_INDEX
            logits, target = logits[scored], target[scored]
        self.tallies.add(loss, logits, target)
        self.tallies.batches += 1

    def checked_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The batch's labels on the host, checked: one class index >= 0 per sample, within the
        model's outputs once they are known."""
        if labels.dim() != 1:
            raise ValueError(f"labels must be one class index per sample, got shape {tuple(labels.shape)}")
        labels = labels.detach().long().cpu()
        if labels.numel() and labels.min() < 0:
            raise ValueError("labels must be class indices >= 0")
        counts = self.class_samples.counts
        if self.class_samples.started and labels.numel() and labels.max() >= counts.numel():
            raise ValueError(f"labels must lie in [0, {counts.numel()}) for a model with {counts.numel()} outputs")
        return labels

    def _add_samples(self, recorder: BatchRecorder) -> None:
        """This batch's selected observations of the scored layers of this pass's chunk, into U's buffers."""
        if recorder.selected is None:
            return
        observed = {n: recorder.observed[n] for n in self.layers if n in recorder.observed and n in self.channels}
        for name, (stage, values) in observed.items():
            if name not in self.class_samples.buffers:
                self.layers[name].observed = STAGE_NAMES[stage]
                self.layers[name].map_size = values.shape[2]

        def check(name: str, values: torch.Tensor, batch=self.num_batches) -> None:
            stage = STAGE_NAMES[observed[name][0]]
            self.checks.check(
                values,
                lambda: (
                    f"the activations U observes for layer {name!r} ({stage}) are not finite (NaN/inf) "
                    f"on calibration batch {batch}; check the inputs and the model's numerics before pruning"
                ),
            )

        self.class_samples.add(
            recorder.labels[recorder.selected_cpu],
            {name: values for name, (_, values) in observed.items()},
            self.channels,
            check,
        )

    def _add_screening(self, recorder: BatchRecorder, target: torch.Tensor) -> None:
        """Add this batch's per-class count, sum and sum of squares of every pooled value."""
        labels = target.detach().long().flatten()  # checked on the host
        moments = self.screening_moments
        for name in moments.layers:
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
            moments.add(name, labels, values)
        for name, values in self._pooled_inputs.items():
            moments.add_input(name, labels, values)
        self._pooled_inputs = {}

    def input_class_moments(self) -> Dict[str, ClassMoments]:
        """Moments of the spatially averaged input of every Conv/Linear that ran once per forward with a
        fixed input width (``screening=True``)."""
        if self.screening_moments is None:
            return {}
        return {
            name: moments
            for name, moments in self.screening_moments.inputs.items()
            if moments is not None and self.inputs.once_per_forward(name, self.num_batches)
        }

    # ------------------------------------------------------------------ helpers
    def _first_batch(self, recorder: "BatchRecorder", logits: torch.Tensor) -> None:
        num_classes = self.next_token_classes.num_classes if self.next_token else logits.shape[1]
        if num_classes < 2:
            raise ValueError(f"the model's output has {num_classes} class; FAIR needs classification logits")
        if recorder.labels.numel() and recorder.labels.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}) for a model with {num_classes} outputs")
        self.class_samples.start(num_classes)
        self.num_projections = self.class_samples.num_projections
        self.input_observed_calls = recorder.input_calls
        self.input_aliases = recorder.input_aliases
        self.input_order = recorder.input_order
        if self.collects_screening:
            self.screening_moments = ScreeningMoments(num_classes, self.device)
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
            self.layers[name] = LayerStatistics(name, channels)
            self.taylor.start(name, channels)
            if self.screening_moments is not None:
                self.screening_moments.start(name, channels)
        for name, shape in recorder.input_shapes.items():
            if self.input_observed_calls.get(name) != 1 or input_key(name) in recorder.off_batch:
                continue  # runs more than once per forward, or its input is not batch-first: no distribution
            key = input_key(name)
            self.layers[key] = LayerStatistics(key, shape[1])
        self.output_layer = output_layer
        if not [n for n in self.layers if consumer_of(n) is None]:
            raise ValueError(
                f"the model has no prunable layer besides its output layer ({output_layer!r}); check ignored_layers"
            )
        compared = self.class_samples.chosen.numel()
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
            self.inputs.nbytes,
            screening_bytes(
                num_classes,
                [self.layers[n].num_units for n in self.screening_moments.layers],
                [v.shape[1] for v in self._pooled_inputs.values()],
            )
            if self.screening_moments is not None
            else 0,
            num_classes,
        )
        if self.channels is None:
            self.chunks = self.estimate.chunks(self.memory_budget)
            self.channels = self.chunks[0]
        else:
            self.chunks = [self.channels]
        self.class_samples.expected = [n for n in self.layers if n in self.channels]
        if self.on_plan is not None:
            self.on_plan(self.estimate)

    def _input_hook(self, name: str):
        def hook(module, args):
            if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
                with torch.no_grad():
                    x = args[0].detach().to(torch.float64)
                    # padded token positions stay out of the mean input (mean replacement's estimate)
                    self.inputs.add(name, real_rows(x, self._padding) if isinstance(module, nn.Linear) else x, module)
                    pooled = pooled_input(x, module) if self.collects_screening else None
                    if pooled is not None:
                        self._pooled_inputs[name] = pooled
            else:
                self.inputs.called(name)

        return hook

    def input_means(self) -> Dict[str, torch.Tensor]:
        """Mean input of every Conv/Linear that ran once per forward with a fixed input shape:
        ``[C_in, *spatial]`` for a conv, ``[in_features]`` for a Linear (float64)."""
        return self.inputs.means(self.num_batches)

    def unit_module(self, key: str) -> nn.Module:
        """The module whose units a statistics entry holds: the layer, or the consumer of an input."""
        consumer = consumer_of(key)
        if key in self.heads:
            return self.heads[key]
        return self.candidates[key] if consumer is None else self.consumers[consumer]


def pooled_input(x: torch.Tensor, module: nn.Module) -> Optional[torch.Tensor]:
    """``[B, C_in]``: one value per sample and input feature / channel (mean over the rest), or None."""
    if isinstance(module, nn.Linear):
        return x.reshape(x.shape[0], -1, x.shape[-1]).mean(1) if x.dim() > 1 else None
    return x.reshape(x.shape[0], x.shape[1], -1).mean(2) if x.dim() > 2 else None
