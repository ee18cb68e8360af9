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
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Literal, Optional, Tuple, Union, get_args

import torch
from torch import nn

from ..config import DEFAULT_BUDGET, Observe, PruneConfig, check_screening_weight, unknown_names
from ..pipeline.report import si_count
from ..runtime.batches import default_unpack, first_inputs
from ..scoring.compute import compute_scores
from ..scoring.fair import FairScores
from ..scoring.screening import ScreeningScores, connection_scores
from ..units.channels import candidate_layers, resolve_ignored
from ..units.cost import measure

__all__ = [
    "ConnectionConfig",
    "ConnectionPruneResult",
    "SparsityReport",
    "SparsityRow",
    "configure_connections",
    "prune_connections",
]


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


#: How unstructured pruning spreads the sparsity: one threshold over all layers (``"global"``), or the
#: same fraction of every layer (``"layer"``).
ConnectionAllocation = Literal["global", "layer"]
CONNECTION_ALLOCATIONS: Tuple[str, ...] = get_args(ConnectionAllocation)

#: The arguments of :func:`prune_connections` that are not options (runtime context and callables).
RUNTIME_ARGUMENTS = ("scores", "example_inputs", "loss_fn", "unpack", "inplace", "distributed", "verbose")


@dataclass(frozen=True)
class ConnectionConfig:
    """Every plain-data option of :func:`prune_connections`, validated when the config is made.

    Args:
        sparsity: required: the fraction of connections to set to zero, in [0, 1): exactly
            ``floor(sparsity * N)`` of the ``N`` weights of the pruned layers (``"global"``) or of
            each layer (``"layer"``).
        allocation: ``"global"`` (one threshold on the layer-normalised scores of all layers) or
            ``"layer"`` (the same fraction of every layer).
        screening_weight: weight of the F term against the magnitude term, in [0, 1] (1: F only,
            0: layer-normalised magnitude only).
        ignored_layers: module names or modules left dense (checked against the model when pruning).
        include_output: also prune the output layer (the last Conv/Linear to run; default False).
        observe, samples_per_class, num_projections, seed, max_batches, memory_budget: the statistics
            pass, as the fields of :class:`~lightning_fair.PruneConfig` of the same names (the same
            pass also gives U and R; smaller ``samples_per_class``/``num_projections`` make it
            cheaper); unused with precomputed ``scores``.

    Raises:
        ValueError: a missing ``sparsity`` or a bad value; the message names the field and the fix.

    Example:
        >>> ConnectionConfig(sparsity=0.8, allocation="layer").screening_weight
        0.5
        >>> ConnectionConfig(sparsity=1.5)
        Traceback (most recent call last):
        ...
        ValueError: sparsity is the fraction of connections to remove, in [0, 1), got 1.5
    """

    sparsity: Optional[float] = None
    allocation: ConnectionAllocation = "global"
    screening_weight: float = 0.5
    ignored_layers: Optional[Iterable[Union[str, nn.Module]]] = None
    include_output: bool = False
    observe: Observe = "activation"
    samples_per_class: int = 32
    num_projections: Union[int, Literal["auto"]] = "auto"
    seed: int = 0
    max_batches: Optional[int] = None
    memory_budget: Union[int, str, None] = DEFAULT_BUDGET

    def __post_init__(self) -> None:
        if self.sparsity is None:
            raise ValueError(
                "sparsity is required: the fraction of connections to set to zero, in [0, 1), "
                "e.g. prune_connections(model, loader, sparsity=0.5) or ConnectionConfig(sparsity=0.5)"
            )
        check_sparsity(self.sparsity)
        check_allocation(self.allocation)
        check_screening_weight(self.screening_weight)
        if not isinstance(self.include_output, bool):
            raise ValueError(f"include_output must be True or False, got {self.include_output!r}")
        layers = self.ignored_layers
        if isinstance(layers, Iterator):  # a generator: keep its items, it can be read once only
            layers = list(layers)
            object.__setattr__(self, "ignored_layers", layers)
        if layers is not None and not isinstance(layers, (str, nn.Module)):
            if not isinstance(layers, Iterable) or not all(isinstance(item, (str, nn.Module)) for item in layers):
                raise ValueError(
                    f"ignored_layers must be a module name, a module, or a list of them (or None), got {layers!r}"
                )
        self.scoring()  # the statistics options, validated as PruneConfig validates them

    def scoring(self) -> PruneConfig:
        """The :class:`~lightning_fair.PruneConfig` of the statistics pass (``criterion="screening"``):
        what :func:`~lightning_fair.compute_scores` is given (``ignored_layers`` are resolved on the model)."""
        return PruneConfig(
            criterion="screening",
            screening_weight=self.screening_weight,
            observe=self.observe,
            samples_per_class=self.samples_per_class,
            num_projections=self.num_projections,
            seed=self.seed,
            max_batches=self.max_batches,
            memory_budget=self.memory_budget,
        )


