"""lightning_fair: FAIR-Pruner structured channel pruning for PyTorch and PyTorch Lightning.

The data flows one way: calibration batches -> statistics -> scores -> per-layer counts
(tolerance of difference) -> dependency-aware removal -> repair -> report. Every option is a
field of :class:`PruneConfig`. ``criterion="screening"`` ranks units by an ANOVA F-statistic and
filter norm instead; ``prune_connections`` prunes single weights with it.

The Lightning parts (:mod:`lightning_fair.lightning`: ``FairPruneCallback``, ``OnTheFlyPruning``,
``FairPruningMixin``, ``PruningError``) are importable from here too, loaded on first use so
that ``import lightning_fair`` does not import Lightning. ``lightning_fair.demos.zoo`` (model
definitions) and ``lightning_fair.demos.digits`` (a digits LightningModule and DataModule) are demos.
"""

from .allocation.tolerance import tod_curve, tolerance_count, tolerance_counts
from .collect.memory import estimate_memory
from .config import PruneConfig
from .methods.unstructured import ConnectionConfig, prune_connections
from .pipeline.evaluation import evaluate
from .pipeline.oneshot import PruneResult, prune
from .pipeline.report import PruneReport
from .pipeline.sweeping import SweepResult, sweep
from .removal.history import load_pruned, save_pruned
from .removal.pretrained import load_pretrained
from .repair.batchnorm import recalibrate_bn
from .scoring.compute import compute_scores
from .scoring.fair import FairScores
from .scoring.screening import ScreeningScores

__version__ = "0.1.0"

#: public names that live in :mod:`lightning_fair.lightning` (imported on first use)
_LIGHTNING = ("FairPruneCallback", "FairPruningMixin", "OnTheFlyPruning", "PruningError")

__all__ = [
    "ConnectionConfig",
    "FairPruneCallback",
    "FairPruningMixin",
    "FairScores",
    "ScreeningScores",
    "OnTheFlyPruning",
    "PruneConfig",
    "PruneReport",
    "PruneResult",
    "PruningError",
    "SweepResult",
    "compute_scores",
    "estimate_memory",
    "evaluate",
    "load_pretrained",
    "load_pruned",
    "prune",
    "prune_connections",
    "recalibrate_bn",
    "save_pruned",
    "sweep",
    "tod_curve",
    "tolerance_count",
    "tolerance_counts",
]


def __getattr__(name):
    # Lightning is imported only by those who use the Lightning parts.
    if name in _LIGHTNING:
        from . import lightning

        return getattr(lightning, name)
    raise AttributeError(f"module 'lightning_fair' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
