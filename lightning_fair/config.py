"""``PruneConfig``: every plain-data pruning option, declared and validated in one place.

:func:`lightning_fair.prune`, :func:`lightning_fair.compute_scores`, the Lightning callback and
the command line all take a ``PruneConfig`` (or keyword overrides of its fields), so an option is
written once: here, with its meaning. Callables and runtime context (``unpack``, ``loss_fn``,
``distributed``, ``example_inputs``, ``scores``, ``inplace``) stay ordinary arguments of the
functions that use them.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Tuple, Union, get_args

__all__ = ["PIPELINE_OPTIONS", "PruneConfig", "configure"]


# ---------------------------------------------------------------------- vocabularies
# Each option's choices, declared once as a Literal type (what IDEs, mypy and jsonargparse read) and
# as the tuple of its values (what the validation and the error messages read).

#: Where the utilization score observes a unit: its layer's output, after the following norm,
#: or after the following nonlinearity (falling back to the furthest point reached).
Observe = Literal["output", "norm", "activation"]
OBSERVATION_POINTS: Tuple[str, ...] = get_args(Observe)

#: How R aggregates dL/dz * z: the paper's absolute value of the total (``"abs_of_sum"``),
#: or the sum over samples of each sample's absolute value (``"sum_of_abs"``).
Reconstruction = Literal["abs_of_sum", "sum_of_abs"]
RECONSTRUCTIONS: Tuple[str, ...] = get_args(Reconstruction)

#: How U combines the Wasserstein distances of the class pairs: the largest (``"max"``, the
#: paper's) or their mean over all pairs (``"mean"``; docs/method.md, "Class pairs").
PairsName = Literal["max", "mean"]
PAIRS: Tuple[str, ...] = get_args(PairsName)

#: Coupled groups (residual adds, concatenations): each member's own count, the smallest wins
#: (``"min_count"``), or one count on the members' combined scores (``"joint"``).
GroupPolicy = Literal["min_count", "joint"]
GROUP_POLICIES: Tuple[str, ...] = get_args(GroupPolicy)

#: How many units each layer loses: FAIR's per-layer ToD counts (``"tod"``), one global
#: threshold on U normalised by its layer's mean (``"global"``; needs a MACs/params target), one
#: global threshold on U standardised within its layer (``"standardised"``, z-scores as FLAP's
#: adaptive structure search; needs a target), the same fraction of every layer (``"uniform"``; a
#: ``ratio`` or a target), or ``"auto"``: global under a target, ToD under a tolerance, uniform with a
#: ratio.
AllocationName = Literal["auto", "tod", "global", "standardised", "uniform"]
ALLOCATIONS: Tuple[str, ...] = get_args(AllocationName)
#: the allocations that rank units across layers, so need a MACs/params target
CROSS_LAYER_ALLOCATIONS: Tuple[str, ...] = ("global", "standardised")

#: Which units of a layer go first, once its count is known (the ``ranking`` option).
#: "utilization_x_consumers" needs the model's consumer weights:
#: :class:`~lightning_fair.removal.planner.DependencyPlanner`
#: applies it (the removal score times how strongly the next layers read each unit), not
#: :func:`~lightning_fair.allocation.order.removal_order`.
RankingName = Literal["utilization", "l1", "random", "utilization_x_consumers", "utilization_x_group"]
RANKINGS: Tuple[str, ...] = get_args(RankingName)

#: Which score ranks the units for removal: FAIR's utilization score, or the screening score.
CriterionName = Literal["fair", "screening"]
CRITERIA: Tuple[str, ...] = get_args(CriterionName)

#: What a class is for U under next-token prediction: the next token itself, among the most frequent
#: next tokens of the first calibration batch (``"frequent"``), or the cluster of the next token's
#: output embedding (``"clusters"``: k-means of the output embedding's rows, every token in a class).
TokenClassesName = Literal["frequent", "clusters"]
TOKEN_CLASSES: Tuple[str, ...] = get_args(TokenClassesName)

#: The pruned model's shapes: each layer its own count (``"per_layer"``), or one count for every
#: layer of a kind (``"uniform"``: what a standard Hugging Face config can hold, so that
#: ``save_pretrained`` folders load with ``from_pretrained``); :mod:`lightning_fair.units.pretrained_config`.
ShapesName = Literal["per_layer", "uniform"]
SHAPES: Tuple[str, ...] = get_args(ShapesName)

#: The named pipeline configurations (:data:`PRESETS`).
PresetName = Literal["default", "paper"]


# ---------------------------------------------------------------------- validation
def check_tolerance(tolerance: float) -> float:
    tolerance = float(tolerance)
    if not 0.0 <= tolerance <= 1.0:
        raise ValueError(f"tolerance must lie in [0, 1] (a fraction of overlap), got {tolerance}")
    return tolerance


def check_criterion(criterion: str, screening_weight: float) -> float:
    """Validate ``criterion`` and ``screening_weight``; return the weight as a float."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    return check_screening_weight(screening_weight)