CONNECTION_FIELDS = tuple(f.name for f in dataclasses.fields(ConnectionConfig))


def configure_connections(config: Optional[ConnectionConfig] = None, **overrides: Any) -> ConnectionConfig:
    """``config`` (default: ``ConnectionConfig()``) with the keyword ``overrides`` applied, validated.

    Raises:
        TypeError: a name that is not a field of :class:`ConnectionConfig` (with the closest field),
            or a ``config`` that is not a ``ConnectionConfig``.
        ValueError: a bad value (:class:`ConnectionConfig`).

    Example:
        >>> configure_connections(ConnectionConfig(sparsity=0.5), allocation="layer").allocation
        'layer'
        >>> configure_connections(sparsty=0.5)
        Traceback (most recent call last):
        ...
        TypeError: prune_connections: unknown option 'sparsty' (did you mean 'sparsity'?); the options are ...
    """
    unknown = [name for name in overrides if name not in CONNECTION_FIELDS]
    if unknown:
        raise TypeError(
            f"prune_connections: unknown option{'s' if len(unknown) > 1 else ''} "
            f"{unknown_names(unknown, CONNECTION_FIELDS + ('dataloader', 'config') + RUNTIME_ARGUMENTS)}; the options "
            f"are the fields of ConnectionConfig: {', '.join(CONNECTION_FIELDS)} (and the keyword arguments "
            f"{', '.join(RUNTIME_ARGUMENTS)})"
        )
    if config is None:
        return ConnectionConfig(**overrides)
    if not isinstance(config, ConnectionConfig):
        raise TypeError(
            f"config must be a lightning_fair.ConnectionConfig, got {type(config).__name__}; "
            "pass options as keywords, e.g. prune_connections(model, loader, sparsity=0.5)"
        )
    return dataclasses.replace(config, **overrides) if overrides else config


@dataclass
class ConnectionPruneResult:
    """What :func:`prune_connections` returns: the model (pruned in place unless ``inplace=False``),
    the scores used, the report, the keep-mask of every pruned layer's weight (True: kept) and the
    :class:`ConnectionConfig` used."""

    model: nn.Module
    scores: FairScores
    report: SparsityReport
    masks: Dict[str, torch.Tensor]
    config: Optional[ConnectionConfig] = None


