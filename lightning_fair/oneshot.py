"""One-shot FAIR pruning of any ``nn.Module``: scores -> counts -> removal -> report."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

import torch
from torch import nn

from .checkpoint import record_pruning
from .allocation import RANKINGS, _check_tolerance, layer_curves, count_from_curve
from .layers import OBSERVATION_POINTS, resolve_ignored
from .removal import GROUP_POLICIES, DependencyPlanner, ModelSnapshot
from .report import LayerRow, PruneReport, measure, unit_counts
from .scores import FairScores, compute_scores
from .statistics import default_unpack

__all__ = ["PruneResult", "prune"]


@dataclass
class PruneResult:
    """What :func:`prune` returns.

    Attributes:
        model: the pruned model (the same object as the input unless ``inplace=False``).
        scores: the FAIR scores used (reuse them for another tolerance without a data pass).
        report: :class:`PruneReport`, ``print(result.report)`` for the table.
        counts: per-layer ToD counts (units each layer's own scores allow removing).
        removed: root-channel indices removed per coupled group.
        history: torch-pruning's pruning history (plain data, replayable).
        kept: original indices each changed module kept, ``{name: {"out": idxs, "in": idxs}}``.
        tolerance: the tolerance of difference used (found by search for a target).
    """

    model: nn.Module
    scores: FairScores
    report: PruneReport
    counts: Dict[str, int]
    removed: Dict[str, List[int]]
    history: list
    tolerance: float
    kept: Dict[str, Dict[str, torch.Tensor]]


def prune(
    model: nn.Module,
    dataloader: Optional[Iterable] = None,
    *,
    tolerance: float = 0.05,
    target_macs: Optional[float] = None,
    target_params: Optional[float] = None,
    scores: Optional[FairScores] = None,
    ranking: str = "utilization",
    group_policy: str = "min_count",
    example_inputs=None,
    ignored_layers=None,
    samples_per_class: int = 32,
    num_projections: int = 128,
    observe: str = "activation",
    seed: int = 0,
    loss_fn: Optional[Callable] = None,
    unpack: Callable = default_unpack,
    max_batches: Optional[int] = None,
    inplace: bool = True,
) -> PruneResult:
    """Prune ``model`` with FAIR-Pruner in one shot, no fine-tuning.

    Args:
        model: any ``nn.Module`` mapping inputs to class logits (a LightningModule too).
        dataloader: labelled calibration batches; not needed if ``scores`` and
            ``example_inputs`` are given.
        tolerance: the tolerance of difference in [0, 1]; larger removes more.
        target_macs: instead of ``tolerance``, the fraction of MACs to keep (e.g. 0.5);
            the tolerance is searched to reach it and the achieved value is reported.
        target_params: the same for the parameter count.
        scores: precomputed :func:`compute_scores` output (skips the data pass).
        ranking: which units a layer's ToD count removes: ``"utilization"`` (FAIR),
            ``"l1"`` (smallest weights) or ``"random"`` (the paper's ablations).
        group_policy: ``"min_count"`` or ``"joint"``, see :mod:`lightning_fair.removal`.
        example_inputs: inputs for tracing and counting MACs; default: the first
            calibration batch.
        ignored_layers: module names or modules never pruned (the output layer never is).
        samples_per_class, num_projections, observe, seed, loss_fn, unpack, max_batches:
            passed to :func:`compute_scores`.
        inplace: prune ``model`` itself (default, like torch-pruning) or a deep copy.

    Returns:
        :class:`PruneResult`. If anything fails, the model is left exactly as it was.

    Raises:
        ValueError: a bad argument (before anything is computed or changed), or a
            target the scores cannot reach (the message says what is reachable).

    Example:
        >>> import torch
        >>> from lightning_fair import prune, zoo
        >>> data = [(torch.randn(40, 1, 8, 8), torch.arange(40) % 10)]
        >>> result = prune(zoo.small_cnn(), data, tolerance=0.3, samples_per_class=4, num_projections=8)
        >>> result.model(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
        >>> result.report.macs_ratio <= 1.0
        True
    """
    target = check_options(tolerance, target_macs, target_params, ranking, group_policy, observe,
                           samples_per_class, num_projections)
    if dataloader is None and (scores is None or example_inputs is None):
        raise ValueError("pass a calibration dataloader, or both scores=... and example_inputs=...")
    ignored = resolve_ignored(model, ignored_layers)
    if example_inputs is None:
        example_inputs = _first_inputs(dataloader, unpack)
    if isinstance(example_inputs, torch.Tensor):  # trace and count on the model's device
        example_inputs = example_inputs.to(next((p.device for p in model.parameters()), example_inputs.device))
    if scores is None:
        scores = compute_scores(
            model, dataloader, samples_per_class=samples_per_class, num_projections=num_projections,
            observe=observe, seed=seed, loss_fn=loss_fn, unpack=unpack, ignored_layers=ignored, max_batches=max_batches,
        )
    # names, not module objects: ``ignored`` holds modules of the input model, not of a copy
    protected = {name for name, module in model.named_modules() if module in ignored} | {scores.output_layer}
    if not inplace:
        model = copy.deepcopy(model)
    names = dict(model.named_modules())
    missing = [n for n in scores.layers if n not in names]
    if missing:
        raise ValueError(f"scores name layers the model does not have ({missing[:3]}); compute them on this model")
    scored = [n for n in scores.layers if n not in protected]

    snapshot = ModelSnapshot(model)
    try:
        planner = DependencyPlanner(model, example_inputs, scored, protected)
        snapshot.include(planner.graph.module2node)  # concat/split ops keep channel sizes too
        macs_before, params_before = measure(model, example_inputs)
        before = unit_counts(model, scores.layers)
        curves = layer_curves(scores)

        def plan_for(tol: float):
            counts = {n: count_from_curve(curves[n], tol) for n in scored}
            return counts, planner.plan(scores, counts, ranking=ranking, policy=group_policy, tolerance=tol, seed=seed)

        if target:
            tolerance = _search_tolerance(planner, snapshot, plan_for, curves, target, example_inputs,
                                          macs_before, params_before)
        counts, plan = plan_for(tolerance)
        kept = planner.apply(plan)
        snapshot.restore_flags(model)
        macs_after, params_after = measure(model, example_inputs)
        if isinstance(example_inputs, torch.Tensor):
            record_pruning(model, planner.history(), example_inputs)
    except BaseException:
        snapshot.restore()
        snapshot.restore_flags(model)
        raise
    after = unit_counts(model, scores.layers)
    notes = [f"{g.root}: {g.blocked}" for g in planner.groups if g.blocked]
    report = PruneReport(
        layers=[LayerRow(n, before[n], after[n], scores.observed.get(n, "")) for n in scores.layers if n in before],
        macs_before=macs_before, macs_after=macs_after, params_before=params_before, params_after=params_after,
        tolerance=float(tolerance), target=target, notes=notes,
    )
    return PruneResult(
        model=model, scores=scores, report=report, counts=counts,
        removed={root: idxs.tolist() for root, idxs in plan.items()}, history=planner.history(), tolerance=float(tolerance),
        kept=kept,
    )


def check_options(tolerance=0.05, target_macs=None, target_params=None, ranking="utilization",
                  group_policy="min_count", observe="activation", samples_per_class=32, num_projections=128) -> dict:
    """Validate pruning options (before anything is computed); return ``{"macs"|"params": fraction}``."""
    _check_tolerance(tolerance)
    if target_macs is not None and target_params is not None:
        raise ValueError("give target_macs or target_params, not both")
    target = {}
    for key, value in (("macs", target_macs), ("params", target_params)):
        if value is not None:
            if not 0.0 < float(value) <= 1.0:
                raise ValueError(f"target_{key} is the fraction to keep, in (0, 1], got {value}")
            target[key] = float(value)
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    if group_policy not in GROUP_POLICIES:
        raise ValueError(f"group_policy must be one of {GROUP_POLICIES}, got {group_policy!r}")
    if observe not in OBSERVATION_POINTS:
        raise ValueError(f"observe must be one of {OBSERVATION_POINTS}, got {observe!r}")
    for key, value in (("samples_per_class", samples_per_class), ("num_projections", num_projections)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return target


def _first_inputs(dataloader, unpack):
    with torch.inference_mode(False):  # under trainer.validate: a normal tensor, usable for tracing
        for batch in dataloader:
            inputs, _ = unpack(batch)
            if isinstance(inputs, torch.Tensor):
                inputs = inputs[:1].clone()
            return inputs
    raise ValueError("the calibration dataloader yielded no batches; pass a non-empty dataloader")


def _search_tolerance(planner, snapshot, plan_for, curves, target, example_inputs, macs_before, params_before):
    """Smallest tolerance whose pruned model keeps at most the target fraction (binary search)."""
    key, goal = next(iter(target.items()))
    candidates = torch.unique(torch.cat([c for c in curves.values()] + [torch.tensor([0.0, 1.0], dtype=torch.float64)]))
    candidates = candidates[(candidates >= 0) & (candidates <= 1)].tolist()

    def kept(tol: float) -> float:
        _, plan = plan_for(tol)
        try:
            planner.apply(plan, record_history=False)
            macs, params = measure(planner.model, example_inputs)
        finally:
            snapshot.restore()
        return macs / macs_before if key == "macs" else params / params_before

    best = kept(candidates[-1])
    if best > goal + 1e-9:
        raise ValueError(
            f"target_{key}={goal} cannot be reached in one shot: at most {1 - best:.1%} of the {key} can be "
            f"removed (kept {best:.3f} at tolerance 1, where ToD removes up to 99% of each free layer); "
            f"ask for target_{key}>={best:.3f}, or unfreeze layers listed in ignored_layers"
        )
    lo, hi = 0, len(candidates) - 1  # kept(candidates[hi]) <= goal
    while lo < hi:
        mid = (lo + hi) // 2
        if kept(candidates[mid]) <= goal + 1e-9:
            hi = mid
        else:
            lo = mid + 1
    return candidates[hi]
