"""The screening criterion (method.md §2; arXiv 2502.07189, our reconstruction of it).

A unit's *screening score* combines how well its output separates the classes, a one-way
ANOVA F-statistic, with the magnitude of its filter:

    score_j = w * F_j / mean(F of the layer) + (1 - w) * m_j / mean(m of the layer)

``F_j`` is computed on the unit's spatially averaged observed tensor (one number per image;
the tensor the utilization score observes, see ``observe``) exactly as
``sklearn.feature_selection.f_classif`` does, from per-class counts, sums and sums of squares
streamed in the statistics pass; ``m_j`` is the L2 norm of the unit's filter; ``w`` is
``screening_weight`` (default 0.5). Both terms have mean 1 within a layer, so the scores of
different layers are on one scale.

For unstructured pruning every connection ``(i -> o)`` of a Conv/Linear gets
``w * F_i / mean(F of the layer's inputs) + (1 - w) * |W_oi| / mean(|W| of the layer)``, where
``F_i`` is the F-statistic of input feature ``i`` as the layer receives it (the input pixels
for the first layer); ``F`` is invariant to scaling, so ``|W_oi|`` is what makes the score
specific to a connection.

:class:`ScreeningCriterion` is the criterion (what the pass collects, its scores, its ranking);
:class:`ScreeningScores` are FAIR's scores of the same pass plus the F-statistics and filter norms.
The rest are pure functions over statistics, score vectors and weights; no data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Dict, Iterable, Optional

import torch
from torch import nn

from ..collect.collector import StatisticsCollector
from ..config import PruneConfig, check_screening_weight
from .criterion import CriterionScores, layer_normalised
from .fair import FairScores, scores_from_statistics

__all__ = [
    "ScreeningScores",
    "ScreeningCriterion",
    "check_screening_weight",
    "f_statistic",
    "filter_norms",
    "screening_scores",
    "screening_ranking",
    "connection_scores",
]


_RELATIVE_ZERO = 1e-12  # sums of squares below this fraction of Σx² are rounding noise


def f_statistic(counts: torch.Tensor, sums: torch.Tensor, sumsq: torch.Tensor) -> torch.Tensor:
    """One-way ANOVA F per feature from per-class ``counts [K]``, ``sums [K, C]``, ``sumsq [K, C]``.

    As ``sklearn.feature_selection.f_classif``: between-class mean square over within-class mean
    square, with ``K' - 1`` and ``N - K'`` degrees of freedom, ``K'`` the classes that have samples
    (classes without samples are left out). Not-a-number cases are defined: a constant feature (no
    variance at all), fewer than two classes, or no within-class degree of freedom (``N <= K'``)
    give ``F = 0``; a feature with no within-class but some between-class variance (``F = inf``)
    gets the largest finite F of the others (1 if there is none). Float64.

    Example:
        >>> counts = torch.tensor([2., 2.])
        >>> x = torch.tensor([[1., 5.], [2., 5.], [3., 5.], [5., 5.]])   # 2 features; class 0 = rows 0-1
        >>> sums = torch.stack([x[:2].sum(0), x[2:].sum(0)])
        >>> sumsq = torch.stack([(x[:2]**2).sum(0), (x[2:]**2).sum(0)])
        >>> f_statistic(counts, sums, sumsq).tolist()   # sklearn's f_classif: [5.0, nan]; constant -> 0
        [5.0, 0.0]
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    sums, sumsq = sums.to(torch.float64), sumsq.to(torch.float64)
    present = counts > 0
    num_classes, total = int(present.sum()), float(counts.sum())
    if num_classes < 2 or total <= num_classes:
        return torch.zeros(sums.shape[1:], dtype=torch.float64, device=sums.device)
    counts, sums, sumsq = counts[present], sums[present], sumsq[present]
    all_sumsq = sumsq.sum(0)
    square_of_sums = sums.sum(0).square()
    ss_total = all_sumsq - square_of_sums / total
    ss_between = (sums.square() / counts.unsqueeze(1)).sum(0) - square_of_sums / total
    ss_within = ss_total - ss_between
    noise = _RELATIVE_ZERO * all_sumsq
    ss_between = torch.where(ss_between > noise, ss_between, torch.zeros_like(ss_between))
    ss_within = torch.where(ss_within > noise, ss_within, torch.zeros_like(ss_within))
    ms_between = ss_between / (num_classes - 1)
    ms_within = ss_within / (total - num_classes)
    f = torch.where(ms_within > 0, ms_between / ms_within.clamp_min(1e-300), torch.zeros_like(ms_within))
    perfect = (ms_within == 0) & (ms_between > 0)
    finite = f[~perfect & torch.isfinite(f)]
    f = torch.where(perfect, finite.max() if finite.numel() and finite.max() > 0 else torch.ones_like(f), f)
    return torch.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)