def prune_connections(
    model: nn.Module,
    dataloader: Optional[Iterable] = None,
    config: Optional[ConnectionConfig] = None,
    *,
    scores: Optional[FairScores] = None,
    example_inputs=None,
    loss_fn: Optional[Callable] = None,
    unpack: Callable = default_unpack,
    inplace: bool = True,
    distributed: bool = False,
    verbose: bool = False,
    **options: Any,
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
        config: a :class:`ConnectionConfig` (``sparsity``, required, ``allocation``,
            ``screening_weight``, ``ignored_layers``, ``include_output`` and the statistics options
            ``observe``, ``samples_per_class``, ``num_projections``, ``seed``, ``max_batches``,
            ``memory_budget``).
        **options: any field of :class:`ConnectionConfig`, overriding ``config``
            (``prune_connections(model, loader, sparsity=0.5)``); an unknown name is a TypeError
            that names the closest field.
        scores: precomputed ``compute_scores(..., criterion='screening')`` output (skips the data pass).
        example_inputs: inputs to count the (unchanged) dense MACs; default: the first batch.
        loss_fn, unpack, distributed, verbose: passed to :func:`lightning_fair.compute_scores`.
        inplace: zero the weights of ``model`` itself (default) or of a deep copy.

    Returns:
        :class:`ConnectionPruneResult`. The zeros are written into the weight tensors (the same
        parameter objects, so optimizers stay valid); further training can make them non-zero again.

    Raises:
        ValueError: a bad or missing option, or scores without screening statistics, before anything changes.
        TypeError: an option that is not a field of :class:`ConnectionConfig`, before anything changes.

    Example:
        >>> import torch
        >>> from lightning_fair import ConnectionConfig, prune_connections
        >>> from lightning_fair.demos import zoo
        >>> data = [(torch.randn(40, 1, 8, 8), torch.arange(40) % 10)]
        >>> result = prune_connections(zoo.mlp(in_features=64), data, sparsity=0.5, samples_per_class=2)
        >>> round(result.report.weight_sparsity, 3)
        0.5
        >>> config = ConnectionConfig(sparsity=0.5, allocation="layer", samples_per_class=2)
        >>> round(prune_connections(zoo.mlp(in_features=64), data, config).report.weight_sparsity, 3)
        0.5
    """
    config = configure_connections(config, **options)
    sparsity, allocation = config.sparsity, config.allocation
    assert sparsity is not None  # ConnectionConfig refuses a missing sparsity
    if dataloader is None and scores is None:
        raise ValueError("pass a calibration dataloader, or scores=compute_scores(..., criterion='screening')")
    ignored = resolve_ignored(model, config.ignored_layers)
    if example_inputs is None and dataloader is not None:
        example_inputs = first_inputs(dataloader, unpack)
    if scores is None:
        scores = compute_scores(
            model,
            dataloader,
            config.scoring(),
            ignored_layers=ignored,
            loss_fn=loss_fn,
            unpack=unpack,
            distributed=distributed,
            verbose=verbose,
        )
    if not isinstance(scores, ScreeningScores) or not scores.input_f_statistic:
        raise ValueError(
            "these scores carry no input F-statistics; compute them with compute_scores(..., criterion='screening')"
        )
    names = [
        n for n, m in candidate_layers(model, ignored).items() if isinstance(getattr(m, "weight", None), torch.Tensor)
    ]
    if not config.include_output:
        names = [n for n in names if n != scores.output_layer]
    skipped = [n for n in names if n not in scores.input_f_statistic]
    names = [n for n in names if n in scores.input_f_statistic]
    if not inplace:
        model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    per_connection = {
        n: connection_scores(modules[n], scores.input_f_statistic[n], config.screening_weight) for n in names
    }
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
        options={
            "criterion": "screening",
            "allocation": allocation,
            "screening_weight": float(config.screening_weight),
        },
        notes=notes,
    )
    return ConnectionPruneResult(
        model=model, scores=scores, report=report, masks={n: m.cpu() for n, m in masks.items()}, config=config
    )


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
    check_sparsity(sparsity)
    check_allocation(allocation)

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


def check_sparsity(sparsity: float) -> float:
    """``sparsity`` must be a number in [0, 1) (the fraction of connections to remove); return it as a float."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity is the fraction of connections to remove, in [0, 1), got {sparsity!r}")
    return float(sparsity)


def check_allocation(allocation: str) -> None:
    """``allocation`` must be one of :data:`CONNECTION_ALLOCATIONS`."""
    if allocation not in CONNECTION_ALLOCATIONS:
        raise ValueError(
            f"allocation must be one of {CONNECTION_ALLOCATIONS} for unstructured pruning, got {allocation!r}"
        )


def _count(fraction: float, n: int) -> int:
    return min(int(math.floor(float(fraction) * n + 1e-9)), n)
