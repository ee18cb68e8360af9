"""Unstructured (per-connection) pruning with the screening criterion: zeros in dense weights.

``prune_connections`` scores every weight of every Conv/Linear
(:func:`lightning_fair.scoring.screening.connection_scores`),
removes the lowest-scoring fraction (over all layers at once, or per layer) and writes the zeros
into the weights themselves: no mask buffer, no parametrization, nothing to ``remove`` later.
The shapes do not change, so neither do MACs or latency with dense kernels; the report says
so and counts zero-valued weights.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from ..collect.memory import resolve_budget
from ..config import DEFAULT_BUDGET, check_screening_weight
from ..pipeline.report import si_count
from ..runtime.batches import default_unpack, first_inputs
from ..scoring.fair import FairScores, compute_scores
from ..scoring.screening import connection_scores
from ..units.channels import candidate_layers, resolve_ignored
from ..units.cost import measure

__all__ = ["ConnectionPruneResult", "SparsityReport", "SparsityRow", "prune_connections"]


@dataclass
class SparsityRow:
    """One layer's weights: how many, how many were zero before, how many this pruning removed,
    how many are zero now."""

    name: str
    weights: int
    zeros_before: int
    removed: int
    zeros_after: int

    @property
    def sparsity(self) -> float:
        return self.zeros_after / self.weights if self.weights else 0.0


@dataclass
class SparsityReport:
    """What unstructured pruning did, counted honestly: zero-valued weights, not MACs.

    ``weight_sparsity`` is the fraction of zero-valued weights over the pruned layers' weights
    (biases excluded), ``model_sparsity`` the fraction of zero-valued parameters of the whole
    model. ``macs`` is the dense MACs count per sample, the same before and after (``None`` without
    example inputs): dense kernels multiply the zeros too.
    """

    layers: List[SparsityRow]
    params: int
    zero_params_before: int
    zero_params_after: int
    macs: Optional[int] = None
    sparsity: float = 0.0
    options: Dict[str, object] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    @property
    def removed(self) -> int:
        """Connections this pruning removed (``floor(sparsity * N)``; some may have been zero already)."""
        return sum(r.removed for r in self.layers)

    @property
    def weight_sparsity(self) -> float:
        total = sum(r.weights for r in self.layers)
        return sum(r.zeros_after for r in self.layers) / total if total else 0.0

    @property
    def model_sparsity(self) -> float:
        return self.zero_params_after / self.params if self.params else 0.0

    def to_dict(self) -> dict:
        """Plain data (for loggers, JSON)."""
        data = asdict(self)
        data.update(removed=self.removed, weight_sparsity=self.weight_sparsity, model_sparsity=self.model_sparsity)
        return data

    def __str__(self) -> str:
        width = max([len("layer")] + [len(r.name) for r in self.layers])
        lines = [f"{'layer':<{width}}  {'weights':>9}  {'zeros':>9}  {'sparsity':>8}"]
        lines.append("-" * len(lines[0]))
        for row in self.layers:
            lines.append(f"{row.name:<{width}}  {row.weights:>9}  {row.zeros_after:>9}  {row.sparsity:>8.1%}")
        lines.append("-" * len(lines[0]))
        lines.append(
            f"zero-valued weights of the pruned layers: {self.weight_sparsity:.1%} ({self.removed} connections "
            f"removed now); zero-valued parameters of the model: {self.model_sparsity:.1%} of "
            f"{si_count(self.params)}"
        )
        macs = f"{si_count(self.macs)} per sample, " if self.macs is not None else ""
        lines.append(
            f"MACs unchanged ({macs}dense weights with zeros: speed-ups need sparse kernels); "
            "parameter tensors keep their shapes"
        )
        if self.options:
            lines.append("pipeline: " + ", ".join(f"{k}={v}" for k, v in self.options.items()))
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


@dataclass
class ConnectionPruneResult:
    """What :func:`prune_connections` returns: the model (pruned in place unless ``inplace=False``),
    the scores used, the report and the keep-mask of every pruned layer's weight (True: kept)."""

    model: nn.Module
    scores: FairScores
    report: SparsityReport
    masks: Dict[str, torch.Tensor]