def check_screening_weight(weight: float) -> float:
    """``screening_weight`` must be a number in [0, 1] (1: F only, 0: filter magnitude only)."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= float(weight) <= 1.0:
        raise ValueError(
            f"screening_weight is the weight of the F-statistic against the filter magnitude, a number "
            f"in [0, 1] (1: F only, 0: magnitude only), got {weight!r}"
        )
    return float(weight)


#: Default ``memory_budget`` of the statistics pass: ``"auto"`` (:func:`resolve_budget`) is half the
#: free memory of the CUDA device the model is on, and ``CPU_BUDGET`` anywhere else.
DEFAULT_BUDGET = "auto"
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(value: Union[int, float, str, None]) -> Optional[int]:
    """``4GiB``, ``"512MB"``, ``2e9`` or None (no budget) -> bytes.

    Example:
        >>> parse_bytes("1.5GiB"), parse_bytes(1024), parse_bytes(None)
        (1610612736, 1024, None)
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("memory_budget must be a number of bytes or a string like '4GiB', got a bool")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(
                f"memory_budget must be bytes, a size like '4GiB' or '512MB', 'auto' or None, got {value!r}"
            )
        number, unit = float(match.group(1)), match.group(2).lower()
    result = int(number * _UNITS[unit])
    if result <= 0:
        raise ValueError(f"memory_budget must be positive, got {value!r}")
    return result


