"""What pruning did: channels per layer, MACs and parameters before and after."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from .guards import on_uncompiled, preserved_modes
from .attention import head_count
from .layers import PRUNABLE_TYPES
from .mha import no_fastpath

__all__ = ["describe_pipeline", "LayerRow", "PruneReport", "measure", "si_count", "unit_counts"]


@dataclass
class LayerRow:
    """One layer of the report."""

    name: str
    before: int
    after: int
    observed: str = ""

    @property
    def kept(self) -> float:
        return self.after / self.before if self.before else 1.0


@dataclass
class PruneReport:
    """Per-layer units before/after and model totals. ``print(report)`` shows a table.

    ``macs_ratio`` and ``params_ratio`` are the fractions kept (after / before).
    ``options`` is the resolved pipeline configuration (preset and its options),
    ``compensated`` maps each layer whose bias (or following BatchNorm) took the mean of its
    removed inputs to their number, ``recalibrated`` lists the norm layers re-estimated.
    """

    layers: List[LayerRow]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    tolerance: Optional[float] = None
    target: Dict[str, float] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    options: Dict[str, object] = field(default_factory=dict)
    compensated: Dict[str, int] = field(default_factory=dict)
    recalibrated: List[str] = field(default_factory=list)

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def to_dict(self) -> dict:
        """Plain data (for loggers, JSON, checkpoints)."""
        data = asdict(self)
        data.update(macs_ratio=self.macs_ratio, params_ratio=self.params_ratio)
        return data

    def __str__(self) -> str:
        width = max([len("layer")] + [len(r.name) for r in self.layers])
        lines = [f"{'layer':<{width}}  {'before':>7}  {'after':>7}  {'kept':>6}  observed"]
        lines.append("-" * len(lines[0]))
        for row in self.layers:
            lines.append(f"{row.name:<{width}}  {row.before:>7}  {row.after:>7}  {row.kept:>6.1%}  {row.observed}")
        lines.append("-" * len(lines[0]))
        lines.append(
            f"MACs   {si_count(self.macs_before):>9} -> {si_count(self.macs_after):>9}  (kept {self.macs_ratio:.1%}, "
            f"{1 / max(self.macs_ratio, 1e-12):.2f}x fewer)"
        )
        lines.append(
            f"params {si_count(self.params_before):>9} -> {si_count(self.params_after):>9}  "
            f"(kept {self.params_ratio:.1%})"
        )
        if self.tolerance is not None:
            lines.append(f"tolerance of difference: {self.tolerance:.4g}")
        for key, value in self.target.items():
            lines.append(f"target {key}: {value:.3g} kept")
        if self.options:
            lines.append(describe_pipeline(self.options))
        if self.compensated:
            lines.append(f"mean replacement: the means of {sum(self.compensated.values())} removed inputs folded into "
                         f"{len(self.compensated)} layer(s)' bias (or their BatchNorm's running mean)")
        if self.recalibrated:
            lines.append(f"BatchNorm statistics re-estimated: {len(self.recalibrated)} layer(s)")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


_OBSERVED = {"output": "on the layer's output", "norm": "after the following norm layer",
             "activation": "after the following activation"}
_COUNTS = {"tod": "per-layer counts by the tolerance of difference (U against R)",
           "global": "one threshold on layer-normalised scores across all layers",
           "uniform": "the same fraction of every layer"}


def describe_pipeline(options: dict) -> str:
    """The report's "pipeline" line in words, from :attr:`PruneReport.options` (a resolved config).

    Example:
        >>> print(describe_pipeline({"preset": "paper", "criterion": "fair", "ranking": "utilization",
        ...                          "observe": "output", "allocation": "tod", "group_policy": "min_count",
        ...                          "recalibrate": False, "compensate": False}))
        pipeline (paper preset): units ranked by U (class separation, on the layer's output); per-layer counts by the tolerance of difference (U against R); coupled layers take their smallest count; no repair
    """
    get = options.get
    if get("criterion") == "screening":
        ranked = f"units ranked by the screening score (F-statistic weight {get('screening_weight', 0.5):g}, filter norm)"
    else:
        ranked = f"units ranked by U (class separation, {_OBSERVED.get(get('observe'), get('observe'))})"
    if get("ranking") == "l1":
        ranked = "units removed by smallest filter L1 norm"
    elif get("ranking") == "random":
        ranked = "units removed at random"
    elif get("ranking") == "utilization_x_consumers":
        ranked = ranked[:-1] + ", times how strongly the next layers read them)" if ranked.endswith(")") else ranked
    elif get("ranking") not in (None, "utilization"):
        ranked = f"units removed by {get('ranking')}"
    parts = [ranked, _COUNTS.get(get("allocation"), f"allocation {get('allocation')}")]
    if get("allocation") == "tod" or get("group_policy") == "joint":
        parts.append("coupled layers take their smallest count" if get("group_policy") != "joint"
                     else "coupled layers share one count on their combined scores")
    repairs = [text for key, text in (("compensate", "mean replacement"), ("recalibrate", "BatchNorm re-estimation"))
               if get(key)]
    parts.append("then " + " and ".join(repairs) if repairs else "no repair")
    preset = f" ({get('preset')} preset)" if get("preset") else ""
    return f"pipeline{preset}: " + "; ".join(parts)


def si_count(value: float) -> str:
    """A count with an SI suffix, two decimals: ``si_count(1_234_567) == "1.23M"``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


@on_uncompiled
def measure(model: nn.Module, example_inputs) -> tuple:
    """``(MACs, params)``: multiply-accumulates of every Conv and Linear layer in one forward of
    ``example_inputs``, per sample, and the number of parameters.

    Counted with forward hooks on the model itself (no copy, so a LightningModule attached to
    a Trainer is fine); train/eval flags are restored. An ``nn.MultiheadAttention`` counts its
    in-projection and ``out_proj`` (its attention products, like every matmul, are not counted);
    PyTorch's fused transformer fast path is off while counting, so its Linear layers run as modules.
    """
    macs = [0]
    attention_outputs = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}

    def attention_hook(module, args, kwargs, output):
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs.get("key", query)
        per_sample = 1 if query.dim() == 2 else query.shape[0 if module.batch_first else 1]
        queries, keys = query.numel() // query.shape[-1] // per_sample, key.numel() // key.shape[-1] // per_sample
        inner = module.in_proj_weight.shape[0] // 3
        macs[0] += (queries + 2 * keys) * inner * module.embed_dim + queries * inner * module.out_proj.out_features

    def hook(module, args, output):
        if id(module) in attention_outputs:
            return  # counted with its attention module
        batch = output.shape[0] if output.dim() > 1 else 1
        if isinstance(module, nn.Linear):
            macs[0] += output.numel() // batch * module.in_features
        elif isinstance(module, nn.modules.conv._ConvTransposeNd):
            macs[0] += args[0].numel() // batch * (module.out_channels // module.groups) * _prod(module.kernel_size)
        else:
            macs[0] += output.numel() // batch * (module.in_channels // module.groups) * _prod(module.kernel_size)

    with preserved_modes(model):
        handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
        handles += [m.register_forward_hook(attention_hook, with_kwargs=True) for m in model.modules()
                    if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None]
        try:
            model.eval()
            with torch.no_grad(), no_fastpath():
                model(example_inputs)
        finally:
            for handle in handles:
                handle.remove()
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return int(macs[0]), int(params)


def _prod(values) -> int:
    result = 1
    for v in values:
        result *= int(v)
    return result


def unit_counts(model: nn.Module, names) -> Dict[str, int]:
    """Current number of units (output channels / features) of the named layers."""
    modules = dict(model.named_modules())
    counts = {}
    for name in names:
        module = modules[name]
        if isinstance(module, nn.Linear):
            counts[name] = module.out_features
        elif isinstance(module, PRUNABLE_TYPES):
            counts[name] = module.out_channels
        elif head_count(module) is not None:  # an attention module: its heads
            counts[name] = head_count(module)
    return counts
