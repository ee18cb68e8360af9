"""How much memory the statistics pass needs, and how to keep it under a budget.

The utilization score keeps, per scored layer, ``samples_per_class`` observations of every
class for every unit, each seen through ``num_projections`` directions (conv maps) or as one
scalar (Linear): ``K * n * C * D`` float32 values. That grows with the number of classes and
channels, not with the number of batches. Everything else is small: the reconstruction sums
(``2 * C`` float64 per layer) and the mean input of every Conv/Linear (``C_in * spatial``
float64). Scoring a layer briefly needs a sorted copy of its samples plus a bounded work
buffer (:func:`lightning_fair.distances.max_pairwise_w1`). With ``screening=True`` the
screening criterion adds, per scored layer and per Conv/Linear input, a per-class count, sum
and sum of squares: ``16 * K * C + 8 * K`` bytes (float64).

When the estimate exceeds ``memory_budget``, the units are split into chunks (whole layers
where they fit, channel ranges of a layer that alone does not) and the utilization samples
are collected one chunk per pass over the calibration data: the first pass also collects
everything else (one forward and one backward per batch), later passes are forward only.
A unit's score does not depend on the other units, so the scores are the same as in one pass
(given the same batches in the same order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .attention import find_attention, removable
from .batches import select_logits
from .guards import preserved_modes
from .mha import hookable_attention
from .layers import (ACTIVATION_TYPES, NORM_TYPES, PASS_THROUGH_TYPES, candidate_layers, input_key,
                     resolve_ignored, units_view)

__all__ = ["MemoryEstimate", "estimate_memory", "parse_bytes", "screening_bytes", "DEFAULT_BUDGET"]

#: Default ``memory_budget`` of the statistics pass.
DEFAULT_BUDGET = "4GiB"
#: Bytes of the bounded work buffers of one layer's distance computation (grid + distances).
DISTANCE_WORK_BYTES = 4 * 2**25 * 4  # float32: stacked class grids, the grid, its weighted copy, the distances

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: Union[int, float, str, None]) -> Optional[int]:
    """``4GiB``, ``"512MB"``, ``2e9`` or None (no budget) -> bytes.

    Example:
        >>> parse_bytes("1.5GiB"), parse_bytes(1024), parse_bytes(None)
        (1610612736, 1024, None)
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("memory_budget must be a number of bytes or a string like '4GiB', got a bool")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"memory_budget must be bytes or a size like '4GiB' or '512MB', got {value!r}")
        number, unit = float(match.group(1)), match.group(2).lower()
    result = int(number * _UNITS[unit])
    if result <= 0:
        raise ValueError(f"memory_budget must be positive, got {value!r}")
    return result


def unit_bytes(num_classes: int, samples_per_class: int, map_size: int, num_projections: int) -> int:
    """Bytes of one unit's utilization samples (float32)."""
    return 4 * num_classes * samples_per_class * (1 if map_size == 1 else num_projections)


