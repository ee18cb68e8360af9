"""FairPruneCallback under Lightning's DDP on 2 CPU processes (gloo); each rank saves what it got.

Used by tests/test_distributed.py:  python tests/ddp_lightning_worker.py OUT_DIR
Phase 1, ``trainer.validate`` with ``prune_at="validate"``: every rank scores its half of the
validation data. Phase 2, ``trainer.fit`` with ``prune_at=0``: pruned after epoch 0, then two
more epochs train the pruned model under DDP.
"""

from __future__ import annotations

import os
import sys

import lightning as L
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lightning_fair import FairPruneCallback  # noqa: E402
from lightning_fair.demos.digits import DigitsDataModule, ImageClassifier

OPTIONS = dict(samples_per_class=64, num_projections=16, seed=5, progress=False, verbose=False)


def trainer(root, callback, **kwargs):
    return L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
        **kwargs,
    )


class Recording(FairPruneCallback):
    """Keeps the pruned parameters as this rank computed them (before DDP re-wraps the model)."""

    def prune_now(self, trainer, pl_module, stage="fit"):
        import lightning_fair.lightning.callback as callback_module

        original = callback_module.rewrap_ddp

        def spy(trainer, module):
            self.pruned_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            return original(trainer, module)

        callback_module.rewrap_ddp = spy
        try:
            super().prune_now(trainer, pl_module, stage)
        finally:
            callback_module.rewrap_ddp = original


def main(out: str) -> None:
    torch.set_num_threads(1)
    # val_size 256 = 2 ranks x 2 batches of 64: every batch full, no padding by the sampler
    data = DigitsDataModule(batch_size=64, val_size=256)
    torch.manual_seed(0)
    model = ImageClassifier(width=8)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    first = Recording(prune_at="validate", tolerance=0.2, **OPTIONS)
    validate = trainer(out, first)
    validate.validate(model, datamodule=data)
    rank = validate.global_rank
    result = first.last_result
    saved = {
        "initial": initial,
        "scores": result.scores.state_dict(),
        "removed": result.removed,
        "pruned_state": first.pruned_state,
        "world_size": validate.world_size,
    }

    torch.manual_seed(1)
    model = ImageClassifier(width=8)
    second = Recording(prune_at=0, tolerance=0.2, **OPTIONS)
    fit = trainer(out, second, max_epochs=3, limit_train_batches=4)
    fit.fit(model, datamodule=data)
    saved.update(
        fit_removed=second.last_result.removed,
        fit_pruned_state=second.pruned_state,
        fit_final_state={k: v.detach().clone() for k, v in model.state_dict().items()},
        fit_events=second.events,
        optimizer_params=sum(p.numel() for g in fit.optimizers[0].param_groups for p in g["params"]),
        model_params=sum(p.numel() for p in model.parameters()),
        wrapped_params=sum(p.numel() for p in fit.strategy.model.parameters()),
    )
    torch.save(saved, os.path.join(out, f"lightning_rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
