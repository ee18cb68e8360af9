"""Named pipeline configurations: the paper as written, and our default.

``prune(..., preset="paper")`` reproduces the method exactly as the paper and the authors'
package define it; ``preset="default"`` is the configuration the benchmark suite found best
for one-shot accuracy (docs/benchmarks.md, "Variant study"). Any option passed explicitly
overrides the preset.
"""

from __future__ import annotations

from typing import Dict

__all__ = ["PRESETS", "resolve_preset"]

PRESETS: Dict[str, Dict[str, object]] = {
    # arXiv 2508.02291 / network-pruner 2.x: U observes the Conv/Linear output itself,
    # R = |Σ dL/dz·z|, per-layer ToD counts, coupled groups prune the smallest member count,
    # no BatchNorm re-estimation, no compensation.
    "paper": dict(observe="output", reconstruction="abs_of_sum", group_policy="min_count", allocation="tod",
                  recalibrate=False, compensate=False, ranking="utilization"),
    # chosen by evidence (docs/benchmarks.md, "Variant study"): U after the nonlinearity, a
    # global U threshold when a MACs/params budget is given (ToD counts for a tolerance),
    # BatchNorm re-estimation and mean-replacement compensation.
    # units ranked by U times how strongly the next layers read them (docs/method.md: one-shot better
    # in 17 of 24 standard-model cells over three training seeds, neutral after fine-tuning)
    "default": dict(observe="activation", reconstruction="abs_of_sum", group_policy="min_count", allocation="auto",
                    recalibrate=True, compensate=True, ranking="utilization_x_consumers"),
}


def resolve_preset(preset: str, **options) -> Dict[str, object]:
    """The preset's options with every non-None entry of ``options`` taking precedence.

    Example:
        >>> resolve_preset("paper", observe="activation")["observe"]
        'activation'
        >>> resolve_preset("paper")["recalibrate"]
        False
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
    resolved = dict(PRESETS[preset])
    unknown = set(options) - set(resolved)
    if unknown:
        raise TypeError(f"unknown preset option(s): {sorted(unknown)}")
    resolved.update({key: value for key, value in options.items() if value is not None})
    return resolved
