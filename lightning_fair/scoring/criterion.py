"""What a criterion is, and what it hands on: per-layer removal and protection scores, separate
from how the scores were measured.

A :class:`Criterion` says what the statistics pass must collect (``collects_screening``), turns a
pass's statistics into its scores (``scores``), ranks them (``rank``, a :class:`CriterionScores`)
and names its ranking in a report (``describe``). The criteria by name are
:data:`lightning_fair.scoring.compute.CRITERIA`: FAIR (:class:`lightning_fair.scoring.fair.FairCriterion`)
and screening (:class:`lightning_fair.scoring.screening.ScreeningCriterion`). (The ``ranking``
option, which units of a layer go first once its count is known, is :mod:`lightning_fair.allocation.order`.)

A :class:`CriterionScores` holds, per scored layer, a **removal score** (lowest goes first) and a
**protection score** (ToD protects the highest), plus the removal score of what each consumer
of a residual stream receives (coupled groups) and the signed Taylor sums (the ``"joint"`` group
policy). Allocation (:mod:`lightning_fair.allocation.budgets`) and removal
(:mod:`lightning_fair.removal.planner`) read only a CriterionScores:

- FAIR (:meth:`CriterionScores.of`): removal = the utilization score U, protection = the reconstruction
  score R, consumers = the consumers' input U;
- screening (:func:`lightning_fair.scoring.screening.screening_ranking`): removal = the screening score,
  protection = R, no consumers (coupled groups are ranked by their members' screening scores).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Protocol

import torch

__all__ = ["Criterion", "CriterionScores", "as_criterion_scores", "layer_normalised", "layer_standardised"]


class Criterion(Protocol):
    """A way of scoring units from one statistics pass."""

    #: the ``criterion`` option's value that selects it
    name: str
    #: the pass also collects the per-class moments of :class:`lightning_fair.collect.moments.ScreeningMoments`
    collects_screening: bool

    def scores(self, collector: Any, config: Any) -> Any:
        """The criterion's scores (a :class:`lightning_fair.FairScores` or a subclass) from a finished pass
        (:class:`lightning_fair.collect.collector.StatisticsCollector`) under ``config`` (a PruneConfig)."""
        ...

    def rank(self, scores: Any, config: Any) -> "CriterionScores":
        """What allocation and removal read: removal and protection scores per layer."""
        ...

    def describe(self, options: dict) -> str:
        """How the report names the ranking (``options``: the resolved configuration as a dict)."""
        ...


@dataclass(frozen=True)
class CriterionScores:
    """Per-layer removal and protection scores (keys: qualified layer names, in execution order).

    Attributes:
        removal: ``{layer: [C]}``, lowest removed first.
        protection: ``{layer: [C]}``, the ToD protection (highest protected first).
        consumers: ``{Conv/Linear: [C_in]}``, the removal score of what a layer reading a residual
            stream receives (ranks coupled groups; empty: members' scores are combined instead).
        taylor_sum: ``{layer: [C]}``, signed first-order sums (the ``"joint"`` group policy's R).
        criterion: what the removal score is (``"fair"``: U; ``"screening"``).
        last: ``{layer: bool [C]}``, units that go last in their layer's removal order whatever their
            scores (the units with massive activations, :mod:`lightning_fair.scoring.massive`).
    """

    removal: Dict[str, torch.Tensor]
    protection: Dict[str, torch.Tensor]
    consumers: Dict[str, torch.Tensor] = field(default_factory=dict)
    taylor_sum: Dict[str, torch.Tensor] = field(default_factory=dict)
    criterion: str = "fair"
    last: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def layers(self) -> List[str]:
        return list(self.removal)

    @classmethod
    def of(cls, scores) -> "CriterionScores":
        """FAIR's ranking of :class:`~lightning_fair.FairScores`: U removes, R protects."""
        return cls(
            removal=dict(scores.utilization),
            protection=dict(scores.reconstruction),
            consumers=dict(scores.input_utilization),
            taylor_sum=dict(scores.taylor_sum),
            criterion="fair",
        )


def as_criterion_scores(scores) -> CriterionScores:
    """``scores`` if it is a :class:`CriterionScores`, else FAIR's ranking of a ``FairScores``."""
    return scores if isinstance(scores, CriterionScores) else CriterionScores.of(scores)


def layer_normalised(values: torch.Tensor) -> torch.Tensor:
    """``values / mean(values)`` (the mean floored at 1e-12): one layer's scores on a common scale.

    Example:
        >>> layer_normalised(torch.tensor([1.0, 3.0])).tolist()
        [0.5, 1.5]
    """
    return values / values.mean().clamp_min(1e-12)


def layer_standardised(values: torch.Tensor) -> torch.Tensor:
    """``(values - mean(values)) / std(values)``: one layer's scores as z-scores, FLAP's
    standardisation (An et al. 2024), which compares layers by the shape of their score
    distributions, not by their ratio to the mean. Scores that spread by less than 1e-6 of their
    largest magnitude are ties (rounding, not information): all 0, as is a single score.

    Example:
        >>> layer_standardised(torch.tensor([1.0, 2.0, 3.0])).tolist()
        [-1.0, 0.0, 1.0]
        >>> layer_standardised(torch.tensor([5.0, 5.0])).tolist()
        [0.0, 0.0]
    """
    if values.numel() < 2:
        return torch.zeros_like(values)
    spread = values.std()
    if not spread > 1e-6 * float(values.abs().max()):
        return torch.zeros_like(values)
    return (values - values.mean()) / spread
