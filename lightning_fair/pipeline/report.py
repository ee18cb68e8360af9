"""What pruning did: channels per layer, MACs and parameters before and after."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from ..scoring.compute import criterion_for

__all__ = ["describe_pipeline", "LayerRow", "PruneReport", "si_count"]


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
    removed inputs to their number, ``refitted`` each layer refitted by least squares to the inputs
    it kept, ``recalibrated`` lists the norm layers re-estimated. ``macs_per`` says what the MACs
    count (``"sample"``, or ``"sequence of T tokens"`` for token inputs: the example's length);
    ``embedding_params_before`` / ``_after`` are the parameters of the embedding layers, included in
    ``params_*`` (a language model's budget cannot remove them unless ``prune_embedding``).
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
    refitted: Dict[str, int] = field(default_factory=dict)
    recalibrated: List[str] = field(default_factory=list)
    macs_per: str = "sample"
    embedding_params_before: int = 0
    embedding_params_after: int = 0

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
            f"{1 / max(self.macs_ratio, 1e-12):.2f}x fewer; per {self.macs_per})"
        )
        lines.append(
            f"params {si_count(self.params_before):>9} -> {si_count(self.params_after):>9}  "
            f"(kept {self.params_ratio:.1%})"
        )
        if self.embedding_params_before:
            rest_before = self.params_before - self.embedding_params_before
            rest_after = self.params_after - self.embedding_params_after
            lines.append(
                f"  of which embeddings {si_count(self.embedding_params_before)} -> "
                f"{si_count(self.embedding_params_after)}; the rest {si_count(rest_before)} -> {si_count(rest_after)} "
                f"(kept {rest_after / max(rest_before, 1):.1%})"
            )
        if self.tolerance is not None:
            lines.append(f"tolerance of difference: {self.tolerance:.4g}")
        for key, value in self.target.items():
            lines.append(f"target {key}: {value:.3g} kept")
        if self.options:
            lines.append(describe_pipeline(self.options))
        if self.compensated:
            lines.append(
                f"mean replacement: the means of {sum(self.compensated.values())} removed inputs folded into "
                f"{len(self.compensated)} layer(s)' bias (or their BatchNorm's running mean)"
            )
        if self.refitted:
            lines.append(f"least-squares refit: {len(self.refitted)} layer(s) refitted to the inputs they kept")
        if self.recalibrated:
            lines.append(f"BatchNorm statistics re-estimated: {len(self.recalibrated)} layer(s)")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


_COUNTS = {
    "tod": "per-layer counts by the tolerance of difference (U against R)",
    "global": "one threshold on layer-normalised scores across all layers",
    "standardised": "one threshold on scores standardised within each layer, across all layers",
    "uniform": "the same fraction of every layer",
}


def describe_pipeline(options: dict) -> str:
    """The report's "pipeline" line in words, from :attr:`PruneReport.options` (a resolved config).

    Example:
        >>> line = describe_pipeline({"preset": "paper", "criterion": "fair", "ranking": "utilization",
        ...                           "observe": "output", "allocation": "tod", "group_policy": "min_count",
        ...                           "recalibrate": False, "compensate": False})
        >>> print(line.replace("; ", ";\\n"))
        pipeline (paper preset): units ranked by U (class separation, on the layer's output);
        per-layer counts by the tolerance of difference (U against R);
        coupled layers take their smallest count;
        no repair
    """
    get = options.get
    ranked = criterion_for(get("criterion") or "fair").describe(options)
    if get("ranking") == "l1":
        ranked = "units removed by smallest filter L1 norm"
    elif get("ranking") == "random":
        ranked = "units removed at random"
    elif get("ranking") == "utilization_x_consumers":
        ranked = ranked[:-1] + ", times how strongly the next layers read them)" if ranked.endswith(")") else ranked
    elif get("ranking") == "utilization_x_group":
        ranked = (
            ranked[:-1] + ", times how strongly the next layers read them and their layers write them)"
            if ranked.endswith(")")
            else ranked
        )
    elif get("ranking") not in (None, "utilization"):
        ranked = f"units removed by {get('ranking')}"
    allocation = str(get("allocation"))
    parts = [ranked, _COUNTS.get(allocation, f"allocation {allocation}")]
    if get("allocation") == "tod" or get("group_policy") == "joint":
        parts.append(
            "coupled layers take their smallest count"
            if get("group_policy") != "joint"
            else "coupled layers share one count on their combined scores"
        )
    repairs = [
        text
        for key, text in (
            ("refit", "least-squares refit"),
            ("compensate", "mean replacement"),
            ("recalibrate", "BatchNorm re-estimation"),
        )
        if get(key)
    ]
    parts.append(
        "then " + (", ".join(repairs[:-1]) + " and " + repairs[-1] if len(repairs) > 1 else repairs[0])
        if repairs
        else "no repair"
    )
    preset = f" ({get('preset')} preset)" if get("preset") else ""
    return f"pipeline{preset}: " + "; ".join(parts)


def si_count(value: float) -> str:
    """A count with an SI suffix, two decimals: ``si_count(1_234_567) == "1.23M"``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"
