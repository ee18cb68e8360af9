"""FAIR's criterion: the utilization score U and the reconstruction score R of every unit.

:class:`FairCriterion` turns the statistics of one pass into :class:`FairScores` (U, R and what
removal and repair read besides) and ranks them (U removes, R protects). The pass itself is run by
:func:`lightning_fair.scoring.compute.compute_scores`; the scores then answer any tolerance, ratio
or MACs target without touching data again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Union

import torch

from ..collect.collector import StatisticsCollector
from ..config import RECONSTRUCTIONS, PruneConfig
from ..units.channels import consumer_of
from .criterion import CriterionScores
from .distances import class_pair_w1

__all__ = ["FairScores", "FairCriterion", "scores_from_statistics", "layer_utilization", "RECONSTRUCTIONS"]


@dataclass
class FairScores:
    """Per-layer FAIR scores, keyed by the layer's qualified name in the model.

    Attributes:
        utilization: ``{layer: U [C]}``, max (``config["pairs"] == "mean"``: mean) over class pairs of
            the (sliced) W1 distance.
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
        input_utilization: ``{Conv/Linear: U [C_in]}``, the utilization score of each input channel of
            every Conv/Linear (scored or not, the output layer too) whose input is not simply one scored
            layer's observed tensor (it comes through a residual add, a pooling, a concatenation, ...),
            in execution order: what the consumers of channels shared through residual adds see
            (used for coupled groups, :mod:`lightning_fair.removal.planner`).
        peaks: ``{layer: [C]}``, each unit's largest ``|value|`` of the tensor U observed, over the
            calibration data (:mod:`lightning_fair.collect.peaks`): what finds the units with massive
            activations (:mod:`lightning_fair.scoring.massive`).
    """

    utilization: Dict[str, torch.Tensor]
    reconstruction: Dict[str, torch.Tensor]
    taylor_sum: Dict[str, torch.Tensor] = field(default_factory=dict)
    observed: Dict[str, str] = field(default_factory=dict)
    output_layer: str = ""
    class_counts: List[int] = field(default_factory=list)
    config: Dict[str, Union[int, str]] = field(default_factory=dict)
    input_means: Dict[str, torch.Tensor] = field(default_factory=dict)
    input_utilization: Dict[str, torch.Tensor] = field(default_factory=dict)
    peaks: Dict[str, torch.Tensor] = field(default_factory=dict)

    #: the criterion whose scores these are; subclasses that carry more (another criterion's
    #: statistics of the same pass) name theirs and are found again by :meth:`from_state_dict`
    kind: ClassVar[str] = "fair"
    kinds: ClassVar[Dict[str, type]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        FairScores.kinds[cls.kind] = cls

    @property
    def layers(self) -> List[str]:
        """Scored layer names in execution order."""
        return list(self.utilization)

    def __getitem__(self, layer: str) -> Dict[str, torch.Tensor]:
        return {"utilization": self.utilization[layer], "reconstruction": self.reconstruction[layer]}

    def __repr__(self) -> str:
        units = sum(u.numel() for u in self.utilization.values())
        return f"FairScores({len(self.utilization)} layers, {units} units, observe={self.config.get('observe')!r})"

    # ------------------------------------------------------------ plain data at rest
    def state_dict(self) -> dict:
        """Plain tensors, strings and numbers only: safe for ``torch.load(weights_only=True)``."""
        return {
            "format": "lightning_fair.FairScores/1",
            "kind": self.kind,
            "layers": self.layers,
            "utilization": [self.utilization[n].detach().cpu() for n in self.layers],
            "reconstruction": [self.reconstruction[n].detach().cpu() for n in self.layers],
            "taylor_sum": [self.taylor_sum[n].detach().cpu() for n in self.layers] if self.taylor_sum else [],
            "observed": [self.observed.get(n, "") for n in self.layers],
            "output_layer": self.output_layer,
            "class_counts": list(self.class_counts),
            "config": dict(self.config),
            "input_means": {name: mean.detach().cpu() for name, mean in self.input_means.items()},
            "input_utilization_layers": list(self.input_utilization),
            "input_utilization": [u.detach().cpu() for u in self.input_utilization.values()],
            "peaks": {name: peak.detach().cpu() for name, peak in self.peaks.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "FairScores":
        """Inverse of :meth:`state_dict`: the class that wrote the state (``kind``) reads it back."""
        if not isinstance(state, dict) or state.get("format") != "lightning_fair.FairScores/1":
            raise ValueError("not a lightning_fair FairScores state (expected format 'lightning_fair.FairScores/1')")
        # states written before "kind" existed: the screening criterion's are the ones with F-statistics
        kind = state.get("kind") or ("screening" if state.get("f_statistic") else "fair")
        owner = FairScores.kinds.get(kind, FairScores)
        if owner is not cls and issubclass(owner, cls):
            return owner.from_state_dict(state)
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
            # absent from scores saved before coupled groups used their consumers' inputs
            input_utilization=dict(zip(state.get("input_utilization_layers", []), state.get("input_utilization", []))),
            peaks=dict(state.get("peaks", {})),  # absent from scores saved before massive activations were kept
        )

    def save(self, path) -> None:
        """Save as plain tensors. Example: ``scores.save("scores.pt"); FairScores.load("scores.pt")``."""
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path) -> "FairScores":
        """Load scores written by :meth:`save` (with ``weights_only=True``)."""
        return cls.from_state_dict(torch.load(path, weights_only=True, map_location="cpu"))


def layer_utilization(collector: StatisticsCollector, name: str) -> torch.Tensor:
    """U of the units of ``name`` whose samples this collector holds (its channel range)."""
    return class_pair_w1(collector.class_samples.per_class(name), pairs=collector.pairs).cpu().float()


def scores_from_statistics(collector: StatisticsCollector, reconstruction: str = "abs_of_sum") -> FairScores:
    """Turn collected statistics into U and R (method.md §1.1-1.2). Units outside the
    collector's channel ranges (a split collection) get U = 0 until their pass fills them in."""
    counts = collector.class_counts
    collector.class_samples.present_classes()
    utilization, protection, taylor, observed, inputs_u = {}, {}, {}, {}, {}
    for name, stats in collector.layers.items():
        consumer = consumer_of(name)
        u = utilization[name] = torch.zeros(stats.num_units)
        if consumer is not None:
            u = inputs_u[consumer] = utilization.pop(name)
        if name in collector.channels:
            start, stop = collector.channels[name]
            u[start:stop] = layer_utilization(collector, name)
            collector.class_samples.release(name)  # scored: free the samples before the next layer
        if consumer is not None:
            continue
        signed = collector.taylor.signed[name]
        taylor[name] = signed.cpu()
        r = signed.abs() if reconstruction == "abs_of_sum" else collector.taylor.absolute[name]
        protection[name] = r.cpu().float()
        observed[name] = stats.observed
    for alias, first in collector.input_aliases.items():  # consumers reading the same tensor share its U
        if first in inputs_u:
            inputs_u[alias] = inputs_u[first]
    inputs_u = {name: inputs_u[name] for name in dict.fromkeys(collector.input_order) if name in inputs_u}
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
            # next-token prediction: what a class was (None: class labels)
            "token_classes": collector.token_classes if collector.next_token else None,
            "pairs": collector.pairs,
            "observe": collector.observe,
            "reconstruction": reconstruction,
            "seed": int(collector.seed),
            "num_batches": int(collector.num_batches),
            "calibration_loss": collector.tallies.mean_loss,
            "calibration_accuracy": collector.tallies.accuracy,
        },
        input_means=collector.input_means(),
        input_utilization=inputs_u,
        peaks={name: peak for name, peak in collector.peaks.result().items() if name in protection},
    )


class FairCriterion:
    """FAIR (method.md §1): U removes, R protects, coupled groups ranked by their consumers' input U.

    A criterion (:class:`lightning_fair.scoring.criterion.Criterion`) says what the statistics pass
    must collect, turns the statistics into its scores and ranks them for allocation and removal.
    """

    name = "fair"
    #: the statistics pass collects U's samples, R's sums and the mean inputs; nothing more
    collects_screening = False

    def scores(self, collector: StatisticsCollector, config: PruneConfig) -> FairScores:
        return scores_from_statistics(collector, reconstruction=config.reconstruction)

    def rank(self, scores: FairScores, config: PruneConfig) -> CriterionScores:
        return CriterionScores.of(scores)

    def describe(self, options: dict) -> str:
        observed = OBSERVED_WORDS.get(options.get("observe"), options.get("observe"))
        pairs = "mean over class pairs, " if options.get("pairs") == "mean" else ""
        return f"units ranked by U (class separation, {pairs}{observed})"


#: how the pipeline line of a report names what U observes
OBSERVED_WORDS = {
    "output": "on the layer's output",
    "norm": "after the following norm layer",
    "activation": "after the following activation",
}
