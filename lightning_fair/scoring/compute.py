"""The statistics pass and the criteria by name: ``compute_scores`` runs one pass over the
calibration data (:mod:`lightning_fair.collect`) and lets the chosen criterion
(:class:`lightning_fair.scoring.criterion.Criterion`) turn it into scores.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, Iterable, Optional

import torch
from torch import nn

from ..collect.collector import StatisticsCollector
from ..collect.memory import resolve_budget
from ..config import PruneConfig, configure
from ..runtime.batches import default_unpack
from ..runtime.guards import on_uncompiled
from ..units.channels import consumer_of, resolve_ignored
from .criterion import Criterion
from .fair import FairCriterion, FairScores, layer_utilization
from .screening import ScreeningCriterion

__all__ = ["CRITERIA", "compute_scores", "criterion_for"]

#: the criteria by the ``criterion`` option's values
CRITERIA: Dict[str, Criterion] = {c.name: c for c in (FairCriterion(), ScreeningCriterion())}


def criterion_for(name: str) -> Criterion:
    """The criterion named ``name`` (a value of the ``criterion`` option)."""
    if name not in CRITERIA:
        raise ValueError(f"criterion must be one of {tuple(CRITERIA)}, got {name!r}")
    return CRITERIA[name]


@on_uncompiled
def compute_scores(
    model: nn.Module,
    dataloader: Iterable,
    config: Optional[PruneConfig] = None,
    *,
    loss_fn: Optional[Callable] = None,
    unpack: Callable = default_unpack,
    logits: Optional[Callable] = None,
    distributed: bool = False,
    verbose: bool = False,
    **options,
) -> FairScores:
    """Score every prunable unit of ``model`` with one forward and one backward per batch.

    Args:
        model: any ``nn.Module`` (a LightningModule too) that maps inputs to class logits.
        dataloader: labelled calibration batches, ``(inputs, labels)`` by default.
        config: a :class:`~lightning_fair.PruneConfig`; scoring reads ``samples_per_class``,
            ``num_projections``, ``observe`` (what U observes: the layer's ``"output"``, the tensor
            after the following ``"norm"``, or after the following nonlinearity, ``"activation"``,
            the default preset's; where no such module follows, the furthest point reached is used
            and recorded in ``scores.observed``), ``reconstruction`` (``"abs_of_sum"``, the paper's
            ``R = |sum dL/dz z|`` over all samples and positions, or ``"sum_of_abs"``), ``seed``,
            ``ignored_layers`` (never scored, nor pruned), ``max_batches``, ``memory_budget`` and
            ``criterion`` (``"screening"`` also collects, in the same pass, what the screening
            criterion needs, and returns :class:`~lightning_fair.ScreeningScores`: ``f_statistic``,
            ``filter_norm``, ``input_f_statistic`` besides U and R;
            per class, the count, sum and sum of squares of every unit's spatially averaged
            observed tensor and every Conv/Linear's input: ``16 K C`` bytes per layer).
        **options: fields of :class:`~lightning_fair.PruneConfig` overriding ``config``.
        loss_fn: ``loss_fn(logits, labels)``, cross-entropy by default.
        unpack: ``batch -> (inputs, labels)``.
        logits: ``output -> class logits`` for a model that returns more (``lambda out: out[0]``);
            by default the output itself, or its ``"logits"`` entry / ``.logits`` (Hugging Face).
        distributed: inside a ``torch.distributed`` process group (e.g. DDP), each process passes
            its own shard of the calibration data and the statistics of all processes are merged
            before scoring, so every process gets the same scores (collective: call on every rank).
        verbose: print the estimate after the first batch: memory, passes, class pairs and distance
            work (a warning names the options that bring it down when it would take far too long,
            verbose or not).

    Memory: the utilization samples need about what :func:`lightning_fair.estimate_memory` says
    (estimated on the first batch from the layer shapes, classes, ``samples_per_class`` and
    ``num_projections``); over ``memory_budget`` the units are split into chunks collected in
    further, forward-only passes over ``dataloader`` (which must then be re-iterable). Same
    scores, given the same batches.

    Returns:
        :class:`FairScores`. The model is left exactly as it was.

    Example:
        >>> import torch
        >>> from lightning_fair import compute_scores
        >>> from lightning_fair.demos import zoo
        >>> data = [(torch.randn(20, 1, 8, 8), torch.arange(20) % 10)]
        >>> scores = compute_scores(zoo.small_cnn(), data, samples_per_class=2, num_projections=8)
        >>> scores.layers
        ['features.0.0', 'features.1.0', 'features.3.0', 'head.0']
        >>> scores.utilization["features.0.0"].shape
        torch.Size([16])
    """
    config = configure(config, **options).resolved()
    samples_per_class, max_batches, memory_budget = config.samples_per_class, config.max_batches, config.memory_budget
    budget = resolve_budget(memory_budget, next((p.device for p in model.parameters()), None))
    ignored = resolve_ignored(model, config.ignored_layers)
    options = dict(
        samples_per_class=samples_per_class,
        num_projections=config.num_projections,
        max_classes=config.max_classes,
        token_classes=config.token_classes,
        pairs=config.pairs,
        observe=config.observe,
        seed=config.seed,
        loss_fn=loss_fn,
        unpack=unpack,
        logits=logits,
        ignored=ignored,
        distributed=distributed,
        prune_embedding=config.prune_embedding,
    )
    criterion = criterion_for(config.criterion)
    collector = StatisticsCollector(model, memory_budget=budget, screening=criterion.collects_screening, **options)
    collector.on_plan = lambda estimate: _announce(estimate, budget, collector.device.type, verbose)
    collector.run(dataloader, max_batches=max_batches)
    scores = criterion.scores(collector, config)
    if len(collector.chunks) > 1 and iter(dataloader) is dataloader:
        raise ValueError(
            f"the statistics need {len(collector.chunks)} passes under memory_budget={memory_budget!r}, but the "
            "dataloader is a one-shot iterator; pass a re-iterable dataloader (a DataLoader or a list), or a larger "
            "memory_budget"
        )
    for chunk in collector.chunks[1:]:  # forward-only passes for the remaining units
        later = StatisticsCollector(model, channels=chunk, reconstruction=False, **options)
        later.run(dataloader, max_batches=max_batches)
        for name, (start, stop) in chunk.items():
            consumer = consumer_of(name)
            target = scores.utilization[name] if consumer is None else scores.input_utilization[consumer]
            target[start:stop] = layer_utilization(later, name)
        del later
    kept = collector.class_samples.counts
    # a class a little short of samples_per_class changes U by sampling noise only; one with fewer than
    # a quarter of them (or under 2) compares by a handful of values: said, with the fix
    floor = max(2, samples_per_class // 4)
    short = {k: int(kept[k]) for k in collector.class_samples.chosen.tolist() if 0 < kept[k] < floor}
    if short:
        warnings.warn(
            f"{len(short)} class(es) have fewer than {floor} calibration samples, a quarter of "
            f"samples_per_class={samples_per_class} (class: samples {dict(list(short.items())[:8])}); their "
            "utilization distances rest on a handful of values. Pass more calibration data (or a smaller "
            "samples_per_class) to silence this.",
            stacklevel=3,
        )  # past the on_uncompiled wrapper: the caller's line
    scores.config["passes"] = len(collector.chunks)
    scores.config["memory_estimate"] = int(collector.estimate.total_bytes)
    return scores


def _announce(estimate, budget: Optional[int], device: str, verbose: bool) -> None:
    """After the first batch, before the rest of the pass: print the estimate (``verbose``), and
    warn when the setting would take far too long, naming the options that bring it down."""
    threads = torch.get_num_threads()
    if verbose and estimate.worth_saying(budget, device, threads):
        print(estimate.describe(budget, device, threads), flush=True)
    message = estimate.cost_warning(budget, device, threads)
    if message:
        warnings.warn(message, stacklevel=5)