def screening_bytes(num_classes: int, units: List[int], input_widths: List[int]) -> int:
    """Bytes of the screening statistics: per-class count, sum and sum of squares (float64) of every
    scored layer's units and every Conv/Linear's input channels / features."""
    return sum(16 * num_classes * c + 8 * num_classes for c in list(units) + list(input_widths))


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

    @property
    def samples_bytes(self) -> int:
        return sum(c * b for c, b in self.layers.values())

    @property
    def reconstruction_bytes(self) -> int:
        return sum(16 * c for c, _ in self.layers.values())

    def peak_bytes(self, chunk_bytes: Optional[int] = None) -> int:
        """Peak of one pass holding ``chunk_bytes`` of samples (default: everything at once)."""
        held = self.samples_bytes if chunk_bytes is None else chunk_bytes
        largest = max((c * b for c, b in self.layers.values()), default=0)
        copy = min(held, largest)  # the sorted copy of the layer being scored
        return held + copy + DISTANCE_WORK_BYTES + self.reconstruction_bytes + self.input_bytes + self.screening_bytes

    @property
    def total_bytes(self) -> int:
        """Peak of a single pass."""
        return self.peak_bytes()

    def chunks(self, budget: Optional[int]) -> List[Dict[str, Tuple[int, int]]]:
        """Channel ranges per pass ``[{layer: (start, stop)}]`` so each pass fits ``budget``."""
        everything = {name: (0, c) for name, (c, _) in self.layers.items()}
        if budget is None or self.peak_bytes() <= budget:
            return [everything]
        fixed = DISTANCE_WORK_BYTES + self.reconstruction_bytes + self.input_bytes + self.screening_bytes
        capacity = (budget - fixed) // 2  # samples held + the sorted copy of one layer
        smallest = min((b for _, b in self.layers.values()), default=1)
        if capacity < smallest:
            raise ValueError(
                f"memory_budget={budget / 2**20:.0f} MiB is below the {(fixed + 2 * smallest) / 2**20:.0f} MiB one unit "
                "needs; raise memory_budget, or lower samples_per_class / num_projections"
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

    def describe(self, budget: Optional[int] = None) -> str:
        passes = len(self.chunks(budget))
        text = (f"lightning_fair: statistics need about {self.total_bytes / 2**20:,.0f} MiB in one pass "
                f"({len(self.layers)} layers, {self.num_classes} classes x {self.samples_per_class} samples, "
                f"{self.num_projections} projections)")
        if passes > 1:
            worst = max(self.peak_bytes(sum((b - a) * self.layers[n][1] for n, (a, b) in chunk.items()))
                        for chunk in self.chunks(budget))
            text += (f"; over the budget of {budget / 2**20:,.0f} MiB: {passes} passes over the calibration data "
                     f"(the first with a backward, the others forward only), at most {worst / 2**20:,.0f} MiB each")
        return text

    def __str__(self) -> str:
        return self.describe()


def estimate_memory(model: nn.Module, example_inputs: torch.Tensor, *, num_classes: Optional[int] = None,
                    samples_per_class: int = 32, num_projections: int = 128, ignored_layers=None,
                    screening: bool = False, observe: str = "activation",
                    logits: Optional[Callable] = None, prune_embedding: bool = False) -> MemoryEstimate:
    """Estimate the statistics pass's memory from one forward of ``example_inputs`` (one sample is enough).

    ``num_classes`` defaults to the width of the model's output; ``screening=True`` counts the
    screening criterion's statistics too (as ``compute_scores(..., screening=True)``); ``observe``
    as in ``compute_scores`` (it decides which layer inputs are observed apart, see
    :mod:`lightning_fair.statistics`); ``prune_embedding`` as in ``compute_scores`` (transformers).

    Example:
        >>> from lightning_fair import zoo
        >>> est = estimate_memory(zoo.small_cnn(width=8), torch.randn(1, 1, 8, 8))
        >>> list(est.layers), est.num_classes   # scored layers, then inputs observed apart (after pooling)
        (['features.0.0', 'features.1.0', 'features.3.0', 'head.0', 'features.3.0<input>', 'head.0<input>'], 10)
    """
    ignored = resolve_ignored(model, ignored_layers)
    attention = find_attention(model, ignored)  # attention heads are units, their projections are not (statistics)
    projections = {name for units in attention.values() for name in units.projections(prune_embedding)}
    heads = removable(attention)
    modules = {n: m for n, m in candidate_layers(model, ignored).items() if n not in projections}
    consumers = candidate_layers(model, set())
    shapes, order, calls, inputs, widths = {}, [], {}, {}, {}
    # tensors a layer's U observes (its output, then through the norm / activation that follow):
    # a consumer reading one of them adds nothing; any other input is observed apart
    # chain, read: id -> tensor, kept alive so ids are not reused
    chain, read, seen_inputs, input_calls = {}, {}, {}, {}
    follow = {"output": (), "norm": NORM_TYPES + PASS_THROUGH_TYPES,
              "activation": NORM_TYPES + ACTIVATION_TYPES + PASS_THROUGH_TYPES}[observe]

    def out_hook(name):
        def hook(module, args, output):
            order.append(name)
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor):
                view = units_view(output, module)
                shapes[name] = (view.shape[1], view.shape[2])
                chain[id(output)] = output
        return hook

    def follow_hook(module, args, output):
        if args and isinstance(output, torch.Tensor) and chain.get(id(args[0])) is args[0] \
                and output.shape == args[0].shape:
            chain[id(output)] = output

    def in_hook(name):
        def hook(module, args):
            if args and isinstance(args[0], torch.Tensor):
                x = args[0]
                inputs[name] = x.shape[-1] if isinstance(module, nn.Linear) else x[0].numel()
                widths[name] = x.shape[-1] if isinstance(module, nn.Linear) else x.shape[1]
                if chain.get(id(x)) is not x and x is not example_inputs and x.is_floating_point() and x.dim() >= 2:
                    if read.get(id(x)) is x:
                        return  # a consumer before read this very tensor: observed once
                    read[id(x)] = x
                    input_calls[name] = input_calls.get(name, 0) + 1
                    view = units_view(x, module)
                    seen_inputs[name] = (view.shape[1], view.shape[2])
        return hook

    def head_hook(name, units):
        def hook(module, args):
            order.append(name)
            calls[name] = calls.get(name, 0) + 1
            if args and isinstance(args[0], torch.Tensor):
                view = units.units_view(args[0])
                shapes[name] = (view.shape[1], view.shape[2])
        return hook

    handles = [m.register_forward_hook(out_hook(n)) for n, m in modules.items()]
    handles += [units.output.register_forward_pre_hook(head_hook(n, units)) for n, units in heads.items()]
    handles += [m.register_forward_hook(follow_hook) for m in model.modules() if isinstance(m, follow)]
    handles += [m.register_forward_pre_hook(in_hook(n)) for n, m in consumers.items()]
    with preserved_modes(model), hookable_attention(model):
        try:
            model.eval()
            with torch.no_grad():
                output = select_logits(model(example_inputs), logits)
        finally:
            for h in handles:
                h.remove()
    classes = int(num_classes if num_classes is not None else output.shape[-1])
    executed = list(dict.fromkeys(order))
    output_layer = [name for name in executed if name in modules][-1:]
    layers = {name: (shapes[name][0], unit_bytes(classes, samples_per_class, shapes[name][1], num_projections))
              for name in executed if name not in output_layer and calls[name] == 1 and name in shapes}
    extra = screening_bytes(classes, [c for c, _ in layers.values()], list(widths.values())) if screening else 0
    layers.update({input_key(name): (c, unit_bytes(classes, samples_per_class, m, num_projections))
                   for name, (c, m) in seen_inputs.items() if input_calls[name] == 1})
    return MemoryEstimate(classes, samples_per_class, num_projections, layers, 8 * sum(inputs.values()), extra)
