"""lightning_fair: FAIR-Pruner structured channel pruning for PyTorch and PyTorch Lightning.

The data flows one way: calibration batches -> statistics -> scores -> per-layer counts
(tolerance of difference) -> dependency-aware removal -> report.
"""

from . import zoo
from .allocation import tod_curve, tolerance_count, tolerance_counts
from .oneshot import PruneResult, prune
from .report import PruneReport
from .scores import FairScores, compute_scores

__version__ = "0.1.0"
__all__ = [
    "FairScores",
    "PruneReport",
    "PruneResult",
    "compute_scores",
    "prune",
    "tod_curve",
    "tolerance_count",
    "tolerance_counts",
    "zoo",
]
