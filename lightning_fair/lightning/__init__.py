"""lightning_fair for PyTorch Lightning: the glue, no science.

- :class:`FairPruneCallback`: FAIR pruning at a moment of ``fit`` or ``validate`` (one or several
  steps), optimizers re-pointed, metrics logged, history in checkpoints.
- :class:`OnTheFlyPruning`: on-the-fly pruning (hyperspherical training, mean recovery).
- :class:`FairPruningMixin`: LightningModule checkpoints that hold a pruned model.
- :mod:`lightning_fair.lightning.cli`: ``lightning-fair``, LightningCLI with ``--prune.*`` and a
  ``prune`` subcommand (imported on its own: it needs jsonargparse).

Every use of a private Lightning API is in :mod:`lightning_fair.lightning.private`.
"""

from .callback import RECALIBRATION_BATCHES, FairPruneCallback, PruningError
from .mixin import FairPruningMixin
from .onthefly import OnTheFlyPruning

__all__ = ["FairPruneCallback", "FairPruningMixin", "OnTheFlyPruning", "PruningError", "RECALIBRATION_BATCHES"]
