"""One scoring pass, many budgets: prune copies of a model at several targets and compare them.

:func:`sweep` computes the FAIR scores once, then runs the full pipeline (allocation, removal,
compensation, BatchNorm re-estimation on the calibration data) on a copy of the model for every
target, and measures each copy. The model itself is not changed. The :class:`SweepResult` prints
as a table, saves as CSV and plots accuracy against kept MACs (matplotlib, optional).
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, Sequence

from torch import nn

from ..collect.collector import default_unpack
from ..config import PruneConfig, configure
from ..scoring.compute import compute_scores
from ..scoring.fair import FairScores
from .evaluation import evaluate
from .oneshot import prune

__all__ = ["SweepResult", "SweepRow", "sweep"]

#: what :func:`sweep` varies: the fraction of MACs or of parameters to keep
BUDGETS = ("macs", "params")


@dataclass
class SweepRow:
    """One target of a sweep (``status`` "ok", or "unreachable" with the reason in ``note``)."""

    target: float
    status: str = "ok"
    macs_ratio: Optional[float] = None
    params_ratio: Optional[float] = None
    accuracy: Optional[float] = None
    loss: Optional[float] = None
    calibration_accuracy: Optional[float] = None
    calibration_loss: Optional[float] = None
    level: Optional[float] = None
    level_name: str = ""
    note: str = ""


@dataclass
class SweepResult:
    """What :func:`sweep` returns: one row per target, the scores used, and the unpruned model's
    accuracy and loss (``original``) on the evaluation data."""

    budget: str
    rows: List[SweepRow]
    scores: FairScores
    original: dict = field(default_factory=dict)
    evaluated_on: str = "calibration data"

    COLUMNS = (
        "target",
        "status",
        "macs_ratio",
        "params_ratio",
        "accuracy",
        "loss",
        "calibration_accuracy",
        "calibration_loss",
        "level",
        "level_name",
        "note",
    )

    def __str__(self) -> str:
        lines = [
            f"lightning_fair sweep over target_{self.budget} (accuracy and loss on the {self.evaluated_on}; "
            f"unpruned: accuracy {self.original.get('accuracy', float('nan')):.2%}, "
            f"loss {self.original.get('loss', float('nan')):.4f})",
            f"{'target':>7} {'kept MACs':>9} {'params':>7} {'accuracy':>9} {'loss':>8} {'calib. loss':>11}",
        ]
        for row in self.rows:
            if row.status != "ok":
                lines.append(f"{row.target:>7.3g}  unreachable: {row.note}")
                continue
            lines.append(
                f"{row.target:>7.3g} {row.macs_ratio:>9.1%} {row.params_ratio:>7.1%} {row.accuracy:>9.2%} "
                f"{row.loss:>8.4f} {row.calibration_loss:>11.4f}"
            )
        return "\n".join(lines)

    def to_csv(self, path) -> None:
        """Write one line per target (the columns of :class:`SweepRow`)."""
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.COLUMNS)
            writer.writeheader()
            for row in self.rows:
                writer.writerow(dataclasses.asdict(row))

    def plot(self, path=None, ax=None):
        """Accuracy against kept MACs (needs matplotlib); saved to ``path`` if given; returns the axes."""
        try:
            import matplotlib

            if ax is None and path is not None:
                matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:  # pragma: no cover - matplotlib is optional
            raise ImportError(
                "SweepResult.plot needs matplotlib: pip install matplotlib (to_csv and print work without it)"
            ) from error
        ok = [row for row in self.rows if row.status == "ok"]
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([row.macs_ratio for row in ok], [100 * row.accuracy for row in ok], "o-", label="FAIR (pruned)")
        if "accuracy" in self.original:
            ax.axhline(100 * self.original["accuracy"], color="gray", linestyle="--", label="unpruned")
        ax.set_xlabel("kept MACs")
        ax.set_ylabel(f"top-1 % ({self.evaluated_on})")
        ax.legend()
        if path is not None:
            ax.figure.tight_layout()
            ax.figure.savefig(path)
        return ax


def sweep(
    model: nn.Module,
    calibration_loader: Iterable,
    targets: Sequence[float] = (0.9, 0.7, 0.5, 0.3),
    eval_loader: Optional[Iterable] = None,
    config: Optional[PruneConfig] = None,
    *,
    budget: str = "macs",
    scores: Optional[FairScores] = None,
    loss_fn: Optional[Callable] = None,
    unpack: Callable = default_unpack,
    logits: Optional[Callable] = None,
    verbose: bool = False,
    **options,
) -> SweepResult:
    """Prune copies of ``model`` to each of ``targets`` from one scoring pass and measure them.

    Args:
        model: the trained model (not changed).
        calibration_loader: labelled calibration batches: scores, BatchNorm re-estimation, and the
            calibration loss of every copy.
        targets: fractions of MACs (``budget="macs"``) or parameters (``"params"``) to keep, each in (0, 1].
        eval_loader: held-out batches to measure accuracy and loss on (default: the calibration batches).
        config: a :class:`~lightning_fair.PruneConfig` for everything but the budget (its
            ``tolerance``/``target_*``/``ratio`` are replaced by each target); ``**options``: its fields.
        budget: ``"macs"`` or ``"params"``.
        scores: precomputed :func:`compute_scores` output (otherwise computed once here).
        loss_fn, unpack, logits: as in :func:`lightning_fair.prune`.
        verbose: print each row as it is measured.

    Returns:
        :class:`SweepResult`: ``print(result)``, ``result.to_csv(path)``, ``result.plot(path)``.

    Example:
        >>> import torch
        >>> from lightning_fair import sweep
        >>> from lightning_fair.demos import zoo
        >>> data = [(torch.randn(40, 1, 8, 8), torch.arange(40) % 10)]
        >>> table = sweep(zoo.small_cnn(), data, targets=[0.8, 0.5], samples_per_class=4, num_projections=8)
        >>> [round(row.macs_ratio, 1) <= t for row, t in zip(table.rows, [0.8, 0.5])]
        [True, True]
    """
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    targets = list(targets)
    if not targets:
        raise ValueError("targets is empty: give the fractions to keep, e.g. targets=[0.7, 0.5, 0.3]")
    for target in targets:
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target <= 1.0:
            raise ValueError(f"every target is the fraction of {budget} to keep, in (0, 1], got {target!r}")
    config = configure(config, **options)
    budgets = {"target_macs": None, "target_params": None, "ratio": None}
    per_target = [
        dataclasses.replace(config, **{**budgets, f"target_{budget}": float(t)}) for t in targets
    ]  # every target checked before the data pass
    if scores is None:
        if verbose:
            print(f"sweep: scoring once on the calibration data, then {len(targets)} target(s)", flush=True)
        scores = compute_scores(
            model, calibration_loader, config, loss_fn=loss_fn, unpack=unpack, logits=logits, verbose=verbose
        )
    measured_on = eval_loader if eval_loader is not None else calibration_loader
    original = evaluate(model, measured_on, loss_fn=loss_fn, unpack=unpack, logits=logits)
    rows = []
    for target, target_config in zip(targets, per_target):
        try:
            result = prune(
                model,
                calibration_loader,
                target_config,
                scores=scores,
                loss_fn=loss_fn,
                unpack=unpack,
                logits=logits,
                inplace=False,
            )
        except ValueError as error:  # a target these scores cannot reach: say so, go on
            if "cannot be reached" not in str(error):
                raise
            rows.append(SweepRow(float(target), status="unreachable", note=str(error)))
            continue
        held_out = evaluate(result.model, measured_on, loss_fn=loss_fn, unpack=unpack, logits=logits)
        calibration = (
            held_out
            if eval_loader is None
            else evaluate(result.model, calibration_loader, loss_fn=loss_fn, unpack=unpack, logits=logits)
        )
        rows.append(
            SweepRow(
                float(target),
                macs_ratio=result.report.macs_ratio,
                params_ratio=result.report.params_ratio,
                accuracy=held_out["accuracy"],
                loss=held_out["loss"],
                calibration_accuracy=calibration["accuracy"],
                calibration_loss=calibration["loss"],
                level=result.level,
                level_name=result.level_name,
            )
        )
        if verbose:
            print(
                f"sweep {len(rows)}/{len(targets)}: target_{budget}={target}: kept MACs "
                f"{result.report.macs_ratio:.1%}, accuracy {held_out['accuracy']:.2%}",
                flush=True,
            )
    return SweepResult(
        budget=budget,
        rows=rows,
        scores=scores,
        original=original,
        evaluated_on="evaluation data" if eval_loader is not None else "calibration data",
    )
