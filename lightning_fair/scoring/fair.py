"""FAIR scores: the utilization score U and the reconstruction score R of every unit.

``compute_scores`` runs the statistics pass once; the :class:`FairScores` it returns
answers any tolerance, ratio or MACs target afterwards without touching data again.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from ..collect.collector import StatisticsCollector
from ..collect.memory import resolve_budget
from ..config import RECONSTRUCTIONS, PruneConfig, configure
from ..runtime.batches import default_unpack
from ..runtime.guards import on_uncompiled
from ..units.channels import consumer_of, resolve_ignored
from .distances import max_pairwise_w1
from .screening import f_statistic, filter_norms, screening_scores

__all__ = ["FairScores", "compute_scores", "RECONSTRUCTIONS"]


@dataclass
class FairScores:
    """Per-layer FAIR scores, keyed by the layer's qualified name in the model.

    Attributes:
        utilization: ``{layer: U [C]}``, max over class pairs of the (sliced) W1 distance.
        reconstruction: ``{layer: R [C]}``, ``|Σ dL/dz · z|`` over the calibration data
            (``config["reconstruction"] == "sum_of_abs"``: ``Σ_samples |Σ_positions dL/dz · z|``).
        taylor_sum: ``{layer: [C]}``, the signed sum before the absolute value.
        observed: ``{layer: "output" | "norm" | "activation"}``, the tensor U observed.
        output_layer: the model's output layer (never pruned).
        class_counts: images per class used for U.
        input_means: ``{Conv/Linear: mean input [C_in, *spatial] or [in_features]}`` over the
            calibration data, for mean-replacement compensation (every Conv/Linear that ran once
            per forward, scored or not).
        config: how the scores were made (samples_per_class, num_projections, observe, seed, num_batches),
            and the model's mean loss and accuracy on the calibration batches while scoring.
        f_statistic: ``{layer: F [C]}`` (``criterion="screening"`` only), the one-way ANOVA F-statistic across
            classes of each unit's spatially averaged observed tensor (:mod:`lightning_fair.scoring.screening`).
        filter_norm: ``{layer: [C]}`` (``criterion="screening"`` only), the L2 norm of each unit's filter.
        input_f_statistic: ``{Conv/Linear: F [C_in]}`` (``criterion="screening"`` only), the F-statistic of
            each input feature / spatially averaged input channel, for unstructured screening.
        input_utilization: ``{Conv/Linear: U [C_in]}``, the utilization score of each input channel of
            every Conv/Linear (scored or not, the output layer too) whose input is not simply one scored
            layer's observed tensor (it comes through a residual add, a pooling, a concatenation, ...),
            in execution order: what the consumers of channels shared through residual adds see
            (used for coupled groups, :mod:`lightning_fair.removal.planner`).
    """

    utilization: Dict[str, torch.Tensor]
    reconstruction: Dict[str, torch.Tensor]
    taylor_sum: Dict[str, torch.Tensor] = field(default_factory=dict)
    observed: Dict[str, str] = field(default_factory=dict)
    output_layer: str = ""
    class_counts: List[int] = field(default_factory=list)
    config: Dict[str, Union[int, str]] = field(default_factory=dict)
    input_means: Dict[str, torch.Tensor] = field(default_factory=dict)
    f_statistic: Dict[str, torch.Tensor] = field(default_factory=dict)
    filter_norm: Dict[str, torch.Tensor] = field(default_factory=dict)
    input_f_statistic: Dict[str, torch.Tensor] = field(default_factory=dict)
    input_utilization: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def layers(self) -> List[str]:
        """Scored layer names in execution order."""
        return list(self.utilization)

    def __getitem__(self, layer: str) -> Dict[str, torch.Tensor]:
        return {"utilization": self.utilization[layer], "reconstruction": self.reconstruction[layer]}

    def screening(self, weight: float = 0.5) -> Dict[str, torch.Tensor]:
        """``{layer: screening score [C]}``, ``weight * F / mean F + (1 - weight) * m / mean m`` per
        layer (scores computed with ``criterion="screening"``; see
        :func:`lightning_fair.scoring.screening.screening_scores`)."""
        return screening_scores(self, weight)

    def __repr__(self) -> str:
        units = sum(u.numel() for u in self.utilization.values())
        return f"FairScores({len(self.utilization)} layers, {units} units, observe={self.config.get('observe')!r})"

    # ------------------------------------------------------------ plain data at rest
    def state_dict(self) -> dict:
        """Plain tensors, strings and numbers only: safe for ``torch.load(weights_only=True)``."""
        return {
            "format": "lightning_fair.FairScores/1",
            "layers": self.layers,
            "utilization": [self.utilization[n].detach().cpu() for n in self.layers],
            "reconstruction": [self.reconstruction[n].detach().cpu() for n in self.layers],
            "taylor_sum": [self.taylor_sum[n].detach().cpu() for n in self.layers] if self.taylor_sum else [],
            "observed": [self.observed.get(n, "") for n in self.layers],
            "output_layer": self.output_layer,
            "class_counts": list(self.class_counts),
            "config": dict(self.config),
            "input_means": {name: mean.detach().cpu() for name, mean in self.input_means.items()},
            "f_statistic": [self.f_statistic[n].detach().cpu() for n in self.layers] if self.f_statistic else [],
            "filter_norm": [self.filter_norm[n].detach().cpu() for n in self.layers] if self.filter_norm else [],
            "input_f_statistic": {name: f.detach().cpu() for name, f in self.input_f_statistic.items()},
            "input_utilization_layers": list(self.input_utilization),
            "input_utilization": [u.detach().cpu() for u in self.input_utilization.values()],
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "FairScores":
        """Inverse of :meth:`state_dict`."""
        if not isinstance(state, dict) or state.get("format") != "lightning_fair.FairScores/1":
            raise ValueError("not a lightning_fair FairScores state (expected format 'lightning_fair.FairScores/1')")
        names = list(state["layers"])
        return cls(
            utilization=dict(zip(names, state["utilization"])),
            reconstruction=dict(zip(names, state["reconstruction"])),
            taylor_sum=dict(zip(names, state["taylor_sum"])) if state["taylor_sum"] else {},
            observed={n: o for n, o in zip(names, state["observed"]) if o},
            output_layer=state["output_layer"],
            class_counts=list(state["class_counts"]),
            config=dict(state["config"]),
            input_means=dict(state.get("input_means", {})),
            # absent from scores saved before the screening criterion existed
            f_statistic=dict(zip(names, state["f_statistic"])) if state.get("f_statistic") else {},
            filter_norm=dict(zip(names, state["filter_norm"])) if state.get("filter_norm") else {},
            input_f_statistic=dict(state.get("input_f_statistic", {})),
            # absent from scores saved before coupled groups used their consumers' inputs
            input_utilization=dict(zip(state.get("input_utilization_layers", []), state.get("input_utilization", []))),
        )

    def save(self, path) -> None:
        """Save as plain tensors. Example: ``scores.save("scores.pt"); FairScores.load("scores.pt")``."""
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path) -> "FairScores":
        """Load scores written by :meth:`save` (with ``weights_only=True``)."""
        return cls.from_state_dict(torch.load(path, weights_only=True, map_location="cpu"))


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
            criterion needs: ``FairScores.f_statistic``, ``filter_norm``, ``input_f_statistic``;
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
        observe=config.observe,
        seed=config.seed,
        loss_fn=loss_fn,
        unpack=unpack,
        logits=logits,
        ignored=ignored,
        distributed=distributed,
        prune_embedding=config.prune_embedding,
    )
    collector = StatisticsCollector(model, memory_budget=budget, screening=config.criterion == "screening", **options)
    collector.on_plan = lambda estimate: _announce(estimate, budget, collector.device.type, verbose)
    collector.run(dataloader, max_batches=max_batches)
    scores = scores_from_statistics(collector, reconstruction=config.reconstruction)
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
            target[start:stop] = _utilization(later, name)
        del later
    short = {
        k: int(collector.class_counts[k])
        for k in collector.class_samples.chosen.tolist()
        if 0 < collector.class_counts[k] < samples_per_class
    }
    if short:
        warnings.warn(
            f"{len(short)} class(es) have fewer calibration samples than samples_per_class={samples_per_class} "
            f"(class: samples {dict(list(short.items())[:8])}); their utilization distances use what there is. "
            "Pass more calibration data or a smaller samples_per_class to silence this.",
            stacklevel=3,
        )  # past the on_uncompiled wrapper: the caller's line
    scores.config["passes"] = len(collector.chunks)
    scores.config["memory_estimate"] = int(collector.estimate.total_bytes)
    return scores


def _announce(estimate, budget: Optional[int], device: str, verbose: bool) -> None:
    """After the first batch, before the rest of the pass: print the estimate (``verbose``), and
    warn when the setting would take far too long, naming the options that bring it down."""
    threads = torch.get_num_threads()
    if verbose:
        print(estimate.describe(budget, device, threads), flush=True)
    message = estimate.cost_warning(budget, device, threads)
    if message:
        warnings.warn(message, stacklevel=5)


def _utilization(collector: StatisticsCollector, name: str) -> torch.Tensor:
    """U of the units of ``name`` whose samples this collector holds (its channel range)."""
    return max_pairwise_w1(collector.class_samples.per_class(name)).cpu().float()


def scores_from_statistics(collector: StatisticsCollector, reconstruction: str = "abs_of_sum") -> FairScores:
    """Turn collected statistics into U and R (method.md §1.1-1.2). Units outside the
    collector's channel ranges (a split collection) get U = 0 until their pass fills them in."""
    counts = collector.class_counts
    collector.class_samples.present_classes()
    utilization, protection, taylor, observed = {}, {}, {}, {}
    f_stat, norms, inputs_u = {}, {}, {}
    for name, stats in collector.layers.items():
        consumer = consumer_of(name)
        u = utilization[name] = torch.zeros(stats.num_units)
        if consumer is not None:
            u = inputs_u[consumer] = utilization.pop(name)
        if name in collector.channels:
            start, stop = collector.channels[name]
            u[start:stop] = _utilization(collector, name)
            collector.class_samples.release(name)  # scored: free the samples before the next layer
        if consumer is not None:
            continue
        signed = collector.taylor.signed[name]
        taylor[name] = signed.cpu()
        r = signed.abs() if reconstruction == "abs_of_sum" else collector.taylor.absolute[name]
        protection[name] = r.cpu().float()
        observed[name] = stats.observed
        moments = collector.screening_moments.layers.get(name) if collector.screening_moments else None
        if moments is not None:
            f_stat[name] = f_statistic(*moments.tensors()).cpu()
            norms[name] = filter_norms(collector.unit_module(name)).cpu()
    for alias, first in collector.input_aliases.items():  # consumers reading the same tensor share its U
        if first in inputs_u:
            inputs_u[alias] = inputs_u[first]
    inputs_u = {name: inputs_u[name] for name in dict.fromkeys(collector.input_order) if name in inputs_u}
    inputs = {name: f_statistic(*moments.tensors()).cpu() for name, moments in collector.input_class_moments().items()}
    return FairScores(
        utilization=utilization,
        reconstruction=protection,
        taylor_sum=taylor,
        observed=observed,
        output_layer=collector.output_layer,
        class_counts=counts.tolist(),
        config={
            "samples_per_class": int(collector.samples_per_class),
            "num_projections": int(collector.num_projections),
            "max_classes": collector.max_classes,
            "classes_compared": int(collector.class_samples.chosen.numel()),
            "observe": collector.observe,
            "reconstruction": reconstruction,
            "seed": int(collector.seed),
            "num_batches": int(collector.num_batches),
            "calibration_loss": collector.tallies.mean_loss,
            "calibration_accuracy": collector.tallies.accuracy,
        },
        input_means=collector.input_means(),
        f_statistic=f_stat,
        filter_norm=norms,
        input_f_statistic=inputs,
        input_utilization=inputs_u,
    )
