"""How much memory the statistics pass needs, and how to keep it under a budget.

The utilization score keeps, per scored layer, ``samples_per_class`` observations of every
class for every unit, each seen through ``num_projections`` directions (conv maps) or as one
scalar (Linear): ``K * n * C * D`` float32 values. That grows with the number of classes and
channels, not with the number of batches. Everything else is small: the reconstruction sums
(``2 * C`` float64 per layer), the peaks (``C`` float32 per layer) and the mean input of every
Conv/Linear (``C_in * spatial`` float64). Scoring a layer needs a bounded work buffer
(:func:`lightning_fair.scoring.distances.max_pairwise_w1` sorts and compares a chunk of units at a
time). With ``screening=True`` the screening criterion adds, per scored layer and per Conv/Linear
input, a per-class count, sum and sum of squares: ``16 * K * C + 8 * K`` bytes (float64).

When the estimate exceeds ``memory_budget``, the units are split into chunks (whole layers
where they fit, channel ranges of a layer that alone does not) and the utilization samples
are collected one chunk per pass over the calibration data: the first pass also collects
everything else (one forward and one backward per batch), later passes are forward only.
A unit's score does not depend on the other units, so the scores are the same as in one pass
(given the same batches in the same order).

Time: besides the passes, U compares the K classes of every (unit, projection) pairwise: one L1
``cdist`` of ``K`` quantile functions of ``n`` levels, about ``K² (n + 8)`` operations (the 8: what
a pair costs beyond its ``n`` differences, measured), :attr:`MemoryEstimate.distance_ops`. ``max_classes``
(default 100, the
reference's cap) bounds K, and ``num_projections="auto"`` (the default) takes 32 directions instead of
128 from 50 compared classes on (:func:`lightning_fair.collect.classes.projections_for`);
:meth:`MemoryEstimate.cost_warning` says which option brings a setting down when it would take far too long.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ..config import AUTO_PROJECTIONS, MANY_CLASSES, parse_bytes
from ..runtime.batches import call_model, is_token_ids, main_input, select_logits, token_samples
from ..runtime.guards import preserved_modes
from ..units.channels import (
    ACTIVATION_TYPES,
    NORM_TYPES,
    PASS_THROUGH_TYPES,
    candidate_layers,
    consumer_of,
    input_key,
    resolve_ignored,
    units_view,
)
from ..units.families import collecting, find_units, removable
from .classes import projections_for
from .moments import screening_bytes
from .samples import unit_bytes

__all__ = ["MemoryEstimate", "estimate_memory", "parse_bytes", "resolve_budget", "screening_bytes"]

CPU_BUDGET = "4GiB"
#: the estimate is printed before the pass (verbose) from this size on, or when it takes several
#: passes or this many seconds of distances; below, the pass is quick and small enough to just run
ANNOUNCE_BYTES = 1 << 30
ANNOUNCE_SECONDS = 30.0
AUTO_FRACTION = 0.5
#: Bytes the work buffers of one layer's distance computation may reach (each of the five holds at most
#: ``max_pairwise_w1``'s ``max_elements``); a smaller model needs less (:attr:`StatisticsEstimate.distance_work_bytes`).
DISTANCE_WORK_BYTES = (
    5 * 2**25 * 4
)  # float32: sorted chunk, stacked class grids, the grid, its weighted copy, distances
#: Distance operations (``K² (n + 8)`` per unit and projection) a machine does per second, measured with
#: :func:`lightning_fair.scoring.distances.max_pairwise_w1`: about 2e9 on one core of the CI machine (n = 2 to 32);
#: a GPU is assumed 100x one core. Only used to say when a setting would take far too long.
PAIR_OVERHEAD = 8
OPS_PER_SECOND = {"cpu": 2e9, "cuda": 2e11}
#: Above these the estimate warns (:meth:`MemoryEstimate.cost_warning`).
LONG_SECONDS, MANY_PASSES = 3600.0, 8


def resolve_budget(value: Union[int, float, str, None], device=None) -> Optional[int]:
    """``memory_budget`` in bytes for statistics kept on ``device``: ``"auto"`` is half the free memory
    of a CUDA device (what is free when scoring starts), 4 GiB on the CPU or any other device;
    anything else as :func:`parse_bytes`.

    Example:
        >>> resolve_budget("auto", "cpu") == parse_bytes("4GiB"), resolve_budget("1GiB")
        (True, 1073741824)
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        device = torch.device(device if device is not None else "cpu")
        if device.type == "cuda" and torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info(device)
            return max(1, int(free * AUTO_FRACTION))
        return parse_bytes(CPU_BUDGET)
    return parse_bytes(value)