def check_budget(value: Union[int, float, str, None]) -> None:
    """Raise unless ``value`` is a ``memory_budget``: ``"auto"``, None, bytes or a size like ``"4GiB"``
    (resolved to bytes for a device by :func:`lightning_fair.collect.memory.resolve_budget`).

    Example:
        >>> check_budget("auto"), check_budget("1GiB"), check_budget(None)
        (None, None, None)
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return
    parse_bytes(value)


#: ``num_projections="auto"``: ``FEW`` directions below ``MANY_CLASSES`` compared classes, ``MANY`` from there on
AUTO_PROJECTIONS = {"few": 128, "many": 32}
MANY_CLASSES = 50


def check_projections(num_projections: Union[int, str]) -> None:
    """Raise a ValueError naming ``num_projections`` and the fix unless it is a positive integer or ``"auto"``.

    Example:
        >>> check_projections("auto"), check_projections(8)
        (None, None)
        >>> check_projections(0)
        Traceback (most recent call last):
        ...
        ValueError: num_projections must be a positive integer or 'auto' (128 directions below 50 ...
    """
    if isinstance(num_projections, str) and num_projections == "auto":
        return
    if isinstance(num_projections, bool) or not isinstance(num_projections, numbers.Integral) or num_projections < 1:
        raise ValueError(
            f"num_projections must be a positive integer or 'auto' ({AUTO_PROJECTIONS['few']} directions "
            f"below {MANY_CLASSES} compared classes, {AUTO_PROJECTIONS['many']} from {MANY_CLASSES} on), "
            f"got {num_projections!r}"
        )


# ---------------------------------------------------------------------- presets
PRESETS: Dict[str, Dict[str, object]] = {
    # arXiv 2508.02291 / network-pruner 2.x: U observes the Conv/Linear output itself,
    # R = |Σ dL/dz·z|, per-layer ToD counts, coupled groups prune the smallest member count,
    # no BatchNorm re-estimation, no compensation.
    "paper": dict(
        observe="output",
        reconstruction="abs_of_sum",
        group_policy="min_count",
        allocation="tod",
        recalibrate=False,
        compensate=False,
        ranking="utilization",
        refit=False,
        massive=0.0,
    ),
    # chosen by evidence (docs/benchmarks.md, "Variant study"): U after the nonlinearity, a
    # global U threshold when a MACs/params budget is given (ToD counts for a tolerance),
    # BatchNorm re-estimation and mean-replacement compensation.
    # units ranked by U times how strongly the next layers read them (docs/method.md: one-shot better
    # in 17 of 24 standard-model cells over three training seeds, neutral after fine-tuning)
    "default": dict(
        observe="activation",
        reconstruction="abs_of_sum",
        group_policy="min_count",
        allocation="auto",
        recalibrate=True,
        compensate=True,
        ranking="utilization_x_consumers",
        refit=True,
        # units with massive activations last in their layer's removal order: the largest peak ratio of
        # any unit of the benchmark's CNNs and ViTs is 2.9, of MiniLM's ordinary feed-forward neurons 4.8,
        # of its massive ones 6.7 to 13.8 (docs/method.md, "Massive activations")
        massive=6.0,
    ),
}


assert set(PRESETS) == set(get_args(PresetName)), "PresetName lists the presets"


def resolve_preset(preset: str, **options) -> Dict[str, object]:
    """The preset's options with every non-None entry of ``options`` taking precedence.

    Example:
        >>> resolve_preset("paper", observe="activation")["observe"]
        'activation'
        >>> resolve_preset("paper")["recalibrate"]
        False
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
    resolved = dict(PRESETS[preset])
    unknown = set(options) - set(resolved)
    if unknown:
        raise TypeError(f"unknown preset option(s): {sorted(unknown)}")
    resolved.update({key: value for key, value in options.items() if value is not None})
    return resolved


def resolve_allocation(allocation: str, has_target: bool, has_ratio: bool = False) -> str:
    """``"auto"`` -> ``"uniform"`` with a ratio, ``"global"`` with a MACs/params target, else ``"tod"``."""
    if allocation == "auto":
        return "uniform" if has_ratio else "global" if has_target else "tod"
    return allocation


# ---------------------------------------------------------------------- the config

#: the tolerance of difference when no other budget is given
DEFAULT_TOLERANCE = 0.05

#: the options a preset sets (None in a config: the preset's value)
PIPELINE_OPTIONS = (
    "observe",
    "reconstruction",
    "group_policy",
    "allocation",
    "recalibrate",
    "compensate",
    "ranking",
    "refit",
    "massive",
)


@dataclass(frozen=True)
class PruneConfig:
    """Every plain-data option of a pruning, validated when the config is made.

    Budget (give one): ``tolerance`` (default), ``target_macs``, ``target_params`` or ``ratio``.
    The nine pipeline options (``observe`` ... ``compensate``, ``ranking``, ``refit``, ``massive``) default to None,
    meaning the ``preset``'s value; :meth:`resolved` fills them in.

    Args:
        tolerance: the tolerance of difference in [0, 1]; larger removes more (ToD allocation).
        target_macs: instead of ``tolerance``, the fraction of MACs to keep (e.g. 0.5); the level
            (ToD tolerance, global threshold or uniform ratio) is searched to reach it.
        target_params: the same for the parameter count.
        ratio: the fraction of every layer's units to remove (``allocation="uniform"``), in [0, 1).
        preset: ``"default"`` (the configuration the benchmarks found best one-shot) or ``"paper"``
            (the method exactly as published: U on the raw layer output, no BatchNorm
            re-estimation, no compensation); see :mod:`lightning_fair.config`.
        observe: what U observes: the layer's ``"output"``, the tensor after the following
            ``"norm"``, or after the following nonlinearity (``"activation"``).
        reconstruction: ``"abs_of_sum"`` (the paper's ``R = |sum dL/dz z|``) or ``"sum_of_abs"``.
        group_policy: layers coupled by residual adds or concatenation: ``"min_count"`` (each
            member's own count, the smallest wins) or ``"joint"`` (one count on combined scores).
        allocation: ``"tod"`` (per-layer tolerance-of-difference counts, FAIR), ``"global"`` (one
            threshold on layer-normalised scores; needs a target), ``"standardised"`` (one threshold
            on scores standardised within each layer, FLAP's z-scores; needs a target), ``"uniform"`` (the same
            fraction of every layer: ``ratio``, or searched for a target) or ``"auto"`` (global
            with a target, ToD with a tolerance, uniform with a ratio).
        recalibrate: re-estimate BatchNorm running statistics on the calibration batches after
            removal (needs a calibration dataloader).
        compensate: mean-replacement compensation: fold each removed input's calibration mean
            into its consumer's bias (:mod:`lightning_fair.repair.compensation`).
        ranking: which units a layer's count removes (None: the preset's; ``"utilization_x_consumers"``
            in the default, ``"utilization"`` in the paper's): ``"utilization"`` (the criterion's score),
            ``"l1"`` (smallest weights) or ``"random"`` (the paper's ablations), or
            ``"utilization_x_consumers"`` (the criterion's score times the mean, over the Conv/Linear
            layers that read the unit, of the L2 norm of its input-weight column: a unit the next
            layers barely read goes first; the counts are the same as with ``"utilization"``), or
            ``"utilization_x_group"`` (that, times how strongly the group's members write the unit: the
            mean over the layers writing it of their layer-normalised output-filter L2 norm, scaled by a
            following BatchNorm; for a residual stream, every branch that adds into the channel).
        refit: least-squares refit of the consumers after removal: every Conv/Linear that lost inputs
            gets the weights and bias that best reproduce its original output from its kept inputs,
            on the calibration batches (one more forward pass of the unpruned model;
            :mod:`lightning_fair.repair.refit`); with ``compensate``, mean replacement covers the consumers it
            cannot refit.
        massive: units with massive activations go last in their layer's removal order: a unit whose
            largest ``|value|`` on the calibration data (of the tensor U observes) is at least ``massive``
            times the median of its layer's units' largest values (Sun et al. 2024: a few transformer
            units, huge on [CLS]/[SEP] or the first token, that U and R both rank first for removal);
            ``0`` turns it off (the paper's preset); :mod:`lightning_fair.scoring.massive`.
        criterion: what ranks the units: ``"fair"`` (U, with R as ToD's protection) or
            ``"screening"`` (class-separation F-statistic combined with the filter norm,
            :mod:`lightning_fair.scoring.screening`).
        screening_weight: the weight of F against the filter magnitude, in [0, 1] (screening).
        samples_per_class: images per class kept for the utilization score (n in the paper).
        num_projections: random directions for the sliced W1 of conv channels (P in the paper); ``"auto"``,
            the default: 128 when U compares fewer than 50 classes, 32 from 50 on (where 32 move U no
            more than other random directions do; :func:`lightning_fair.collect.classes.projections_for`,
            docs/method.md,
            "Many classes"). The count used is in the scores' ``config`` and the report's options.
        max_classes: U compares at most this many classes (the reference's cap, 100): with more,
            a random subset of the model's classes, seeded by ``seed``, is chosen once and only
            their samples are kept (memory ~ classes, pairs ~ classes²); None compares all
            (:mod:`lightning_fair.collect.classes`; docs/method.md, "Many classes").
        token_classes: next-token prediction (a causal language model): what a class is for U,
            ``"frequent"`` (the next token, among the ``max_classes`` most frequent next tokens of the
            first calibration batch) or ``"clusters"`` (the next token's cluster among ``max_classes``
            k-means clusters of the output embedding's rows, seeded by ``seed``); :mod:`lightning_fair.collect.tokens`,
            docs/method.md ("Decoder language models").
        pairs: how U combines the Wasserstein distances between the classes compared: their
            maximum over class pairs (``"max"``, the paper's) or their mean over all pairs
            (``"mean"``, our option; docs/method.md, "Class pairs").
        seed: seeds the projection directions (and the random ranking).
        max_batches: calibration batches to use (all by default).
        memory_budget: bytes (or ``"4GiB"``) the statistics (and the refit's) may take (None: no limit; ``"auto"``, the
            default: half the free memory of the CUDA device the model is on, 4 GiB on the CPU); over it
            they are collected in several passes.
        ignored_layers: qualified module names never pruned (the output layer never is);
            :func:`lightning_fair.prune` also accepts module objects here.
        shapes: ``"per_layer"`` (each layer keeps what its allocation gives; a pruned Hugging Face
            model's config carries the pruning history, and ``lightning_fair.load_pretrained``
            reloads its ``save_pretrained`` folder) or ``"uniform"`` (every layer of a kind, the same
            name up to the block index, keeps the same count, and layers whose width no config field
            holds stay whole; the config's head counts and widths are set, so the folder loads with
            stock ``from_pretrained``); :mod:`lightning_fair.units.pretrained_config`, docs/method.md
            ("Saving and loading").
        round_to: every layer of at least ``2 * round_to`` units keeps a multiple of ``round_to`` of them
            (e.g. 8 or 64: widths that matrix kernels tile well); None (default) keeps any count.
            With a target, the search meets it with the rounded counts; docs/saving.md ("Rounded
            widths") has the measured latency.
        prune_embedding: transformers: also prune the embedding dimension (the residual stream:
            embeddings, LayerNorms, attention output projections, cls/position tokens); off by
            default, heads and MLP neurons only (:mod:`lightning_fair.removal.heads`). Not for
            ``nn.MultiheadAttention``, whose embedding dimension is always kept.

    Raises:
        ValueError: a bad value; the message names the field and the fix.

    Example:
        >>> config = PruneConfig(target_macs=0.5)
        >>> config.resolved().allocation   # the default preset: a global threshold under a target
        'global'
        >>> PruneConfig.paper(tolerance=0.1).resolved().observe
        'output'
        >>> PruneConfig(observe="inputs")
        Traceback (most recent call last):
        ...
        ValueError: observe must be one of ('output', 'norm', 'activation'), got 'inputs'
    """

    tolerance: float = DEFAULT_TOLERANCE
    target_macs: Optional[float] = None
    target_params: Optional[float] = None
    ratio: Optional[float] = None
    preset: PresetName = "default"
    observe: Optional[Observe] = None
    reconstruction: Optional[Reconstruction] = None
    group_policy: Optional[GroupPolicy] = None
    allocation: Optional[AllocationName] = None
    recalibrate: Optional[bool] = None
    compensate: Optional[bool] = None
    ranking: Optional[RankingName] = None
    refit: Optional[bool] = None
    massive: Optional[float] = None
    criterion: CriterionName = "fair"
    screening_weight: float = 0.5
    samples_per_class: int = 32
    num_projections: Union[int, Literal["auto"]] = "auto"
    max_classes: Optional[int] = 100
    token_classes: TokenClassesName = "frequent"
    pairs: PairsName = "max"
    seed: int = 0
    max_batches: Optional[int] = None
    memory_budget: Union[int, str, None] = DEFAULT_BUDGET
    ignored_layers: Optional[List[str]] = None
    shapes: ShapesName = "per_layer"
    round_to: Optional[int] = None
    prune_embedding: bool = False

    def __post_init__(self) -> None:
        check_tolerance(self.tolerance)
        check_criterion(self.criterion, self.screening_weight)
        pipeline = self.pipeline  # checks the preset
        if self.target_macs is not None and self.target_params is not None:
            raise ValueError("give target_macs or target_params, not both")
        other = next(
            (
                f"{k}={v}"
                for k, v in (
                    ("target_macs", self.target_macs),
                    ("target_params", self.target_params),
                    ("ratio", self.ratio),
                )
                if v is not None
            ),
            None,
        )
        if other is not None and float(self.tolerance) != DEFAULT_TOLERANCE:
            raise ValueError(
                f"tolerance={self.tolerance} and {other} are two budgets; give one: the tolerance sets ToD's "
                f"per-layer counts, {other.split('=')[0]} is met by searching the level (drop tolerance=...)"
            )
        for key, value in (("target_macs", self.target_macs), ("target_params", self.target_params)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0
            ):
                raise ValueError(f"{key} is the fraction to keep, in (0, 1], got {value!r}")
        for key, allowed in (
            ("ranking", RANKINGS),
            ("group_policy", GROUP_POLICIES),
            ("observe", OBSERVATION_POINTS),
            ("reconstruction", RECONSTRUCTIONS),
            ("allocation", ALLOCATIONS),
        ):
            value = pipeline.get(key, getattr(self, key))
            if value not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {value!r}")
        for key in ("recalibrate", "compensate", "refit"):
            if not isinstance(pipeline[key], bool):
                raise ValueError(f"{key} must be True, False or None (the preset's value), got {pipeline[key]!r}")
        massive = pipeline["massive"]
        if isinstance(massive, bool) or not isinstance(massive, (int, float)) or not (massive == 0 or massive > 1):
            raise ValueError(
                f"massive is the ratio of a unit's largest activation to its layer's median one above which the "
                f"unit goes last, a number > 1 (e.g. 6), or 0 to turn it off; got {massive!r}"
            )
        allocation = pipeline["allocation"]
        if allocation in CROSS_LAYER_ALLOCATIONS and not self.target:
            raise ValueError(
                f"allocation={allocation!r} ranks units across layers and needs a budget: pass target_macs=... "
                "or target_params=... (or use allocation='tod' with a tolerance)"
            )
        if self.ratio is not None:
            if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0.0 <= self.ratio < 1.0:
                raise ValueError(
                    f"ratio is the fraction of every layer's units to remove, in [0, 1), got {self.ratio!r}"
                )
            if allocation not in ("uniform", "auto"):
                raise ValueError(
                    f"ratio= sets the per-layer fraction of allocation='uniform', not of "
                    f"allocation={allocation!r}; pass allocation='uniform' (or leave it unset), or drop ratio"
                )
            if self.target:
                raise ValueError("give ratio or a target (target_macs/target_params), not both")
        elif allocation == "uniform" and not self.target:
            raise ValueError(
                "allocation='uniform' removes the same fraction of every layer: pass ratio=... (e.g. 0.3), "
                "or target_macs=.../target_params=... to search it"
            )
        if (
            isinstance(self.samples_per_class, bool)
            or not isinstance(self.samples_per_class, int)
            or self.samples_per_class < 1
        ):
            raise ValueError(f"samples_per_class must be a positive integer, got {self.samples_per_class!r}")
        check_projections(self.num_projections)
        if self.max_classes is not None and (
            isinstance(self.max_classes, bool) or not isinstance(self.max_classes, int) or self.max_classes < 2
        ):
            raise ValueError(
                f"max_classes must be an integer >= 2 (U compares pairs of classes) or None (all classes), "
                f"got {self.max_classes!r}"
            )
        if self.pairs not in PAIRS:
            raise ValueError(f"pairs must be one of {PAIRS}, got {self.pairs!r}")
        if self.token_classes not in TOKEN_CLASSES:
            raise ValueError(f"token_classes must be one of {TOKEN_CLASSES}, got {self.token_classes!r}")
        if self.shapes not in SHAPES:
            raise ValueError(f"shapes must be one of {SHAPES}, got {self.shapes!r}")
        if self.round_to is not None and (
            isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 2
        ):
            raise ValueError(f"round_to must be an integer >= 2 (e.g. 8 or 64) or None, got {self.round_to!r}")
        if self.token_classes == "clusters" and self.max_classes is None:
            raise ValueError("token_classes='clusters' needs max_classes (the number of clusters), not None")
        if self.max_batches is not None and (
            isinstance(self.max_batches, bool) or not isinstance(self.max_batches, int) or self.max_batches < 1
        ):
            raise ValueError(f"max_batches must be a positive integer or None (all batches), got {self.max_batches!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        check_budget(self.memory_budget)  # a bad budget fails before anything runs
        if not isinstance(self.prune_embedding, bool):
            raise ValueError(f"prune_embedding must be True or False, got {self.prune_embedding!r}")

    # ------------------------------------------------------------------ presets
    @classmethod
    def paper(cls, **overrides: Any) -> "PruneConfig":
        """The method exactly as published (arXiv 2508.02291), with ``overrides``."""
        return cls(preset="paper", **overrides)

    @classmethod
    def default(cls, **overrides: Any) -> "PruneConfig":
        """The configuration the benchmark suite found best one-shot, with ``overrides``."""
        return cls(preset="default", **overrides)

    # ------------------------------------------------------------------ derived
    @property
    def pipeline(self) -> Dict[str, Any]:
        """The nine pipeline options with the preset's values filled in, ``allocation`` resolved
        (``"auto"``: uniform with a ratio, global with a target, ToD otherwise)."""
        options = resolve_preset(self.preset, **{key: getattr(self, key) for key in PIPELINE_OPTIONS})
        options["allocation"] = resolve_allocation(options["allocation"], bool(self.target), self.ratio is not None)
        return options

    @property
    def target(self) -> Dict[str, float]:
        """``{"macs": fraction}``, ``{"params": fraction}`` or ``{}`` (no target: a tolerance or a ratio)."""
        return {
            key: float(value)
            for key, value in (("macs", self.target_macs), ("params", self.target_params))
            if value is not None
        }

    def resolved(self) -> "PruneConfig":
        """This config with the preset's values written into the pipeline options."""
        return dataclasses.replace(self, **self.pipeline)

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a plain dict (module objects in ``ignored_layers`` become their type names)."""
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        if data["ignored_layers"] is not None:
            layers = data["ignored_layers"]
            layers = [layers] if isinstance(layers, str) or not hasattr(layers, "__iter__") else layers
            data["ignored_layers"] = [item if isinstance(item, str) else type(item).__name__ for item in layers]
        return data


FIELDS = tuple(field.name for field in dataclasses.fields(PruneConfig))


def unknown_names(names: List[str], known: Tuple[str, ...]) -> str:
    """``'tolerence' (did you mean 'tolerance'?), ...``: each unknown name with the closest known one.

    Example:
        >>> unknown_names(["tolerence", "xyz"], ("tolerance", "target_macs"))
        "'tolerence' (did you mean 'tolerance'?), 'xyz'"
    """
    hints = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ", ".join(hints)


def configure(config: Optional[PruneConfig] = None, **overrides: Any) -> PruneConfig:
    """``config`` (default: ``PruneConfig()``) with the keyword ``overrides`` applied, validated.

    Example:
        >>> configure(PruneConfig.paper(), target_macs=0.5).target
        {'macs': 0.5}
        >>> configure(tolerence=0.1)
        Traceback (most recent call last):
        ...
        TypeError: unknown pruning option 'tolerence' (did you mean 'tolerance'?); the options are the fields ...
    """
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise TypeError(
            f"unknown pruning option{'s' if len(unknown) > 1 else ''} {unknown_names(unknown, FIELDS)}; "
            f"the options are the fields of PruneConfig: {', '.join(FIELDS)}"
        )
    if config is None:
        return PruneConfig(**overrides)
    if not isinstance(config, PruneConfig):
        raise TypeError(
            f"config must be a lightning_fair.PruneConfig, got {type(config).__name__}; "
            "pass options as keywords, e.g. prune(model, loader, target_macs=0.5)"
        )
    return dataclasses.replace(config, **overrides) if overrides else config
