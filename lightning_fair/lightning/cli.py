"""``lightning-fair``: LightningCLI with FAIR pruning (needs ``jsonargparse[signatures]``).

Two additions to Lightning's own CLI (``fit``, ``validate``, ``test``, ``predict`` work as usual):

- an optional ``--prune.*`` group: :class:`~lightning_fair.FairPruneCallback` is added to the
  Trainer only when it is asked for: any ``--prune.OPTION=VALUE`` (e.g. ``--prune.tolerance=0.05``),
  ``--prune=FairPruneCallback`` (all defaults) or a ``prune:`` section in a config file.
  ``--prune=null`` switches off a section given in a config. Without any of these nothing is added.
- a ``prune`` subcommand: prune a trained checkpoint one-shot on the validation data with
  :func:`lightning_fair.prune` and write ``pruned.ckpt``, ``report.txt`` and ``report.json``::

      lightning-fair fit --model=lightning_fair.demos.digits.ImageClassifier \
          --data=lightning_fair.demos.digits.DigitsDataModule \
          --trainer.max_epochs=10 --prune.tolerance=0.05 --prune.prune_at=5
      lightning-fair prune -c config.yaml --ckpt_path=last.ckpt --tolerance=0.1 --output_dir=out
      lightning-fair test -c config.yaml --ckpt_path=out/pruned.ckpt

Plain LightningCLI needs nothing from this module to use the callback:
``--trainer.callbacks+=lightning_fair.FairPruneCallback --trainer.callbacks.tolerance=0.05``.

This module is imported only by the CLI: ``import lightning_fair`` does not import jsonargparse.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from ..config import PruneConfig, configure
from ..pipeline.evaluation import evaluate
from ..pipeline.oneshot import PruneResult
from ..pipeline.oneshot import prune as fair_prune
from ..removal.history import CHECKPOINT_KEY, pruning_state
from ..runtime.batches import default_unpack, first_sample, inputs_to
from .callback import FairPruneCallback
from .loading import restore_checkpoint, validation_loader
from .mixin import FairPruningMixin
from .private import TrainerInstantiation
from .progress import Progress
from .sweep_command import sweep_checkpoint

__all__ = ["FairCLI", "FairTrainer", "main"]

#: callback arguments that cannot come from a command line or a config file
_GROUP_SKIP = {"dataloader", "config"}
_FILES = ("pruned.ckpt", "report.txt", "report.json")


def prune_checkpoint(
    self: Trainer,
    model: LightningModule,
    ckpt_path: str,
    datamodule: Optional[LightningDataModule] = None,
    output_dir: Optional[str] = None,
    weights_only: Optional[bool] = None,
    logits: Optional[Callable] = None,
    config: Optional[PruneConfig] = None,
    **options: Any,
) -> PruneResult:
    r"""Prune a trained checkpoint one-shot with FAIR-Pruner and save the pruned checkpoint and a report.

    The checkpoint is loaded into ``model`` (a pruned checkpoint too: its pruning history is
    replayed first), the units are scored on the validation data, the model is pruned, and
    ``pruned.ckpt``, ``report.txt`` and ``report.json`` are written to ``output_dir``. The
    pruned checkpoint loads with ``Module.load_from_checkpoint`` when the module uses
    ``lightning_fair.FairPruningMixin``, with ``torch.load(..., weights_only=True)``, and with
    ``--ckpt_path`` of ``fit`` (fine-tune), ``validate`` and ``test``.

    Args:
        model: the LightningModule to load the checkpoint into (``--model``, or from the checkpoint's hyperparameters).
        ckpt_path: the trained checkpoint to prune (required).
        datamodule: its ``val_dataloader`` gives the calibration data (the model's own ``val_dataloader`` otherwise).
        output_dir: where pruned.ckpt, report.txt and report.json go (default: ``<trainer.default_root_dir>/pruned``).
        weights_only: ``torch.load(ckpt_path, weights_only=...)``; None means True. Accepted also so that a
            config file written by ``fit`` can be reused.
        logits: picks the class logits from the model's output when it returns more (the import path of
            a function, e.g. ``--logits=my_package.first_output``); default: the output or its ``logits``.
        config: a :class:`~lightning_fair.PruneConfig` (from Python; the command line gives its fields).
        **options: the fields of :class:`~lightning_fair.PruneConfig` (``--tolerance``, ``--target_macs``,
            ``--preset``, ``--memory_budget``, ...; ``lightning-fair prune --help`` lists them).

    Returns:
        The :class:`lightning_fair.PruneResult` (the model is pruned in place).
    """
    config = configure(config, **options)
    if not ckpt_path or not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"prune needs an existing checkpoint file (--ckpt_path), got {ckpt_path!r}")
    if any(isinstance(c, FairPruneCallback) for c in self.callbacks):
        rank_zero_warn(
            "lightning_fair: FairPruneCallback (from --prune.* or trainer.callbacks) acts in fit/validate "
            "and is ignored by the prune subcommand, which takes --tolerance, --target_macs, ..."
        )
        self.callbacks = [c for c in self.callbacks if not isinstance(c, FairPruneCallback)]
    output_dir = output_dir or os.path.join(self.default_root_dir, "pruned")

    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True if weights_only is None else weights_only)
    restore_checkpoint(model, checkpoint)
    model.to(self.strategy.root_device)
    loader = validation_loader(model, datamodule)
    before = evaluate(model, loader, logits=logits)

    example = inputs_to(first_sample(default_unpack(next(iter(loader)))[0]), self.strategy.root_device)
    calibration = loader
    if self.progress_bar_callback is not None and self.is_global_zero:
        total = len(loader) if hasattr(loader, "__len__") else None
        calibration = Progress(loader, min(total, config.max_batches) if total and config.max_batches else total)
    with torch.inference_mode(False), torch.enable_grad():
        result = fair_prune(
            model, calibration, config, example_inputs=example, logits=logits, verbose=self.is_global_zero
        )
    after = evaluate(model, loader, logits=logits)

    paths = {name: os.path.join(output_dir, name) for name in _FILES}
    if self.is_global_zero:
        os.makedirs(output_dir, exist_ok=True)
    self.strategy.barrier("lightning_fair.prune")
    self.strategy.connect(model)
    self.save_checkpoint(paths["pruned.ckpt"], weights_only=False)
    if self.is_global_zero and not isinstance(model, FairPruningMixin):
        # without the mixin nothing wrote the pruning history: add it, so the file stays restorable
        saved = torch.load(paths["pruned.ckpt"], map_location="cpu", weights_only=True)
        saved[CHECKPOINT_KEY] = pruning_state(model)
        torch.save(saved, paths["pruned.ckpt"])
        rank_zero_warn(
            f"lightning_fair: {type(model).__name__} does not use FairPruningMixin; "
            "add it to restore the pruned checkpoint with load_from_checkpoint"
        )

    report = result.report
    data = {
        "source_checkpoint": os.path.abspath(ckpt_path),
        "checkpoint": os.path.abspath(paths["pruned.ckpt"]),
        "options": {
            **config.to_dict(),
            # as used: "auto" resolved, and what the scores were made with (prune's report says)
            **{key: result.report.options[key] for key in ("num_projections", "pairs")},
        },
        "level": result.level,
        "level_name": result.level_name,
        **({"tolerance": result.level} if result.level_name == "tolerance" else {}),
        "validation": {"before": before, "after": after},
        "calibration": {
            "loss": result.scores.config.get("calibration_loss"),
            "accuracy": result.scores.config.get("calibration_accuracy"),
        },
        # units removed per layer, as the report counts them (coupled layers reconciled)
        "counts": {row.name: row.before - row.after for row in result.report.layers if row.before != row.after},
        "report": report.to_dict(),
    }
    text = (
        f"lightning_fair: pruned {ckpt_path}\n{report}\n"
        f"validation loss {before['loss']:.4f} -> {after['loss']:.4f}, "
        f"accuracy {before['accuracy']:.2%} -> {after['accuracy']:.2%}\n"
        f"pruned checkpoint: {paths['pruned.ckpt']}\n"
    )
    if self.is_global_zero:
        with open(paths["report.txt"], "w") as handle:
            handle.write(text)
        with open(paths["report.json"], "w") as handle:
            json.dump(data, handle, indent=2)
        print(text, end="", flush=True)
    return result


class FairTrainer(Trainer):
    """Lightning's ``Trainer``, plus the ``prune`` and ``sweep`` methods behind the subcommands of
    :class:`FairCLI`."""

    prune = prune_checkpoint
    sweep = sweep_checkpoint


def _group_help() -> str:
    """Help of ``--prune``: how it switches on, and every option with its default."""
    params = inspect.signature(FairPruneCallback.__init__).parameters
    defaults = {
        name: p.default
        for name, p in params.items()
        if name != "self" and name not in _GROUP_SKIP and p.kind is not p.VAR_KEYWORD
    }
    defaults.update({field.name: field.default for field in dataclasses.fields(PruneConfig)})
    options = ", ".join(f"--prune.{name} ({'null' if value is None else value})" for name, value in defaults.items())
    return (
        "FAIR pruning during fit/validate with lightning_fair.FairPruneCallback; off unless asked for: "
        "any --prune.OPTION=VALUE, --prune=FairPruneCallback (all defaults) or a 'prune:' config section "
        f"switches it on, --prune=null off. Options (defaults): {options}. "
        "Descriptions and types: --prune.help FairPruneCallback."
    )


class FairCLI(TrainerInstantiation, LightningCLI):
    """``LightningCLI`` with an optional ``--prune.*`` group and a ``prune`` subcommand.

    Use it like LightningCLI: ``FairCLI(MyModule, MyDataModule)`` in a script, or
    ``FairCLI()`` (what ``lightning-fair`` runs) with ``--model=...``/``--data=...`` or a config.

    - ``--prune.*``: :class:`~lightning_fair.FairPruneCallback`, added to the Trainer only if a
      ``--prune.OPTION``, ``--prune=FairPruneCallback`` or a ``prune:`` config section is given
      (``--prune=null`` removes one). It is accepted by every subcommand so that one config
      file serves all of them; it acts in ``fit`` and, with ``--prune.prune_at=validate``, in
      ``validate``.
    - ``prune --ckpt_path=...``: post-training one-shot pruning of a checkpoint, see
      :func:`prune_checkpoint` for its options and outputs.

    The Trainer class must have a ``prune`` method: :class:`FairTrainer` by default; any other
    ``trainer_class`` gets it mixed in.
    """

    def __init__(self, *args: Any, trainer_class: Any = FairTrainer, **kwargs: Any) -> None:
        if isinstance(trainer_class, type) and not hasattr(trainer_class, "prune"):
            trainer_class = type(
                f"Fair{trainer_class.__name__}",
                (trainer_class,),
                {"prune": prune_checkpoint, "sweep": sweep_checkpoint},
            )
        super().__init__(*args, trainer_class=trainer_class, **kwargs)

    @staticmethod
    def subcommands() -> Dict[str, set]:
        return {
            **LightningCLI.subcommands(),
            "prune": {"model", "datamodule", "config"},
            "sweep": {"model", "datamodule", "config"},
        }

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_subclass_arguments(
            FairPruneCallback, "prune", required=False, fail_untyped=False, skip=_GROUP_SKIP, help=_group_help()
        )
        parser.callback_keys.append("prune")

    def check_callbacks(self, config: Dict[str, Any], callbacks: list) -> None:
        """Before the Trainer is made: refuse two FairPruneCallbacks that prune at the same moment."""
        listed = config.get("callbacks") or []
        listed = listed if isinstance(listed, list) else [listed]
        keys = [c.state_key for c in [*listed, *callbacks] if isinstance(c, FairPruneCallback)]
        if len(keys) != len(set(keys)):
            # Lightning refuses two callbacks with the same state_key anyway; say what to change
            raise MisconfigurationException(
                "lightning_fair: two FairPruneCallbacks prune at the same moment (--prune.* / a 'prune:' section "
                "and trainer.callbacks); keep one, or give them different prune_at"
            )


def misspelt_prune_flags(args: List[str]) -> str:
    """``"option --prune.target_mac (did you mean 'target_macs'?)"`` for ``--prune.NAME`` flags that
    name no option of :class:`~lightning_fair.FairPruneCallback`, or ""."""
    known = tuple(
        sorted(
            {n for n in inspect.signature(FairPruneCallback.__init__).parameters if n not in ("self", "options")}
            | {field.name for field in dataclasses.fields(PruneConfig)}
            | {"help"}
        )
    )
    names = []
    for arg in args:
        if isinstance(arg, str) and arg.startswith("--prune."):
            name = arg[len("--prune.") :].split("=", 1)[0].split(".", 1)[0]
            if name and name not in known:
                names.append(name)
    if not names:
        return ""
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"--prune.{name}" + (f" (did you mean --prune.{close[0]}?)" if close else ""))
    return f"option{'s' if len(names) > 1 else ''} " + ", ".join(parts)


def main(args: Optional[List[str]] = None) -> None:
    """Entry point of the ``lightning-fair`` command (also ``python -m lightning_fair.lightning.cli``).
    The working folder is on the import path, as under ``python -m``: ``--model=mymodule.MyModel``
    finds ``mymodule.py`` there."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    misspelt = misspelt_prune_flags(sys.argv[1:] if args is None else args)
    if misspelt:  # said first and alone, not under jsonargparse's usage text
        print(f"lightning-fair: error: unknown {misspelt}; --prune.help FairPruneCallback lists them", file=sys.stderr)
        raise SystemExit(2)
    FairCLI(
        args=args,
        parser_kwargs={
            "description": "LightningCLI with FAIR-Pruner structured pruning "
            "(lightning_fair): --prune.* during fit, and the prune subcommand."
        },
    )


if __name__ == "__main__":
    main()