def _unit_rows(module: nn.Module) -> torch.Tensor:
    """The weight as ``[units, fan_in]``: one row per output channel / feature."""
    weight = module.weight.detach()
    if isinstance(module, nn.modules.conv._ConvTransposeNd):  # [in, out / groups, *kernel]
        g = module.groups
        rows = weight.reshape(g, weight.shape[0] // g, weight.shape[1], -1).permute(0, 2, 1, 3)
        return rows.reshape(g * weight.shape[1], -1)
    return weight.reshape(weight.shape[0], -1)


def filter_norms(module: nn.Module) -> torch.Tensor:
    """L2 norm of each unit's filter (its incoming weights, bias excluded), float64 ``[units]``.

    Example:
        >>> layer = nn.Linear(2, 2); _ = layer.weight.data.copy_(torch.tensor([[3., 4.], [0., 1.]]))
        >>> filter_norms(layer).tolist()
        [5.0, 1.0]
    """
    return _unit_rows(module).to(torch.float64).norm(dim=1)


def _mean_normalised(values: torch.Tensor) -> torch.Tensor:
    return layer_normalised(values.to(torch.float64))


@dataclass
class ScreeningScores(FairScores):
    """FAIR's scores of a pass that also collected the screening statistics (``criterion="screening"``).

    Attributes (besides :class:`~lightning_fair.FairScores`'):
        f_statistic: ``{layer: F [C]}``, the one-way ANOVA F-statistic across classes of each unit's
            spatially averaged observed tensor.
        filter_norm: ``{layer: [C]}``, the L2 norm of each unit's filter.
        input_f_statistic: ``{Conv/Linear: F [C_in]}``, the F-statistic of each input feature /
            spatially averaged input channel, for unstructured screening
            (:func:`lightning_fair.prune_connections`).
    """

    f_statistic: Dict[str, torch.Tensor] = field(default_factory=dict)
    filter_norm: Dict[str, torch.Tensor] = field(default_factory=dict)
    input_f_statistic: Dict[str, torch.Tensor] = field(default_factory=dict)

    kind: ClassVar[str] = "screening"

    def screening(self, weight: float = 0.5) -> Dict[str, torch.Tensor]:
        """``{layer: screening score [C]}``, ``weight * F / mean F + (1 - weight) * m / mean m`` per
        layer (:func:`screening_scores`)."""
        return screening_scores(self, weight)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["f_statistic"] = [self.f_statistic[n].detach().cpu() for n in self.layers] if self.f_statistic else []
        state["filter_norm"] = [self.filter_norm[n].detach().cpu() for n in self.layers] if self.filter_norm else []
        state["input_f_statistic"] = {name: f.detach().cpu() for name, f in self.input_f_statistic.items()}
        return state

    @classmethod
    def from_state_dict(cls, state: dict) -> "ScreeningScores":
        fair = FairScores.from_state_dict({**state, "kind": "fair"})
        names = fair.layers
        return cls(
            **vars(fair),
            f_statistic=dict(zip(names, state["f_statistic"])) if state.get("f_statistic") else {},
            filter_norm=dict(zip(names, state["filter_norm"])) if state.get("filter_norm") else {},
            input_f_statistic=dict(state.get("input_f_statistic", {})),
        )


class ScreeningCriterion:
    """The screening criterion: the screening score removes (lowest first), R protects (ToD); coupled
    groups are ranked by their members' screening scores. The pass collects, besides FAIR's
    statistics, per class the count, sum and sum of squares of every unit's spatially averaged
    observed tensor and of every Conv/Linear's input (:class:`lightning_fair.collect.moments.ScreeningMoments`)."""

    name = "screening"
    collects_screening = True

    def scores(self, collector: StatisticsCollector, config: PruneConfig) -> ScreeningScores:
        fair = scores_from_statistics(collector, reconstruction=config.reconstruction)
        moments = collector.screening_moments
        layers = moments.layers if moments is not None else {}
        return ScreeningScores(
            **vars(fair),
            f_statistic={n: f_statistic(*layers[n].tensors()).cpu() for n in fair.layers if n in layers},
            filter_norm={n: filter_norms(collector.unit_module(n)).cpu() for n in fair.layers if n in layers},
            input_f_statistic={n: f_statistic(*m.tensors()).cpu() for n, m in collector.input_class_moments().items()},
        )

    def rank(self, scores: FairScores, config: PruneConfig) -> CriterionScores:
        return screening_ranking(scores, config.screening_weight)

    def describe(self, options: dict) -> str:
        weight = options.get("screening_weight", 0.5)
        return f"units ranked by the screening score (F-statistic weight {weight:g}, filter norm)"


def screening_scores(scores, weight: float = 0.5, layers: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
    """``{layer: w * F / mean F + (1 - w) * m / mean m}`` per unit (float64) from
    :class:`ScreeningScores` (``compute_scores(..., criterion="screening")``).

    Example:
        >>> s = ScreeningScores({"a": torch.ones(2)}, {"a": torch.ones(2)},
        ...                     f_statistic={"a": torch.tensor([1., 3.])}, filter_norm={"a": torch.tensor([2., 2.])})
        >>> screening_scores(s, 0.5)["a"].tolist()   # 0.5 * [0.5, 1.5] + 0.5 * [1, 1]
        [0.75, 1.25]
    """
    weight = check_screening_weight(weight)
    names = list(layers) if layers is not None else list(scores.layers)
    f, norm = getattr(scores, "f_statistic", {}), getattr(scores, "filter_norm", {})
    missing = [n for n in names if n not in f or n not in norm]
    if missing:
        raise ValueError(
            f"these scores carry no screening statistics for {missing[:3]}; compute them with "
            "compute_scores(..., criterion='screening') (prune(criterion='screening') does)"
        )
    return {n: weight * _mean_normalised(f[n]) + (1 - weight) * _mean_normalised(norm[n]) for n in names}


def screening_ranking(scores, weight: float = 0.5) -> CriterionScores:
    """The screening criterion's :class:`~lightning_fair.scoring.criterion.CriterionScores` of ``scores`` (computed
    with ``criterion="screening"``): the screening score removes (lowest first), R protects (ToD).

    Allocation (global threshold, uniform ratio, ToD) and removal run unchanged on it. No
    consumers' scores: coupled groups are ranked by their members' screening scores.
    """
    return CriterionScores(
        removal=screening_scores(scores, weight),
        protection=dict(scores.reconstruction),
        taylor_sum=dict(scores.taylor_sum),
        criterion="screening",
    )


def _input_index(module: nn.Module) -> Optional[torch.Tensor]:
    """For a grouped conv: ``[out, in / groups]`` index of the input channel each weight row reads."""
    if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
        out, per_group = module.weight.shape[0], module.weight.shape[1]
        group = torch.arange(out) // (out // module.groups)
        return group.unsqueeze(1) * per_group + torch.arange(per_group).unsqueeze(0)
    return None


def connection_scores(module: nn.Module, input_f: torch.Tensor, weight: float = 0.5) -> torch.Tensor:
    """Per-connection screening score, shaped like ``module.weight`` (float64).

    ``w * F_in / mean(F_in) + (1 - w) * |W| / mean(|W|)``, with ``F_in`` the F-statistic of the
    input feature (Linear) or input channel (Conv, spatially averaged) each weight reads.

    Example:
        >>> layer = nn.Linear(2, 1); _ = layer.weight.data.copy_(torch.tensor([[1., 3.]]))
        >>> connection_scores(layer, torch.tensor([3., 1.]), 0.5).tolist()   # 0.5*[1.5, 0.5] + 0.5*[0.5, 1.5]
        [[1.0, 1.0]]
    """
    weight = check_screening_weight(weight)
    w = module.weight.detach().to(torch.float64)
    f = _mean_normalised(input_f.to(w.device))
    if isinstance(module, nn.Linear):
        if f.numel() != w.shape[1]:
            raise ValueError(f"{f.numel()} input F values for a Linear with {w.shape[1]} inputs")
        per_connection = f.unsqueeze(0).expand_as(w)
    elif isinstance(module, nn.modules.conv._ConvTransposeNd):  # weight [in, out / groups, *kernel]
        per_connection = f.reshape(-1, *([1] * (w.dim() - 1))).expand_as(w)
    else:  # weight [out, in / groups, *kernel]
        index = _input_index(module).to(w.device)
        per_connection = f[index].reshape(*index.shape, *([1] * (w.dim() - 2))).expand_as(w)
    return weight * per_connection + (1 - weight) * _mean_normalised(w.abs())
