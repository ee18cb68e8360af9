"""The pruned model to disk after a pruning inside a Trainer (``FairPruneCallback(write_checkpoint=True)``)."""

from __future__ import annotations

import os
from typing import Optional

from lightning.pytorch import Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from .progress import announce

__all__ = ["PRUNED_CHECKPOINT", "checkpoint_dir", "write_pruned_checkpoint"]

#: file name of the pruned checkpoint written after each pruning
PRUNED_CHECKPOINT = "pruned.ckpt"


def checkpoint_dir(trainer: Trainer) -> Optional[str]:
    """Where the Trainer's checkpoints go: ``ModelCheckpoint``'s directory when it has resolved one,
    else ``<log_dir>/checkpoints`` as ``ModelCheckpoint`` would choose (``default_root_dir`` without loggers).
    None when the Trainer has neither a ``ModelCheckpoint`` nor a logger and its ``default_root_dir`` is
    the current directory (Lightning's default): then it writes no checkpoint itself, and neither do we."""
    callback = trainer.checkpoint_callback
    directory = getattr(callback, "dirpath", None) if callback is not None else None
    if directory:
        return str(directory)
    if callback is None and not trainer.loggers and os.path.abspath(trainer.default_root_dir) == os.getcwd():
        return None
    return os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints")


def write_pruned_checkpoint(trainer: Trainer, last_too: bool = False) -> Optional[str]:
    """``trainer.save_checkpoint`` to ``<checkpoint_dir>/pruned.ckpt`` (and over ``ModelCheckpoint``'s
    ``last.ckpt`` if ``last_too`` and it exists, so that the last checkpoint is the last model); logs
    the path and returns it (None, with a warning, if it could not be written: the model is pruned
    either way). Collective under DDP, like ``save_checkpoint``."""
    directory = checkpoint_dir(trainer)
    if directory is None:
        rank_zero_info(
            "lightning_fair: the pruned model was not written (the Trainer writes no checkpoints: no "
            "ModelCheckpoint, no logger, default_root_dir unset); pass default_root_dir=... or save it "
            "with trainer.save_checkpoint(...)"
        )
        return None
    path = os.path.join(directory, PRUNED_CHECKPOINT)
    paths = [path]
    last = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
    if last_too and last and os.path.isfile(last):
        paths.append(last)
    try:
        for where in paths:
            trainer.save_checkpoint(where, weights_only=False)  # a full checkpoint, to resume from
    except OSError as error:
        rank_zero_warn(
            f"lightning_fair: the pruned model could not be written to {path} ({error}); save it with "
            "trainer.save_checkpoint(...)"
        )
        return None
    # through the progress bar's print: a log line under a live bar is overdrawn or cut at the
    # terminal's width; the paths go on lines of their own so that a narrow terminal wraps only them
    announce(
        trainer,
        "lightning_fair: pruned checkpoint written (load_from_checkpoint reads it when the module uses "
        "FairPruningMixin):\n  " + "\n  ".join(paths),
    )
    return path
