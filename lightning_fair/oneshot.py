"""One-shot structured pruning of any ``nn.Module``: scores -> counts -> removal -> report.

The units are ranked by FAIR's utilization score (``criterion="fair"``) or by the screening
score (``criterion="screening"``, :mod:`lightning_fair.screening`); allocation, removal,
compensation and re-estimation are the same for both.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from .allocation import (ALLOCATIONS, RANKINGS, _check_tolerance, count_from_curve, global_counts, global_thresholds,
                         layer_curves, resolve_allocation, uniform_counts, uniform_ratios)
from .checkpoint import record_pruning
from .compensation import capture_consumers, fold_mean_replacement
from .layers import OBSERVATION_POINTS, resolve_ignored
from .removal import GROUP_POLICIES, DependencyPlanner, ModelSnapshot
from .report import LayerRow, PruneReport, measure, unit_counts
from .memory import DEFAULT_BUDGET, parse_bytes
from .presets import resolve_preset
from .recalibration import recalibrate_bn
from .scores import RECONSTRUCTIONS, FairScores, compute_scores
from .screening import check_criterion, ranked_by_screening
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
        tolerance: the tolerance of difference used (found by search for a target); with
            ``allocation="global"`` the threshold on layer-normalised scores, with
            ``"uniform"`` the per-layer ratio.
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
    preset: str = "default",
    observe: Optional[str] = None,
    reconstruction: Optional[str] = None,
    group_policy: Optional[str] = None,
    allocation: Optional[str] = None,
    recalibrate: Optional[bool] = None,
    compensate: Optional[bool] = None,
    ranking: str = "utilization",
    criterion: str = "fair",
    screening_weight: float = 0.5,
    ratio: Optional[float] = None,
    example_inputs=None,
    ignored_layers=None,
    samples_per_class: int = 32,
    num_projections: int = 128,
    seed: int = 0,
    loss_fn: Optional[Callable] = None,
    unpack: Callable = default_unpack,
    max_batches: Optional[int] = None,
    inplace: bool = True,
    distributed: bool = False,
    memory_budget: Union[int, str, None] = DEFAULT_BUDGET,
    verbose: bool = False,
) -> PruneResult:
    """Prune ``model``'s units (channels, features) in one shot, no fine-tuning: FAIR-Pruner by
    default, or the screening criterion.

    Args:
        model: any ``nn.Module`` mapping inputs to class logits (a LightningModule too).
        dataloader: labelled calibration batches; not needed if ``scores`` and
            ``example_inputs`` are given.
        tolerance: the tolerance of difference in [0, 1]; larger removes more.
        target_macs: instead of ``tolerance``, the fraction of MACs to keep (e.g. 0.5);
            the tolerance is searched to reach it and the achieved value is reported.
        target_params: the same for the parameter count.
        scores: precomputed :func:`compute_scores` output (skips the data pass).
        preset: ``"default"`` (the configuration the benchmarks found best one-shot) or
            ``"paper"`` (the method exactly as published: U on the raw layer output, no
            BatchNorm re-estimation, no compensation); see :mod:`lightning_fair.presets`.
            The six options below override it one by one (None: the preset's value).
        observe: what U observes, ``"output"``, ``"norm"`` or ``"activation"``.
        reconstruction: ``"abs_of_sum"`` (paper) or ``"sum_of_abs"``, see :func:`compute_scores`.
        group_policy: ``"min_count"`` or ``"joint"``, see :mod:`lightning_fair.removal`.
        allocation: ``"tod"`` (per-layer ToD counts, FAIR), ``"global"`` (one threshold on
            layer-normalised U across all layers; needs ``target_macs``/``target_params``),
            ``"uniform"`` (the same fraction of every layer: ``ratio``, or searched for a
            target) or ``"auto"`` (the default preset's: global under a target, ToD under a
            tolerance, uniform with a ``ratio``).
        recalibrate: re-estimate the running statistics of every BatchNorm after removal on
            the calibration batches (:func:`lightning_fair.recalibrate_bn`; needs ``dataloader``).
        compensate: mean-replacement compensation: fold each removed input's calibration
            mean into its consumer's bias, see :mod:`lightning_fair.compensation`.
        ranking: which units a layer's count removes: ``"utilization"`` (the criterion's
            score: FAIR's U, or the screening score), ``"l1"`` (smallest weights) or
            ``"random"`` (the paper's ablations).
        criterion: what ranks the units: ``"fair"`` (U, with R as ToD's protection) or
            ``"screening"`` (``screening_weight * F / mean F + (1 - screening_weight) * m / mean m``
            per layer: the class-separation F-statistic of the unit's spatially averaged output and
            its filter's L2 norm, see :mod:`lightning_fair.screening`; the global threshold, the
            uniform ratio and ToD, with R as protection, use it in place of U).
        screening_weight: the weight of F against the filter magnitude, in [0, 1].
        ratio: the fraction of every layer's units to remove (``allocation="uniform"``), in [0, 1);
            instead of a tolerance or a target.
        example_inputs: inputs for tracing and counting MACs; default: the first
            calibration batch.
        ignored_layers: module names or modules never pruned (the output layer never is).
        samples_per_class, num_projections, seed, loss_fn, unpack, max_batches:
            passed to :func:`compute_scores` (and ``unpack``, ``max_batches`` to the re-estimation).
        inplace: prune ``model`` itself (default, like torch-pruning) or a deep copy.
        distributed: call on every rank of a ``torch.distributed`` process group, each with its
            own shard of the calibration data: the statistics (and BatchNorm re-estimation) are
            merged across ranks, so every rank removes the same channels.
        memory_budget: bytes (or ``"4GiB"``) the statistics may take; over it they are collected
            in several passes (see :func:`compute_scores`).
        verbose: print the statistics' memory estimate before scoring.

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
    options = resolve_preset(preset, observe=observe, reconstruction=reconstruction, group_policy=group_policy,
                             allocation=allocation, recalibrate=recalibrate, compensate=compensate)
    target = check_options(tolerance, target_macs, target_params, ranking, options["group_policy"], options["observe"],
                           samples_per_class, num_projections, options["reconstruction"], options["allocation"],
                           criterion=criterion, screening_weight=screening_weight, ratio=ratio)
    options["allocation"] = resolve_allocation(options["allocation"], bool(target), ratio is not None)
    parse_bytes(memory_budget)  # a bad budget fails before anything runs
    if dataloader is None and (scores is None or example_inputs is None):
        raise ValueError("pass a calibration dataloader, or both scores=... and example_inputs=...")
    if options["recalibrate"] and dataloader is None and recalibrate:
        raise ValueError("recalibrate=True re-estimates BatchNorm statistics on the calibration batches; "
                         "pass dataloader=..., or recalibrate=False")
    ignored = resolve_ignored(model, ignored_layers)
    if example_inputs is None:
        example_inputs = _first_inputs(dataloader, unpack)
    if isinstance(example_inputs, torch.Tensor):  # trace and count on the model's device
        example_inputs = example_inputs.to(next((p.device for p in model.parameters()), example_inputs.device))
    _check_example_inputs(model, example_inputs)
    if scores is None:
        scores = compute_scores(
            model, dataloader, samples_per_class=samples_per_class, num_projections=num_projections,
            observe=options["observe"], reconstruction=options["reconstruction"], seed=seed, loss_fn=loss_fn,
            unpack=unpack, ignored_layers=ignored, max_batches=max_batches, distributed=distributed,
            memory_budget=memory_budget, verbose=verbose, screening=criterion == "screening",
        )
    # what ranks the units: U, or the screening score in its place (same allocation and removal)
    ranked = ranked_by_screening(scores, screening_weight) if criterion == "screening" else scores
    # names, not module objects: ``ignored`` holds modules of the input model, not of a copy
    protected = {name for name, module in model.named_modules() if module in ignored} | {scores.output_layer}
    if not inplace:
        model = copy.deepcopy(model)
    names = dict(model.named_modules())
    missing = [n for n in scores.layers if n not in names]
    if missing:
        raise ValueError(f"scores name layers the model does not have ({missing[:3]}); compute them on this model")
    scored = [n for n in scores.layers if n not in protected]
    notes: List[str] = []
    if options["recalibrate"] and dataloader is None:
        notes.append("BatchNorm statistics not re-estimated: no calibration dataloader was given")

    snapshot = ModelSnapshot(model)
    try:
        planner = DependencyPlanner(model, example_inputs, scored, protected)
        snapshot.include(planner.graph.module2node)  # concat/split ops keep channel sizes too
        macs_before, params_before = measure(model, example_inputs)
        before = unit_counts(model, scores.layers)
        policy = options["group_policy"]
        if options["allocation"] in ("global", "uniform"):
            global_allocation = options["allocation"] == "global"
            candidates = global_thresholds(ranked, scored) if global_allocation else uniform_ratios(ranked, scored)

            def plan_for(level: float):
                counts = (global_counts if global_allocation else uniform_counts)(ranked, level, scored)
                return counts, planner.plan(ranked, counts, ranking=ranking, policy="min_count", seed=seed)
        else:
            curves = layer_curves(ranked)
            candidates = _tod_candidates(curves)

            def plan_for(level: float):
                counts = {n: count_from_curve(curves[n], level) for n in scored}
                return counts, planner.plan(ranked, counts, ranking=ranking, policy=policy, tolerance=level, seed=seed)

        if ratio is not None:
            tolerance = float(ratio)
        if target:
            tolerance = _search_level(planner, snapshot, plan_for, candidates, target, example_inputs,
                                      macs_before, params_before, options["allocation"])
        counts, plan = plan_for(tolerance)
        consumers = capture_consumers(model, planner.graph) if options["compensate"] else {}
        kept = planner.apply(plan)
        snapshot.restore_flags(model)
        compensated: Dict[str, int] = {}
        if options["compensate"]:
            if scores.input_means:
                compensated, left = fold_mean_replacement(model, kept, scores.input_means, consumers)
                notes.extend(f"mean replacement: {note}" for note in left)
            else:
                notes.append("mean replacement skipped: these scores carry no input means (recompute them)")
        recalibrated: List[str] = []
        if options["recalibrate"] and dataloader is not None:
            _fresh_norm_buffers(model)  # re-estimation writes in place; the snapshot keeps the old tensors
            recalibrated = recalibrate_bn(model, dataloader, max_batches=max_batches, unpack=unpack,
                                          distributed=distributed)
        macs_after, params_after = measure(model, example_inputs)
        if isinstance(example_inputs, torch.Tensor):
            record_pruning(model, planner.history(), example_inputs)
    except BaseException:
        snapshot.restore()
        snapshot.restore_flags(model)
        raise
    after = unit_counts(model, scores.layers)
    notes = [f"{g.root}: {g.blocked}" for g in planner.groups if g.blocked] + notes
    report = PruneReport(
        layers=[LayerRow(n, before[n], after[n], scores.observed.get(n, "")) for n in scores.layers if n in before],
        macs_before=macs_before, macs_after=macs_after, params_before=params_before, params_after=params_after,
        tolerance=float(tolerance) if options["allocation"] == "tod" else None, target=target, notes=notes,
        options={"preset": preset, **options, "criterion": criterion,
                 **({"screening_weight": float(screening_weight)} if criterion == "screening" else {})},
        compensated=compensated, recalibrated=recalibrated,
    )
    return PruneResult(
        model=model, scores=scores, report=report, counts=counts,
        removed={root: idxs.tolist() for root, idxs in plan.items()}, history=planner.history(), tolerance=float(tolerance),
        kept=kept,
    )


def _check_example_inputs(model: nn.Module, example_inputs) -> None:
    """One eval-mode forward of ``example_inputs``: a clear error now instead of one from deep
    inside the dependency tracer (flags restored; eval mode leaves BatchNorm statistics alone)."""
    flags = {m: m.training for m in model.modules()}
    shape = tuple(example_inputs.shape) if isinstance(example_inputs, torch.Tensor) else type(example_inputs).__name__
    try:
        model.eval()
        with torch.no_grad(), torch.inference_mode(False):
            output = model(example_inputs)
    except Exception as error:
        raise ValueError(
            f"example_inputs ({shape}) do not run through the model ({type(error).__name__}: {error}); pass one "
            "batch shaped like the calibration inputs, e.g. example_inputs=x[:1]"
        ) from error
    finally:
        for module, flag in flags.items():
            module.training = flag
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"the model's output must be class logits of shape [batch, num_classes], got {got}")


def _fresh_norm_buffers(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.running_mean is not None:
            module.running_mean = module.running_mean.clone()
            module.running_var = module.running_var.clone()


def check_options(tolerance=0.05, target_macs=None, target_params=None, ranking="utilization",
                  group_policy="min_count", observe="activation", samples_per_class=32, num_projections=128,
                  reconstruction="abs_of_sum", allocation="tod", *, criterion="fair", screening_weight=0.5,
                  ratio=None) -> dict:
    """Validate pruning options (before anything is computed); return ``{"macs"|"params": fraction}``."""
    _check_tolerance(tolerance)
    check_criterion(criterion, screening_weight)
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
    if reconstruction not in RECONSTRUCTIONS:
        raise ValueError(f"reconstruction must be one of {RECONSTRUCTIONS}, got {reconstruction!r}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    if allocation == "global" and not target:
        raise ValueError("allocation='global' ranks units across layers and needs a budget: pass target_macs=... "
                         "or target_params=... (or use allocation='tod' with a tolerance)")
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
            raise ValueError(f"ratio is the fraction of every layer's units to remove, in [0, 1), got {ratio!r}")
        if allocation not in ("uniform", "auto"):
            raise ValueError(f"ratio= sets the per-layer fraction of allocation='uniform', not of allocation={allocation!r}; "
                             "pass allocation='uniform' (or leave it unset), or drop ratio")
        if target:
            raise ValueError("give ratio or a target (target_macs/target_params), not both")
    elif allocation == "uniform" and not target:
        raise ValueError("allocation='uniform' removes the same fraction of every layer: pass ratio=... (e.g. 0.3), "
                         "or target_macs=.../target_params=... to search it")
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


def _tod_candidates(curves) -> list:
    candidates = torch.unique(torch.cat([c for c in curves.values()] + [torch.tensor([0.0, 1.0], dtype=torch.float64)]))
    return candidates[(candidates >= 0) & (candidates <= 1)].tolist()


def _search_level(planner, snapshot, plan_for, candidates, target, example_inputs, macs_before, params_before,
                  allocation="tod"):
    """Smallest level (tolerance, or global threshold) whose pruned model keeps at most the
    target fraction (binary search over the ascending ``candidates``)."""
    key, goal = next(iter(target.items()))

    def kept(level: float) -> float:
        _, plan = plan_for(level)
        try:
            planner.apply(plan, record_history=False)
            macs, params = measure(planner.model, example_inputs)
        finally:
            snapshot.restore()
        return macs / macs_before if key == "macs" else params / params_before

    best = kept(candidates[-1])
    if best > goal + 1e-9:
        how = ("at tolerance 1, where ToD removes up to 99% of each free layer" if allocation == "tod"
               else "with every layer down to one unit")
        raise ValueError(
            f"target_{key}={goal} cannot be reached in one shot: at most {1 - best:.1%} of the {key} can be "
            f"removed (kept {best:.3f} {how}); "
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