@dataclass
class MemoryEstimate:
    """Memory of the statistics pass, per layer and in total (bytes)."""

    num_classes: int
    samples_per_class: int
    num_projections: int
    #: {layer: (units, bytes per unit of utilization samples)}
    layers: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    #: bytes of the mean inputs of every Conv/Linear (for compensation)
    input_bytes: int = 0
    #: bytes of the screening statistics (0 unless ``screening=True``)
    screening_bytes: int = 0
    #: classes of the model (``num_classes`` is how many U compares, at most ``max_classes``)
    model_classes: int = 0

    @property
    def pairs(self) -> int:
        """Class pairs U compares for every unit and projection."""
        return self.num_classes * (self.num_classes - 1) // 2

    @property
    def distance_ops(self) -> int:
        """Operations of the pairwise distances: ``K² (n + 8)`` per unit and projection (``bytes / 4 = K n D``)."""
        n = self.samples_per_class
        return sum(c * b * self.num_classes * (n + PAIR_OVERHEAD) // (4 * n) for c, b in self.layers.values())

    def distance_seconds(self, device: str = "cpu", threads: int = 1) -> float:
        """Rough time of the pairwise distances (``device`` ``"cpu"`` with ``threads`` threads, or ``"cuda"``)."""
        rate = OPS_PER_SECOND.get(device, OPS_PER_SECOND["cpu"]) * (max(threads, 1) if device == "cpu" else 1)
        return self.distance_ops / rate

    def worth_saying(self, budget: Optional[int], device: str = "cpu", threads: int = 1) -> bool:
        """Whether the estimate is worth printing before the pass: it takes a sizeable share of memory
        (:data:`ANNOUNCE_BYTES`), several passes, or distances of :data:`ANNOUNCE_SECONDS` or more."""
        return (
            self.total_bytes >= ANNOUNCE_BYTES
            or len(self.chunks(budget)) > 1
            or self.distance_seconds(device, threads) >= ANNOUNCE_SECONDS
        )

    def cost_warning(self, budget: Optional[int], device: str = "cpu", threads: int = 1) -> Optional[str]:
        """A sentence naming the options that bring the cost down, if the setting would take far too
        long (more than ``MANY_PASSES`` passes, or over an hour of distances); else None."""
        passes = len(self.chunks(budget))
        seconds = self.distance_seconds(device, threads)
        if passes <= MANY_PASSES and seconds <= LONG_SECONDS:
            return None
        what = []
        if passes > MANY_PASSES:
            what.append(
                f"{passes} passes over the calibration data (memory_budget={_size(budget)} for "
                f"{_size(self.total_bytes)} of statistics)"
            )
        if seconds > LONG_SECONDS:
            what.append(
                f"about {seconds / 3600:,.1f} h of class-pair distances on {device}"
                + (f" ({threads} thread(s))" if device == "cpu" else "")
                + f" ({self.pairs:,} pairs of {self.num_classes} classes per unit and projection)"
            )
        return (
            "lightning_fair: scoring would take far too long: " + "; ".join(what) + ". Bring it down with "
            f"max_classes (now {self.num_classes} classes compared; time ~ classes², memory ~ classes), "
            f"num_projections (now {self.num_projections}; the default 'auto' takes "
            f"{AUTO_PROJECTIONS['many']} from {MANY_CLASSES} compared classes on; "
            f"time and memory ~ projections) or samples_per_class (now {self.samples_per_class})"
            + (", or a larger memory_budget (passes only)" if passes > MANY_PASSES else "")
        )

    @property
    def samples_bytes(self) -> int:
        return sum(c * b for c, b in self.layers.values())

    @property
    def reconstruction_bytes(self) -> int:
        """The per-unit vectors of every scored layer (not of the observed layer inputs): R's two float64
        Taylor sums and the float32 peak that finds massive activations (:mod:`.peaks`)."""
        return sum((16 + 4) * c for name, (c, _) in self.layers.items() if consumer_of(name) is None)

    @property
    def distance_work_bytes(self) -> int:
        """The distance computation's work buffers for the widest layer: five intermediates of its
        ``[units, projections, classes, max(samples, classes)]`` elements, at most
        :data:`DISTANCE_WORK_BYTES` (the computation goes in chunks of units beyond that)."""
        n, k = max(self.samples_per_class, 1), self.num_classes
        widest = max((c * b for c, b in self.layers.values()), default=0)
        return min(DISTANCE_WORK_BYTES, 5 * widest * max(n, k) // n)

    def peak_bytes(self, chunk_bytes: Optional[int] = None) -> int:
        """Peak of one pass holding ``chunk_bytes`` of samples (default: everything at once)."""
        held = self.samples_bytes if chunk_bytes is None else chunk_bytes
        return held + self.distance_work_bytes + self.reconstruction_bytes + self.input_bytes + self.screening_bytes

    @property
    def total_bytes(self) -> int:
        """Peak of a single pass."""
        return self.peak_bytes()

    def chunks(self, budget: Optional[int]) -> List[Dict[str, Tuple[int, int]]]:
        """Channel ranges per pass ``[{layer: (start, stop)}]`` so each pass fits ``budget``."""
        everything = {name: (0, c) for name, (c, _) in self.layers.items()}
        if budget is None or self.peak_bytes() <= budget:
            return [everything]
        fixed = self.distance_work_bytes + self.reconstruction_bytes + self.input_bytes + self.screening_bytes
        capacity = budget - fixed  # samples held (units are sorted and compared in bounded chunks)
        smallest = min((b for _, b in self.layers.values()), default=1)
        if capacity < smallest:
            raise ValueError(
                f"memory_budget={budget / 2**20:.0f} MiB is below the {(fixed + smallest) / 2**20:.0f} MiB one unit "
                "needs; raise memory_budget, or lower samples_per_class / num_projections / max_classes"
            )
        chunks, current, used = [], {}, 0
        for name, (units, per_unit) in self.layers.items():
            start = 0
            while start < units:
                room = (capacity - used) // per_unit
                if room <= 0:
                    chunks.append(current)
                    current, used = {}, 0
                    continue
                stop = min(units, start + room)
                current[name] = (start, stop)
                used += (stop - start) * per_unit
                start = stop
        if current:
            chunks.append(current)
        return chunks

    def describe(self, budget: Optional[int] = None, device: str = "cpu", threads: int = 1) -> str:
        """The estimate in words: memory, passes under ``budget``, class pairs and distance work."""
        passes = len(self.chunks(budget))
        classes = (
            f"{self.num_classes} of {self.model_classes} classes"
            if self.model_classes > self.num_classes
            else f"{self.num_classes} classes"
        )
        seconds = self.distance_seconds(device, threads)
        text = (
            f"lightning_fair: statistics need about {self.total_bytes / 2**20:,.0f} MiB in one pass "
            f"({len(self.layers)} layers, {classes} x {self.samples_per_class} samples, "
            f"{self.num_projections} projections); {self.pairs:,} class pairs, {self.distance_ops:.2g} distance "
            f"operations (~{_duration(seconds)} on {device}"
            + (f", {threads} thread(s)" if device == "cpu" else "")
            + ")"
        )
        if passes > 1:
            worst = max(
                self.peak_bytes(sum((b - a) * self.layers[n][1] for n, (a, b) in chunk.items()))
                for chunk in self.chunks(budget)
            )
            text += (
                f"; over the budget of {budget / 2**20:,.0f} MiB: {passes} passes over the calibration data "
                f"(the first with a backward, the others forward only), at most {worst / 2**20:,.0f} MiB each"
            )
        return text

    def __str__(self) -> str:
        return self.describe()


def _size(value: Optional[int]) -> str:
    return "None" if value is None else f"{value / 2**30:,.1f} GiB" if value >= 2**30 else f"{value / 2**20:,.0f} MiB"


def _duration(seconds: float) -> str:
    return (
        f"{seconds:,.1f} s"
        if seconds < 120
        else f"{seconds / 60:,.0f} min"
        if seconds < 7200
        else f"{seconds / 3600:,.1f} h"
    )


def estimate_memory(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    num_classes: Optional[int] = None,
    samples_per_class: int = 32,
    num_projections: Union[int, str] = "auto",
    max_classes: Optional[int] = 100,
    ignored_layers=None,
    screening: bool = False,
    observe: str = "activation",
    logits: Optional[Callable] = None,
    prune_embedding: bool = False,
) -> MemoryEstimate:
    """Estimate the statistics pass's memory from one forward of ``example_inputs`` (one sample is enough).

    ``num_classes`` defaults to the width of the model's output, of which U compares at most
    ``max_classes`` (None: all), each conv unit through ``num_projections`` directions (``"auto"``: by
    the classes compared, as the statistics pass, :func:`lightning_fair.collect.classes.projections_for`);
    ``screening=True`` counts the
    screening criterion's statistics too (as ``compute_scores(..., screening=True)``); ``observe``
    as in ``compute_scores`` (it decides which layer inputs are observed apart, see
    :mod:`lightning_fair.collect.collector`); ``prune_embedding`` as in ``compute_scores`` (transformers).

    Example:
        >>> from lightning_fair.demos import zoo
        >>> est = estimate_memory(zoo.small_cnn(width=8), torch.randn(1, 1, 8, 8))
        >>> list(est.layers), est.num_classes   # scored layers, then inputs observed apart (after pooling)
        (['features.0.0', 'features.1.0', 'features.3.0', 'head.0', 'features.3.0<input>', 'head.0<input>'], 10)
    """
    ignored = resolve_ignored(model, ignored_layers)
    attention = find_units(model, ignored)  # attention heads are units, their projections are not (statistics)
    projections = {name for units in attention.values() for name in units.projections(prune_embedding)}
    heads = removable(attention)
    modules = {n: m for n, m in candidate_layers(model, ignored).items() if n not in projections}
    consumers = candidate_layers(model, set())
    family_layers = set() if prune_embedding else projections | {units.output_name for units in heads.values()}
    # next-token prediction: every token position is a sample (as in the statistics pass)
    tokens = tuple(main_input(example_inputs).shape) if is_token_ids(example_inputs) else None

    def view_of(tensor, holder):
        samples = token_samples(tensor, *tokens) if tokens is not None else None
        return units_view(tensor if samples is None else samples, holder)

    shapes, order, calls, inputs, widths = {}, [], {}, {}, {}
    # tensors a layer's U observes (its output, then through the norm / activation that follow):
    # a consumer reading one of them adds nothing; any other input is observed apart
    # chain, read: id -> tensor, kept alive so ids are not reused
    chain, read, seen_inputs, input_calls = {}, {}, {}, {}
    follow = {
        "output": (),
        "norm": NORM_TYPES + PASS_THROUGH_TYPES,
        "activation": NORM_TYPES + ACTIVATION_TYPES + PASS_THROUGH_TYPES,
    }[observe]

    def out_hook(name):
        def hook(module, args, output):
            order.append(name)
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor):
                view = view_of(output, module)
                shapes[name] = (view.shape[1], view.shape[2])
                chain[id(output)] = output

        return hook

    def follow_hook(module, args, output):
        if (
            args
            and isinstance(output, torch.Tensor)
            and chain.get(id(args[0])) is args[0]
            and output.shape == args[0].shape
        ):
            chain[id(output)] = output

    def in_hook(name):
        def hook(module, args):
            if args and isinstance(args[0], torch.Tensor):
                x = args[0]
                inputs[name] = x.shape[-1] if isinstance(module, nn.Linear) else x[0].numel()
                widths[name] = x.shape[-1] if isinstance(module, nn.Linear) else x.shape[1]
                if name in family_layers:
                    return  # its input channels are units of a family or the embedding dimension: not observed
                if chain.get(id(x)) is not x and x is not example_inputs and x.is_floating_point() and x.dim() >= 2:
                    if read.get(id(x)) is x:
                        return  # a consumer before read this very tensor: observed once
                    read[id(x)] = x
                    input_calls[name] = input_calls.get(name, 0) + 1
                    view = view_of(x, module)
                    seen_inputs[name] = (view.shape[1], view.shape[2])

        return hook

    def head_hook(name, units):
        expose = getattr(units, "expose", None)

        def hook(module, args, kwargs):
            order.append(name)
            calls[name] = calls.get(name, 0) + 1
            tensor = expose(args, kwargs)[0] if expose is not None else (args[0] if args else None)
            if isinstance(tensor, torch.Tensor):
                view = view_of(tensor, units)
                shapes[name] = (view.shape[1], view.shape[2])

        return hook

    handles = [m.register_forward_hook(out_hook(n)) for n, m in modules.items()]
    handles += [
        units.output.register_forward_pre_hook(head_hook(n, units), with_kwargs=True) for n, units in heads.items()
    ]
    handles += [m.register_forward_hook(follow_hook) for m in model.modules() if isinstance(m, follow)]
    handles += [m.register_forward_pre_hook(in_hook(n)) for n, m in consumers.items()]
    with preserved_modes(model), collecting(model):
        try:
            model.eval()
            with torch.no_grad():
                output = select_logits(call_model(model, example_inputs), logits, tokens=tokens is not None)
        finally:
            for h in handles:
                h.remove()
    model_classes = int(num_classes if num_classes is not None else output.shape[-1])
    classes = model_classes if max_classes is None else min(model_classes, int(max_classes))
    num_projections = projections_for(num_projections, classes)
    executed = list(dict.fromkeys(order))
    output_layer = [name for name in executed if name in modules][-1:]
    layers = {
        name: (shapes[name][0], unit_bytes(classes, samples_per_class, shapes[name][1], num_projections))
        for name in executed
        if name not in output_layer and calls[name] == 1 and name in shapes
    }
    extra = screening_bytes(model_classes, [c for c, _ in layers.values()], list(widths.values())) if screening else 0
    layers.update(
        {
            input_key(name): (c, unit_bytes(classes, samples_per_class, m, num_projections))
            for name, (c, m) in seen_inputs.items()
            if input_calls[name] == 1
        }
    )
    return MemoryEstimate(
        classes, samples_per_class, num_projections, layers, 8 * sum(inputs.values()), extra, model_classes
    )
