"""``lightning-fair sweep``: one scoring pass over a trained checkpoint, pruned copies at several
targets, a table (printed, ``sweep.csv``, ``sweep.png`` with matplotlib) in ``output_dir``."""

from __future__ import annotations

import os
from typing import Any, Callable, List, Literal, Optional

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from ..config import PruneConfig, configure
from ..pipeline.sweeping import SweepResult
from ..pipeline.sweeping import sweep as fair_sweep
from .loading import restore_checkpoint, test_loader, validation_loader

__all__ = ["sweep_checkpoint"]


def sweep_checkpoint(
    self: Trainer,
    model: LightningModule,
    ckpt_path: str,
    datamodule: Optional[LightningDataModule] = None,
    targets: List[float] = [0.9, 0.7, 0.5, 0.3],
    budget: Literal["macs", "params"] = "macs",
    output_dir: Optional[str] = None,
    weights_only: Optional[bool] = None,
    logits: Optional[Callable] = None,
    config: Optional[PruneConfig] = None,
    **options: Any,
) -> SweepResult:
    r"""Prune copies of a trained checkpoint at several targets from one scoring pass and compare them.

    The checkpoint is loaded into ``model`` (a pruned checkpoint too), scored once on the validation
    data, pruned to each target with the full pipeline (:func:`lightning_fair.sweep`), and each copy
    is measured on the test data (``datamodule.test_dataloader``; the validation data if there is
    none). Writes ``sweep.csv`` (and ``sweep.png`` if matplotlib is installed) to ``output_dir``
    and prints the table. The checkpoint file is not changed.

    Args:
        model: the LightningModule to load the checkpoint into.
        ckpt_path: the trained checkpoint (required).
        datamodule: calibration (``val_dataloader``) and evaluation (``test_dataloader``) data.
        targets: fractions to keep, e.g. ``--targets=[0.7,0.5,0.3]``.
        budget: ``macs`` or ``params``: what the targets are fractions of.
        output_dir: where sweep.csv goes (default: ``<trainer.default_root_dir>/sweep``).
        weights_only: ``torch.load(ckpt_path, weights_only=...)``; None means True.
        logits: picks the class logits from the model's output (import path of a function).
        config: a :class:`~lightning_fair.PruneConfig` (from Python; the command line gives its fields).
        **options: the fields of :class:`~lightning_fair.PruneConfig` (``--preset``, ``--samples_per_class``, ...).
    """
    config = configure(config, **options)
    if not ckpt_path or not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"sweep needs an existing checkpoint file (--ckpt_path), got {ckpt_path!r}")
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True if weights_only is None else weights_only)
    restore_checkpoint(model, checkpoint)
    model.to(self.strategy.root_device)
    calibration = validation_loader(model, datamodule)
    held_out = test_loader(model, datamodule)
    with torch.inference_mode(False), torch.enable_grad():
        table = fair_sweep(
            model,
            calibration,
            targets=list(targets),
            eval_loader=held_out,
            config=config,
            budget=budget,
            logits=logits,
            verbose=self.is_global_zero,  # a line per target as it is done
        )
    output_dir = output_dir or os.path.join(self.default_root_dir, "sweep")
    if self.is_global_zero:
        os.makedirs(output_dir, exist_ok=True)
        table.to_csv(os.path.join(output_dir, "sweep.csv"))
        try:
            table.plot(os.path.join(output_dir, "sweep.png"))
        except ImportError:  # matplotlib is optional
            pass
        print(f"{table}\nwritten: {os.path.join(output_dir, 'sweep.csv')}", flush=True)
    return table