def prune_connections(
    model: nn.Module,
    dataloader: Optional[Iterable] = None,
    *,
    sparsity: float,
    allocation: str = "global",
    screening_weight: float = 0.5,
    scores: Optional[FairScores] = None,
    example_inputs=None,
    ignored_layers=None,
    include_output: bool = False,
    observe: str = "activation",
    samples_per_class: int = 32,
    num_projections: Union[int, str] = "auto",
    seed: int = 0,
    loss_fn: Optional[Callable] = None,
    unpack: Callable = default_unpack,
    max_batches: Optional[int] = None,
    inplace: bool = True,
    distributed: bool = False,
    memory_budget: Union[int, str, None] = DEFAULT_BUDGET,
    verbose: bool = False,
) -> ConnectionPruneResult:
    """Unstructured screening pruning: zero the lowest-scoring connections of every Conv/Linear.

    A connection ``i -> o`` scores ``w * F_i / mean F + (1 - w) * |W_oi| / mean |W|`` within its
    layer (:func:`lightning_fair.scoring.screening.connection_scores`), ``F_i`` the one-way ANOVA F across
    classes of input feature ``i`` (the spatially averaged input channel for a conv) as the layer
    receives it over the calibration data, the input pixels for the first layer. Every Conv/Linear
    that runs once per forward is pruned except ``ignored_layers`` and, unless ``include_output``,
    the output layer (as in structured pruning: on LeNet-300-100 at sparsity 0.8 the global
    threshold otherwise zeroes nearly all of the classifier, docs/benchmarks.md).

    Args:
        model: any ``nn.Module`` mapping inputs to class logits.
        dataloader: labelled calibration batches (not needed with ``scores`` computed with
            ``criterion="screening"``).
        sparsity: the fraction of connections to set to zero, in [0, 1): exactly
            ``floor(sparsity * N)`` of the ``N`` weights of the pruned layers (``"global"``) or of
            each layer (``"layer"``).
        allocation: ``"global"`` (one threshold on the layer-normalised scores of all layers) or
            ``"layer"`` (the same fraction of every layer).
        screening_weight: weight of the F term against the magnitude term, in [0, 1].
        scores: precomputed ``compute_scores(..., criterion='screening')`` output (skips the data pass).
        example_inputs: inputs to count the (unchanged) dense MACs; default: the first batch.
        ignored_layers: module names or modules left dense.
        include_output: also prune the output layer (the last Conv/Linear to run; default False).
        observe, samples_per_class, num_projections, seed, loss_fn, unpack, max_batches, distributed,
            memory_budget, verbose: passed to :func:`lightning_fair.compute_scores` (the same pass also
            gives U and R; smaller ``samples_per_class``/``num_projections`` make it cheaper).
        inplace: zero the weights of ``model`` itself (default) or of a deep copy.

    Returns:
        :class:`ConnectionPruneResult`. The zeros are written into the weight tensors (the same
        parameter objects, so optimizers stay valid); further training can make them non-zero again.

    Raises:
        ValueError: a bad option or scores without screening statistics, before anything changes.

    Example:
        >>> import torch
        >>> from lightning_fair import prune_connections
        >>> from lightning_fair.demos import zoo
        >>> data = [(torch.randn(40, 1, 8, 8), torch.arange(40) % 10)]
        >>> result = prune_connections(zoo.mlp(in_features=64), data, sparsity=0.5, samples_per_class=2)
        >>> round(result.report.weight_sparsity, 3)
        0.5
    """
    check_screening_weight(screening_weight)
    connection_masks({}, sparsity, allocation)  # validates sparsity and allocation
    resolve_budget(memory_budget)
    if dataloader is None and scores is None:
        raise ValueError("pass a calibration dataloader, or scores=compute_scores(..., criterion='screening')")
    ignored = resolve_ignored(model, ignored_layers)
    if example_inputs is None and dataloader is not None:
        example_inputs = first_inputs(dataloader, unpack)
    if scores is None:
        scores = compute_scores(
            model,
            dataloader,
            samples_per_class=samples_per_class,
            num_projections=num_projections,
            observe=observe,
            seed=seed,
            loss_fn=loss_fn,
            unpack=unpack,
            ignored_layers=ignored,
            max_batches=max_batches,
            distributed=distributed,
            memory_budget=memory_budget,
            verbose=verbose,
            criterion="screening",
        )
    if not scores.input_f_statistic:
        raise ValueError(
            "these scores carry no input F-statistics; compute them with compute_scores(..., criterion='screening')"
        )
    names = [
        n for n, m in candidate_layers(model, ignored).items() if isinstance(getattr(m, "weight", None), torch.Tensor)
    ]
    if not include_output:
        names = [n for n in names if n != scores.output_layer]
    skipped = [n for n in names if n not in scores.input_f_statistic]
    names = [n for n in names if n in scores.input_f_statistic]
    if not inplace:
        model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    per_connection = {n: connection_scores(modules[n], scores.input_f_statistic[n], screening_weight) for n in names}
    masks = connection_masks(per_connection, sparsity, allocation)

    zeros_before = {n: int((modules[n].weight == 0).sum()) for n in names}
    params = {id(p): p for p in model.parameters()}.values()
    zero_before = sum(int((p == 0).sum()) for p in params)
    originals = {n: modules[n].weight.detach().clone() for n in names}
    try:
        with torch.no_grad():
            for n in names:
                modules[n].weight.mul_(masks[n].to(modules[n].weight.device, modules[n].weight.dtype))
        macs = measure(model, example_inputs)[0] if example_inputs is not None else None
    except BaseException:
        with torch.no_grad():
            for n, weight in originals.items():
                modules[n].weight.copy_(weight)
        raise
    rows = [
        SparsityRow(
            n, modules[n].weight.numel(), zeros_before[n], int((~masks[n]).sum()), int((modules[n].weight == 0).sum())
        )
        for n in names
    ]
    notes = [f"{n}: left dense (it runs more than once per forward or its input width varies)" for n in skipped]
    report = SparsityReport(
        layers=rows,
        params=sum(p.numel() for p in params),
        zero_params_before=zero_before,
        zero_params_after=sum(int((p == 0).sum()) for p in params),
        macs=macs,
        sparsity=float(sparsity),
        options={"criterion": "screening", "allocation": allocation, "screening_weight": float(screening_weight)},
        notes=notes,
    )
    return ConnectionPruneResult(
        model=model, scores=scores, report=report, masks={n: m.cpu() for n, m in masks.items()}
    )


