"""One-shot structured pruning of any ``nn.Module``, as a pipeline of small named stages:

resolve (the :class:`~lightning_fair.PruneConfig`) -> score (:func:`compute_scores`) -> rank (U,
or the screening score) -> allocate (ToD / global / uniform counts at a level, searched for a
target) -> remove (torch-pruning) -> repair (least-squares refit, compensation, BatchNorm
re-estimation) -> report. The refit's statistics come from one pass of the unpruned model over the
calibration batches, between allocation and removal: once removed, the original outputs are gone.

The units are ranked by FAIR's utilization score (``criterion="fair"``) or by the screening
score (``criterion="screening"``, :mod:`lightning_fair.scoring.screening`); allocation, removal,
compensation and re-estimation are the same for both.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ..allocation.budgets import (
    Allocation,
    AllowedCounts,
    UniformShapes,
    allocation_for,
    layer_kind,
    multiples_kept,
)
from ..collect.memory import resolve_budget
from ..config import PruneConfig, configure
from ..removal.graph import build_graph
from ..removal.heads import planner_for
from ..removal.history import pruning_state, record_pruning
from ..removal.planner import DependencyPlanner
from ..repair.batchnorm import recalibrate_bn
from ..repair.compensation import Consumer, capture_consumers, fold_mean_replacement
from ..repair.refit import (
    LeastSquares,
    RefitTarget,
    collect_refit_statistics,
    refit_bytes,
    refit_consumers,
    refit_targets,
    split_by_budget,
)
from ..runtime.batches import (
    call_model,
    default_unpack,
    first_inputs,
    inputs_to,
    is_token_ids,
    main_input,
    model_device,
    name_next_pass,
    select_logits,
)
from ..runtime.guards import on_uncompiled, preserved_modes, rollback
from ..scoring.compute import compute_scores, criterion_for
from ..scoring.criterion import CriterionScores
from ..scoring.fair import FairScores
from ..scoring.massive import keeping_massive
from ..units.channels import resolve_ignored
from ..units.cost import embedding_params, macs_basis, measure, unit_counts
from ..units.pretrained_config import allowed_removals, fixed_layers, record_in_config, write_config
from .report import LayerRow, PruneReport

__all__ = ["PruneResult", "prune"]


@dataclass
class PruneResult:
    """What :func:`prune` returns.

    Attributes:
        model: the pruned model (the same object as the input unless ``inplace=False``).
        scores: the FAIR scores used (reuse them for another budget without a data pass).
        report: :class:`PruneReport`, ``print(result.report)`` for the table.
        counts: units each layer's allocation removes at the level used.
        removed: root-channel indices removed per coupled group.
        history: torch-pruning's pruning history (plain data, replayable).
        level: where the allocation was cut (given, or found by search for a target); what it is
            says ``level_name``.
        level_name: ``"tolerance"`` (ToD: the tolerance of difference), ``"threshold"`` (global:
            the threshold on layer-normalised scores), ``"ratio"`` (uniform: the fraction of
            every layer removed) or ``"none"`` (a target that keeps everything: nothing scored).
        kept: original indices each changed module kept, ``{name: {"out": idxs, "in": idxs}}``.
        config: the resolved :class:`PruneConfig` (the preset's values filled in).
    """

    model: nn.Module
    scores: FairScores
    report: PruneReport
    counts: Dict[str, int]
    removed: Dict[str, List[int]]
    history: list
    level: float
    level_name: str
    kept: Dict[str, Dict[str, torch.Tensor]]
    config: PruneConfig

    @property
    def tolerance(self) -> float:
        """The level, whatever its kind (0.1 name; read ``level`` and ``level_name``)."""
        return self.level


@on_uncompiled
def prune(
    model: nn.Module,
    dataloader: Optional[Iterable] = None,
    config: Optional[PruneConfig] = None,
    *,
    scores: Optional[FairScores] = None,
    example_inputs=None,
    loss_fn: Optional[Callable] = None,
    unpack: Callable = default_unpack,
    logits: Optional[Callable] = None,
    inplace: bool = True,
    distributed: bool = False,
    verbose: bool = False,
    **options,
) -> PruneResult:
    """Prune ``model``'s units (channels, features) in one shot, no fine-tuning: FAIR-Pruner by
    default, or the screening criterion.

    Args:
        model: any ``nn.Module`` mapping inputs to class logits (a LightningModule too).
        dataloader: labelled calibration batches; not needed if ``scores`` and
            ``example_inputs`` are given.
        config: a :class:`~lightning_fair.PruneConfig` (the budget: ``tolerance``,
            ``target_macs``, ``target_params`` or ``ratio``; the preset and its nine pipeline
            options; ranking, criterion, statistics sizes, ``ignored_layers``, ...); default
            ``PruneConfig()``.
        **options: any field of :class:`~lightning_fair.PruneConfig`, overriding ``config``
            (``prune(model, loader, target_macs=0.5)``); an unknown name is a TypeError.
        scores: precomputed :func:`compute_scores` output (skips the data pass).
        example_inputs: inputs for tracing and counting MACs; default: the first
            calibration batch.
        loss_fn, unpack, logits: passed to :func:`compute_scores` (``unpack`` also to the
            re-estimation; ``logits`` picks the class logits from a model that returns more, e.g.
            ``logits=lambda out: out[0]``).
        inplace: prune ``model`` itself (default, like torch-pruning) or a deep copy.
        distributed: call on every rank of a ``torch.distributed`` process group, each with its
            own shard of the calibration data: the statistics (and BatchNorm re-estimation) are
            merged across ranks, so every rank removes the same channels.
        verbose: print the statistics' memory estimate before scoring.

    Returns:
        :class:`PruneResult`. If anything fails, the model is left exactly as it was.

    Raises:
        ValueError: a bad argument (before anything is computed or changed), or a
            target the scores cannot reach (the message says what is reachable).
        TypeError: an option that is not a field of :class:`~lightning_fair.PruneConfig`.

    Example:
        >>> import torch
        >>> from lightning_fair import PruneConfig, prune
        >>> from lightning_fair.demos import zoo
        >>> data = [(torch.randn(40, 1, 8, 8), torch.arange(40) % 10)]
        >>> config = PruneConfig(tolerance=0.3, samples_per_class=4, num_projections=8)
        >>> result = prune(zoo.small_cnn(), data, config)
        >>> result.model(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
        >>> result.report.macs_ratio <= 1.0, result.level_name
        (True, 'tolerance')
    """
    # resolve: every option validated before anything is computed or changed
    given = configure(config, **options)
    check_calibration(given, dataloader, scores, example_inputs)
    config = given.resolved()
    ignored = resolve_ignored(model, config.ignored_layers)
    example_inputs = resolve_example_inputs(model, dataloader, example_inputs, unpack, logits)
    check_recalibration(config, model, dataloader)
    check_refit(config, dataloader)
    if config.target and min(config.target.values()) >= 1.0:  # keep everything: nothing to score or remove
        return nothing_removed(model if inplace else copy.deepcopy(model), scores, example_inputs, config)
    # trace: torch-pruning's graph before the (expensive) scoring pass, so that a model it cannot trace fails fast
    target = model if inplace else copy.deepcopy(model)
    graph = build_graph(target, example_inputs)
    # score
    if scores is None:
        scores = compute_scores(
            model,
            dataloader,
            config,
            loss_fn=loss_fn,
            unpack=unpack,
            logits=logits,
            distributed=distributed,
            verbose=verbose,
        )
    # rank: FAIR's U, or the screening score (same allocation and removal)
    ranked = rank(scores, config)
    # names, not module objects: ``ignored`` holds modules of the input model, not of a copy
    protected = {name for name, module in model.named_modules() if module in ignored} | {scores.output_layer}
    model = target
    notes: List[str] = []
    allowed: Dict[str, List[int]] = {}
    if config.shapes == "uniform":  # counts a config can hold; layers with none (but 0) stay whole
        free = [n for n in scores.layers if n not in protected and scores.utilization[n].numel() > 1]
        allowed = allowed_removals(model, free)
        fixed = fixed_layers(model, free, allowed)
        protected |= set(fixed)
        kinds: Dict[Tuple[str, str], int] = {}  # one note per kind of layer, not per block
        for name, why in fixed.items():
            kinds[(layer_kind(name), why)] = kinds.get((layer_kind(name), why), 0) + 1
        notes.extend(f"{kind} ({count} layer{'s' * (count > 1)}): {why}" for (kind, why), count in kinds.items())
    scored = scored_layers(model, scores, protected)
    massive = {name: int(ranked.last[name].sum()) for name in scored if name in ranked.last}
    if massive:
        notes.append(
            f"{sum(massive.values())} unit(s) with massive activations (a peak at least {config.massive:g}x their "
            f"layer's median) in {len(massive)} layer(s) go last in their layer's removal order"
        )
    if config.round_to:  # kept widths in multiples of round_to (layers of at least twice as many units)
        for name in scored:
            multiples = multiples_kept(ranked.removal[name].numel(), config.round_to)
            if multiples is not None:
                allowed[name] = sorted(set(multiples) & set(allowed.get(name, multiples))) or [0]

    with rollback(model) as snapshot:
        uniform = config.shapes == "uniform"
        planner = planner_for(
            model, example_inputs, scored, protected, config.prune_embedding, graph=graph, same_layout=uniform
        )
        snapshot.include(planner.graph.module2node)  # concat/split ops keep channel sizes too
        macs_before, params_before = measure(model, example_inputs)
        embeddings_before = embedding_params(model)
        before = unit_counts(model, scores.layers)
        # allocate
        allocation = allocation_for(config.allocation, ranked, scored, config.group_policy)
        if uniform:
            allocation = UniformShapes(allocation, allowed)
        elif allowed:
            allocation = AllowedCounts(allocation, allowed)
        level = float(config.ratio) if config.ratio is not None else config.tolerance
        if config.target:
            level = search_level(planner, allocation, ranked, config, (macs_before, params_before))
        counts, plan = plan_at(planner, allocation, ranked, level, config)
        # what the next layers read, before removal (the refit also needs the BatchNorm after each)
        consumers = capture_consumers(model, planner.graph) if config.compensate or config.refit else {}
        # the refit's statistics: one pass of the unpruned model, for the consumers this plan cuts
        refit = (
            gather_refit(planner, plan, config, consumers, dataloader, unpack, distributed) if config.refit else None
        )
        # remove
        kept, plan, _ = planner.apply_checked(plan)
        snapshot.restore_flags(model)
        # repair
        compensated, refitted, recalibrated, repair_notes = repair(
            model, config, kept, scores, consumers, refit, dataloader, unpack, distributed
        )
        notes.extend(repair_notes)
        macs_after, params_after = measure(model, example_inputs)
        if isinstance(example_inputs, (torch.Tensor, dict)):
            record_pruning(model, planner.history(), main_input(example_inputs))
        # a Hugging Face model's config: the new counts (uniform), or the history to replay (per layer)
        if uniform:
            write_config(model, pruning_state(model))
        elif pruning_state(model) is not None:
            record_in_config(model, pruning_state(model))
    # report
    after = unit_counts(model, scores.layers)
    notes = (
        [f"{g.root}: {g.blocked}" for g in planner.groups if g.blocked]
        + [f"{root}: {why}" for root, why in planner.refused.items()]
        + notes
    )
    report = PruneReport(
        layers=[LayerRow(n, before[n], after[n], scores.observed.get(n, "")) for n in scores.layers if n in before],
        macs_before=macs_before,
        macs_after=macs_after,
        params_before=params_before,
        params_after=params_after,
        tolerance=float(level) if config.allocation == "tod" else None,
        target=config.target,
        notes=notes,
        options={
            **config.to_dict(),
            # what the scores were made with (they may come from an earlier compute_scores)
            "num_projections": scores.config.get("num_projections", config.num_projections),
            "pairs": scores.config.get("pairs", config.pairs),
        },
        compensated=compensated,
        refitted=refitted,
        recalibrated=recalibrated,
        macs_per=macs_basis(example_inputs),
        embedding_params_before=embeddings_before,
        embedding_params_after=embedding_params(model),
    )
    if not config.target:
        warn_if_little_is_left(report, level, allocation.level_name)
    return PruneResult(
        model=model,
        scores=scores,
        report=report,
        counts=counts,
        removed={root: idxs.tolist() for root, idxs in plan.items()},
        history=planner.history(),
        level=float(level),
        level_name=allocation.level_name,
        kept=kept,
        config=config,
    )


# ---------------------------------------------------------------------- stages
#: below this fraction of the MACs kept, a level given without a target is said to have gone far
LITTLE_LEFT = 0.2


def warn_if_little_is_left(report: PruneReport, level: float, level_name: str) -> None:
    """A warning when a level given directly (``tolerance=``, ``ratio=``, not a budget) left less
    than ``LITTLE_LEFT`` of the MACs: a level says how far scores may disagree or how much of each
    layer may go, not how much of the model is removed, and ``tolerance=1.0`` keeps almost nothing."""
    if report.macs_before and report.macs_after / report.macs_before < LITTLE_LEFT:
        warnings.warn(
            f"{level_name}={level:g} kept {100 * report.macs_after / report.macs_before:.1f} % of the MACs "
            f"(params {100 * report.params_after / max(report.params_before, 1):.1f} %); for a budget pass "
            "target_macs=... or target_params=... instead (a smaller tolerance or ratio removes less)",
            stacklevel=3,
        )


def check_calibration(config: PruneConfig, dataloader, scores, example_inputs) -> None:
    """What must come with the options: calibration data, or scores and example inputs
    (``config`` as given: ``recalibrate=True`` asked for explicitly needs a dataloader)."""
    if dataloader is None and (scores is None or example_inputs is None):
        raise ValueError(
            "pass a calibration dataloader, or both scores=... and example_inputs=... (without calibration "
            "batches also refit=False, and recalibrate=False for a model with BatchNorm)"
        )
    if config.recalibrate is True and dataloader is None:
        raise ValueError(
            "recalibrate=True re-estimates BatchNorm statistics on the calibration batches; "
            "pass dataloader=..., or recalibrate=False"
        )


def check_refit(config: PruneConfig, dataloader) -> None:
    """The refit fits the consumers on the calibration batches (the default preset's, or asked for)."""
    if config.refit and dataloader is None:
        raise ValueError(
            "refit=True (the default pipeline's) fits the consumers on calibration batches and no dataloader "
            "was given; pass it too (prune(model, loader, scores=scores, ...)): scores reused from "
            "compute_scores still skip the scoring pass; or refit=False to prune without the refit"
        )


def check_recalibration(config: PruneConfig, model: nn.Module, dataloader) -> None:
    """The preset re-estimates BatchNorm statistics after removal; without calibration data it
    cannot, and the pruned model's statistics would describe channels that are gone (measured:
    8 % instead of 63 % on a digits CNN). Refuse instead of pruning quietly worse."""
    if (
        config.recalibrate
        and dataloader is None
        and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    ):
        raise ValueError(
            "this model has BatchNorm layers, whose statistics the pipeline re-estimates after removal on the "
            "calibration batches, and no dataloader was given; pass it too (prune(model, loader, scores=scores, "
            "...)): scores reused from compute_scores still skip the scoring pass; or recalibrate=False to "
            "prune without re-estimation; lightning_fair.sweep(...) prunes several targets from one scoring pass"
        )


def nothing_removed(model: nn.Module, scores: Optional[FairScores], example_inputs, config: PruneConfig) -> PruneResult:
    """The result of a target that keeps everything (``target_macs=1.0``): the model as it is, its
    report, no scoring pass (``scores`` as given, or empty)."""
    macs, params = measure(model, example_inputs)
    embeddings = embedding_params(model)
    report = PruneReport(
        layers=[],
        macs_before=macs,
        macs_after=macs,
        params_before=params,
        params_after=params,
        target=config.target,
        notes=[f"target {config.target} keeps everything: nothing was scored or removed"],
        options=config.to_dict(),
        macs_per=macs_basis(example_inputs),
        embedding_params_before=embeddings,
        embedding_params_after=embeddings,
    )
    return PruneResult(
        model=model,
        scores=scores if scores is not None else FairScores({}, {}),
        report=report,
        counts={},
        removed={},
        history=[],
        level=0.0,
        level_name="none",
        kept={},
        config=config,
    )


def resolve_example_inputs(
    model: nn.Module, dataloader, example_inputs, unpack: Callable, logits: Optional[Callable] = None
):
    """``example_inputs``, or the first calibration batch's first input, on the model's device and
    checked to run through the model."""
    if example_inputs is None:
        example_inputs = first_inputs(dataloader, unpack)
    if isinstance(example_inputs, (torch.Tensor, dict)):  # trace and count on the model's device
        example_inputs = inputs_to(example_inputs, model_device(model))
    _check_example_inputs(model, example_inputs, logits)
    return example_inputs


def rank(scores: FairScores, config: PruneConfig) -> CriterionScores:
    """What ranks the units: FAIR's (U removes, R protects, consumers' input U for residual
    groups) or the screening criterion's (the screening score removes, R protects); either way the
    units with massive activations go last in their layers (``massive``, :mod:`lightning_fair.scoring.massive`)."""
    ranked = criterion_for(config.criterion).rank(scores, config)
    return keeping_massive(ranked, scores.peaks, config.massive)


def scored_layers(model: nn.Module, scores: FairScores, protected) -> List[str]:
    """The scored layers that may lose units (checked to exist in ``model``)."""
    names = dict(model.named_modules())
    missing = [n for n in scores.layers if n not in names]
    if missing:
        raise ValueError(f"scores name layers the model does not have ({missing[:3]}); compute them on this model")
    units = unit_counts(model, scores.layers)
    differ = [
        f"{n}: {scores.utilization[n].numel()} scored, {units[n]} now"
        for n in scores.layers
        if n in units and scores.utilization[n].numel() != units[n]
    ]
    if differ:
        raise ValueError(
            f"scores= were computed on a model of other widths ({'; '.join(differ[:3])}"
            f"{'; ...' if len(differ) > 3 else ''}), e.g. before an earlier pruning; compute them on this model "
            "(lightning_fair.compute_scores(model, loader)) or leave scores= out"
        )
    return [n for n in scores.layers if n not in protected]


def plan_at(
    planner: DependencyPlanner, allocation: Allocation, ranked: CriterionScores, level: float, config: PruneConfig
) -> Tuple[Dict[str, int], Dict[str, torch.Tensor]]:
    """Per-layer counts at ``level`` and the coupled groups' channels they remove."""
    counts = allocation.counts(level)
    return counts, planner.plan(
        ranked,
        counts,
        ranking=config.ranking,
        policy=allocation.group_policy,
        tolerance=allocation.tolerance(level),
        seed=config.seed,
    )


def search_level(
    planner: DependencyPlanner,
    allocation: Allocation,
    ranked: CriterionScores,
    config: PruneConfig,
    before: Tuple[int, int],
) -> float:
    """Smallest level whose pruned model keeps at most the target fraction of MACs (params):
    binary search over the allocation's ascending candidate levels, each tried and undone.
    A level whose pruned model fails (after the groups that fail alone are left whole) counts
    as out of reach: the search stays below it. Where a trial leaves a group whole, the search
    starts again (the levels tried before measured that group pruned)."""
    while True:
        blocked = [group.root for group in planner.groups if group.blocked]
        level = _search(planner, allocation, ranked, config, before)
        if blocked == [group.root for group in planner.groups if group.blocked]:
            return level


def _search(
    planner: DependencyPlanner,
    allocation: Allocation,
    ranked: CriterionScores,
    config: PruneConfig,
    before: Tuple[int, int],
) -> float:
    key, goal = next(iter(config.target.items()))
    candidates = allocation.levels()
    tried: Dict[int, Optional[float]] = {}
    failures: List[Exception] = []

    def kept(index: int) -> Optional[float]:
        if index not in tried:
            _, plan = plan_at(planner, allocation, ranked, candidates[index], config)
            try:
                _, _, (macs, params) = planner.apply_checked(plan, record_history=False)
                tried[index] = macs / before[0] if key == "macs" else params / before[1]
            except Exception as error:  # this level's plan breaks the model: out of reach
                tried[index] = None
                failures.append(error)
            finally:
                planner.restore()
        return tried[index]

    top = len(candidates) - 1
    if kept(top) is None:  # the most aggressive plans fail: the largest level that works
        lo, hi = 0, top
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if kept(mid) is not None else (lo, mid - 1)
        top = lo
    best = kept(top)
    if best is None or best > goal + 1e-9:
        how = (
            "at tolerance 1, where ToD removes up to 99% of each free layer"
            if allocation.level_name == "tolerance"
            else "with every layer down to one unit"
        )
        best = 1.0 if best is None else best
        whole = [f"{group.root}: {group.blocked}" for group in planner.groups if group.blocked and group.members]
        whole = f"; {len(whole)} coupled group(s) are left whole ({'; '.join(whole)[:300]})" if whole else ""
        raise ValueError(
            f"target_{key}={goal} cannot be reached in one shot: at most {1 - best:.1%} of the {key} can be "
            f"removed (kept {best:.3f} {how}){whole}; "
            f"ask for target_{key}>={best:.3f}, or unfreeze layers listed in ignored_layers"
        ) from (failures[0] if failures else None)
    lo, hi = 0, top  # kept(hi) <= goal
    while lo < hi:
        mid = (lo + hi) // 2
        value = kept(mid)
        if value is not None and value <= goal + 1e-9:
            hi = mid
        else:
            lo = mid + 1
    return candidates[hi]


def gather_refit(
    planner: DependencyPlanner,
    plan: Dict[str, torch.Tensor],
    config: PruneConfig,
    consumers: Dict[str, Consumer],
    dataloader,
    unpack: Callable,
    distributed: bool,
) -> Tuple[Dict[str, RefitTarget], Dict[str, LeastSquares], List[str]]:
    """Which consumers ``plan`` cuts (found by applying it and undoing that), and their least-squares
    statistics from one pass of the still unpruned model. Returns ``(targets, statistics, notes)``."""
    kept, _, _ = planner.apply_checked(plan, record_history=False)
    planner.restore()
    followers = {name: consumer.follower for name, consumer in consumers.items()}
    targets, notes = refit_targets(planner.model, kept, followers)
    budget = resolve_budget(config.memory_budget, model_device(planner.model))
    parts = split_by_budget(planner.model, targets, budget)
    if len(parts) > 1:
        notes.append(
            f"the statistics of {len(targets)} consumers take {refit_bytes(planner.model, targets) / 2**20:.0f} MiB, "
            f"over memory_budget: gathered in {len(parts)} passes"
        )
    statistics: Dict[str, LeastSquares] = {}
    for number, part in enumerate(parts, 1):
        name_next_pass(dataloader, "refitting consumers" + (f" ({number}/{len(parts)})" if len(parts) > 1 else ""))
        statistics.update(
            collect_refit_statistics(
                planner.model, part, dataloader, unpack=unpack, max_batches=config.max_batches, distributed=distributed
            )
        )
    return targets, statistics, notes


def repair(
    model: nn.Module,
    config: PruneConfig,
    kept,
    scores: FairScores,
    consumers,
    refit: Optional[Tuple[Dict[str, RefitTarget], Dict[str, LeastSquares], List[str]]],
    dataloader,
    unpack: Callable,
    distributed: bool,
) -> Tuple[Dict[str, int], Dict[str, int], List[str], List[str]]:
    """After removal: the least-squares refit of the consumers (if configured), mean-replacement
    compensation of the consumers it did not refit, then BatchNorm re-estimation (as configured).
    Returns ``(compensated, refitted, recalibrated layers, notes)``."""
    notes: List[str] = []
    refitted: Dict[str, int] = {}
    if refit is not None:
        targets, statistics, left = refit
        refitted, failed = refit_consumers(model, targets, statistics)
        notes.extend(f"refit: {note}" for note in left + failed)
    compensated: Dict[str, int] = {}
    if config.compensate:
        if scores.input_means:
            rest = {name: sides for name, sides in kept.items() if name not in refitted}
            compensated, left = fold_mean_replacement(model, rest, scores.input_means, consumers)
            notes.extend(f"mean replacement: {note}" for note in left)
        else:
            notes.append("mean replacement skipped: these scores carry no input means (recompute them)")
    recalibrated: List[str] = []
    if config.recalibrate and dataloader is not None:
        _fresh_norm_buffers(model)  # re-estimation writes in place; the snapshot keeps the old tensors
        name_next_pass(dataloader, "re-estimating BatchNorm")
        recalibrated = recalibrate_bn(
            model, dataloader, max_batches=config.max_batches, unpack=unpack, distributed=distributed
        )
    return compensated, refitted, recalibrated, notes


def _check_example_inputs(model: nn.Module, example_inputs, logits: Optional[Callable] = None) -> None:
    """One eval-mode forward of ``example_inputs``: a clear error now instead of one from deep
    inside the dependency tracer (flags restored; eval mode leaves BatchNorm statistics alone)."""
    if isinstance(example_inputs, torch.Tensor):
        shape = str(tuple(example_inputs.shape))
    elif isinstance(example_inputs, dict):
        shape = "dict of " + ", ".join(f"{k} {tuple(getattr(v, 'shape', ()))}" for k, v in example_inputs.items())
    else:
        shape = type(example_inputs).__name__
    try:
        with preserved_modes(model):
            model.eval()
            with torch.no_grad(), torch.inference_mode(False):
                output = call_model(model, example_inputs)
    except Exception as error:
        raise ValueError(
            f"example_inputs ({shape}) do not run through the model ({type(error).__name__}: {error}); pass one "
            "batch shaped like the calibration inputs, e.g. example_inputs=x[:1] (for keyword inputs, a dict "
            "of the entries forward takes: {'input_ids': ids[:1], 'attention_mask': mask[:1]})"
        ) from error
    select_logits(output, logits, tokens=is_token_ids(example_inputs))  # ValueError saying how to pick them


def _fresh_norm_buffers(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.running_mean is not None:
            module.running_mean = module.running_mean.clone()
            module.running_var = module.running_var.clone()
