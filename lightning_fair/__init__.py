"""lightning_fair: FAIR-Pruner structured channel pruning for PyTorch and PyTorch Lightning.

The data flows one way: calibration batches -> statistics -> scores -> per-layer counts
(tolerance of difference) -> dependency-aware removal -> report. ``criterion="screening"``
ranks units by an ANOVA F-statistic and filter norm instead; ``prune_connections`` prunes
single weights with it.
"""

from . import zoo
from .allocation import tod_curve, tolerance_count, tolerance_counts
from .memory import estimate_memory
from .checkpoint import FairPruningMixin, load_pruned, save_pruned
from .config import PruneConfig
from .evaluation import evaluate
from .oneshot import PruneResult, prune
from .recalibration import recalibrate_bn
from .report import PruneReport
from .scores import FairScores, compute_scores
from .unstructured import prune_connections

__version__ = "0.1.0"
__all__ = [
    "FairPruneCallback",
    "FairPruningMixin",
    "FairScores",
    "OnTheFlyPruning",
    "PruneConfig",
    "PruneReport",
    "PruneResult",
    "PruningError",
    "compute_scores",
    "estimate_memory",
    "evaluate",
    "load_pruned",
    "prune",
    "prune_connections",
    "recalibrate_bn",
    "save_pruned",
    "tod_curve",
    "tolerance_count",
    "tolerance_counts",
    "zoo",
]


def __getattr__(name):
    # Lightning is imported only by those who use the Lightning parts.
    if name == "FairPruneCallback":
        from .callback import FairPruneCallback

        return FairPruneCallback
    if name == "PruningError":
        from .callback import PruningError

        return PruningError
    if name == "OnTheFlyPruning":
        from .onthefly_callback import OnTheFlyPruning

        return OnTheFlyPruning
    raise AttributeError(f"module 'lightning_fair' has no attribute {name!r}")
