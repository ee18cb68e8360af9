"""What a pruning inside a Trainer may change, to be put back exactly if it fails."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule

from ..runtime.guards import ModelSnapshot
from ..runtime.optim import OptimizerSnapshot

__all__ = ["Undo"]


class Undo:
    """What :meth:`FairPruneCallback.prune_now` may change, to be put back exactly if it fails:
    the module (:class:`~lightning_fair.runtime.guards.ModelSnapshot`, plus a copy of its buffers: an
    in-place write such as a BatchNorm re-estimation cut short), the optimizers
    (:class:`~lightning_fair.runtime.optim.OptimizerSnapshot`) and the strategy's DDP wrapper."""

    def __init__(self, module: LightningModule, optimizers):
        self.module = module
        self.params = dict(module.named_parameters())
        self.snapshot = ModelSnapshot(module)
        self.buffers = [(b, b.detach().clone()) for b in module.buffers()]
        self.optimizer_snapshot = OptimizerSnapshot(optimizers)
        self.optimizers = self.optimizer_snapshot.optimizers
        self.wrapped = None  # the strategy's DDP wrapper, while a new one is being made

    def restore(self) -> None:
        self.snapshot.restore()
        self.snapshot.restore_flags(self.module)
        for buffer, saved in self.buffers:
            if buffer.shape == saved.shape and not torch.equal(buffer, saved):
                with torch.inference_mode(buffer.is_inference()), torch.no_grad():
                    buffer.copy_(saved)
        self.optimizer_snapshot.restore()