#: How unstructured pruning spreads the sparsity: one threshold over all layers, or the same
#: fraction of every layer.
CONNECTION_ALLOCATIONS = ("global", "layer")


def connection_masks(
    scores: Dict[str, torch.Tensor], sparsity: float, allocation: str = "global"
) -> Dict[str, torch.Tensor]:
    """Keep-masks (bool, shaped like each score tensor) removing exactly ``floor(sparsity * n)`` connections.

    ``"global"``: the lowest-scoring ``floor(sparsity * N)`` of all ``N`` connections of all layers;
    ``"layer"``: the lowest ``floor(sparsity * n_l)`` of each layer. Ties go in layer order, then
    weight order (a stable sort).

    Example:
        >>> m = connection_masks({"a": torch.tensor([3., 1.]), "b": torch.tensor([2., 4.])}, 0.5)
        >>> {k: v.tolist() for k, v in m.items()}
        {'a': [True, False], 'b': [False, True]}
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity is the fraction of connections to remove, in [0, 1), got {sparsity!r}")
    if allocation not in CONNECTION_ALLOCATIONS:
        raise ValueError(
            f"allocation must be one of {CONNECTION_ALLOCATIONS} for unstructured pruning, got {allocation!r}"
        )

    def lowest(values: torch.Tensor, k: int) -> torch.Tensor:
        keep = torch.ones(values.numel(), dtype=torch.bool, device=values.device)
        keep[torch.sort(values.flatten(), stable=True).indices[:k]] = False
        return keep

    if allocation == "layer":
        return {n: lowest(s, _count(sparsity, s.numel())).reshape(s.shape) for n, s in scores.items()}
    names = list(scores)
    flat = torch.cat([scores[n].flatten().cpu() for n in names]) if names else torch.zeros(0)
    keep = lowest(flat, _count(sparsity, flat.numel()))
    masks, start = {}, 0
    for n in names:
        size = scores[n].numel()
        masks[n] = keep[start : start + size].reshape(scores[n].shape).to(scores[n].device)
        start += size
    return masks


def _count(fraction: float, n: int) -> int:
    return min(int(math.floor(float(fraction) * n + 1e-9)), n)
