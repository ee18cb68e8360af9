"""Loading a checkpoint and the calibration data for the ``prune`` and ``sweep`` subcommands."""

from __future__ import annotations

from typing import Any, Dict, Optional

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from ..removal.history import CHECKPOINT_KEY, replay_pruning

__all__ = ["restore_checkpoint", "test_loader", "validation_loader"]


def restore_checkpoint(model: LightningModule, checkpoint: Dict[str, Any]) -> None:
    """Load a Lightning checkpoint into ``model`` the way ``load_from_checkpoint`` does."""
    if "state_dict" not in checkpoint:
        raise ValueError("not a Lightning checkpoint: no 'state_dict' key")
    model.on_load_checkpoint(checkpoint)  # FairPruningMixin replays the pruning history here
    state = checkpoint.get(CHECKPOINT_KEY)
    if state is not None:
        replay_pruning(model, state)  # a no-op if the mixin already did it
    model.load_state_dict(checkpoint["state_dict"])


def validation_loader(model: LightningModule, datamodule: Optional[LightningDataModule]):
    if datamodule is not None:
        datamodule.prepare_data()
        datamodule.setup("validate")
        loaders = datamodule.val_dataloader()
    else:
        try:
            loaders = model.val_dataloader()
        except (NotImplementedError, MisconfigurationException):
            loaders = None
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    elif isinstance(loaders, dict):
        loaders = next(iter(loaders.values()), None)
    if loaders is None:
        raise MisconfigurationException(
            "prune and sweep need labelled validation data for calibration: give --data (a datamodule with "
            "val_dataloader) or a model that defines val_dataloader"
        )
    return loaders


def test_loader(model: LightningModule, datamodule: Optional[LightningDataModule]):
    """The test data of ``datamodule`` (or of the model), or None if there is none."""
    try:
        if datamodule is not None:
            datamodule.setup("test")
            loaders = datamodule.test_dataloader()
        else:
            loaders = model.test_dataloader()
    except (NotImplementedError, MisconfigurationException, AttributeError):
        return None
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    elif isinstance(loaders, dict):
        loaders = next(iter(loaders.values()), None)
    return loaders
