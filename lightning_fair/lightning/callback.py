"""``FairPruneCallback``: FAIR pruning inside a Lightning ``Trainer``.

The hook only decides *when*; the work is :func:`lightning_fair.prune` (scores -> counts ->
removal -> report) followed by re-pointing the optimizers and logging.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

from ..collect.collector import default_unpack, first_inputs
from ..config import PruneConfig, configure
from ..pipeline.evaluation import evaluate
from ..pipeline.oneshot import prune
from ..pipeline.schedule import check_prune_at, step_options
from ..removal.history import CHECKPOINT_KEY, pruning_state
from ..repair.batchnorm import recalibrate_bn
from ..runtime.batches import inputs_to
from ..runtime.distributed import is_distributed
from ..runtime.optim import repoint_optimizer
from ..scoring.compute import compute_scores
from ..units.cost import measure
from .mixin import FairPruningMixin
from .private import attached_val_loader, generated_state_key, rewrap_ddp
from .progress import Progress, announce
from .state import check_callback_state, to_plain
from .undo import Undo
from .writing import write_pruned_checkpoint

__all__ = ["FairPruneCallback", "PruningError"]


class PruningError(RuntimeError):
    """Pruning inside a Trainer failed; the module and optimizers were put back as they were.

    The original exception is ``__cause__``.
    """


#: training batches used to re-estimate BatchNorm statistics before each validation after a
#: pruning (``recalibrate_each_epoch``): pycls' "precise BN" uses 8192 images, about this many batches.
RECALIBRATION_BATCHES = 64


class FairPruneCallback(Callback):
    r"""Prune the LightningModule with FAIR-Pruner at a chosen moment of ``fit`` or ``validate``.

    Statistics come from one extra pass (one forward and one backward per batch) over the
    validation dataloader, or ``dataloader``, with a progress bar. Units are removed through
    torch-pruning's DependencyGraph; the optimizers are re-pointed at the new parameters (their
    state carried over for kept channels, schedulers untouched), frozen parameters stay frozen
    and train/eval flags are restored. MACs and params before/after, channels per layer,
    the tolerance and the calibration loss/accuracy before and after (under DDP, over every rank's
    shard together) are logged through the Trainer's loggers; the report is printed on rank zero. The pruning
    history is written into
    checkpoints (restore them with :class:`lightning_fair.FairPruningMixin`).

    Args:
        config: a :class:`~lightning_fair.PruneConfig`: the budget (``tolerance``, ``target_macs``,
            ``target_params`` or ``ratio``), the preset and its options, ranking, criterion,
            statistics sizes, ``max_batches``, ``ignored_layers`` (qualified names in the
            LightningModule), ``memory_budget``, ... Default ``PruneConfig()``.
        **options: any field of :class:`~lightning_fair.PruneConfig`, overriding ``config``
            (``FairPruneCallback(target_macs=0.5, prune_at=2)``); these are the ``--prune.*`` flags
            of the command line.
        prune_at: ``"fit_end"`` (default), an epoch number (prune at the end of that training
            epoch; the following epochs fine-tune the pruned model), ``"validate"`` (prune
            a trained model when ``trainer.validate(...)`` ends), or a strictly increasing list
            of epochs (gradual pruning, e.g. ``[2, 4, 6]``: one step at the end of each, with
            fresh statistics each time). With a list and ``target_macs``/``target_params``, step
            ``i`` of ``n`` keeps ``1 - (1 - target) * i / n`` of the **original** model's MACs
            (params): linear in the removed fraction, the last step's is the target (each step
            keeps at most its fraction, less by up to one unit's share); a step the model
            already meets (something else pruned it further) is skipped with a note. With a
            list and a tolerance (or ``ratio``), every step applies it to the model as it is
            then, so the removal compounds. A single epoch's target, like every callback's when
            several are chained, is relative to the model it sees.
        dataloader: calibration data; the Trainer's validation dataloader by default.
        unpack: ``batch -> (inputs, labels)``; ``(x, y, ...)`` and ``{"x", "y"}`` batches by default.
        loss_fn: ``loss_fn(logits, labels)``; cross-entropy by default.
        logits: ``output -> class logits`` for a module whose forward returns more (a tuple, a dict, a
            model output object): e.g. ``logits=lambda out: out[0]``; on the command line the import
            path of a function (``--prune.logits=my_package.first_output``). Default: the output
            itself, or its ``"logits"`` entry / ``.logits`` attribute.
        progress: show a progress bar during the statistics pass.
        verbose: print the per-layer report on rank zero.
        recalibrate_each_epoch: after a pruning during ``fit``, re-estimate the BatchNorm running
            statistics on (at most ``RECALIBRATION_BATCHES`` = 64) training batches before every
            following validation (:func:`lightning_fair.recalibrate_bn`, "precise BN"). The running
            averages (momentum 0.1) lag the weights, which move fast after a pruning; without this the
            validation accuracy of a pruned model can drop while its training accuracy rises
            (measured in docs/lightning.md). No effect on models without BatchNorm.
        write_checkpoint: after each pruning, write the pruned model (with its pruning history) to
            ``pruned.ckpt`` in the Trainer's checkpoint directory (``ModelCheckpoint``'s, else
            ``<log_dir>/checkpoints``), log the path and record it in the event; after a pruning at
            ``"fit_end"`` a ``last.ckpt`` of ``ModelCheckpoint(save_last=True)`` is rewritten too.
            A pruning at fit end or in ``validate`` would otherwise never reach disk.

    Raises:
        ValueError: a bad option, at construction.
        MisconfigurationException: no calibration data at pruning time.

    Example::

        import lightning as L
        from lightning_fair import FairPruneCallback

        trainer = L.Trainer(max_epochs=5, callbacks=[FairPruneCallback(target_macs=0.5, prune_at=2)])
        trainer.fit(model, datamodule=dm)   # epochs 3-5 fine-tune the pruned model
    """

    def __init__(
        self,
        config: Optional[PruneConfig] = None,
        prune_at: Union[int, str, List[int]] = "fit_end",
        *,
        dataloader: Optional[Any] = None,
        unpack: Optional[Callable] = None,
        loss_fn: Optional[Callable] = None,
        logits: Optional[Callable] = None,
        progress: bool = True,
        verbose: bool = True,
        recalibrate_each_epoch: bool = True,
        write_checkpoint: bool = True,
        **options: Any,
    ) -> None:
        super().__init__()
        #: the pruning options (validated here: a bad one fails at construction)
        self.config = configure(config, **options)
        prune_at = check_prune_at(prune_at)  # a list becomes a tuple
        self.prune_at = prune_at
        self.dataloader = dataloader
        self.unpack = unpack or default_unpack
        self.loss_fn = loss_fn
        self.logits = logits
        self.progress = progress
        self.verbose = verbose
        if not isinstance(recalibrate_each_epoch, bool):
            raise ValueError(f"recalibrate_each_epoch must be True or False, got {recalibrate_each_epoch!r}")
        self.recalibrate_each_epoch = recalibrate_each_epoch
        if not isinstance(write_checkpoint, bool):
            raise ValueError(f"write_checkpoint must be True or False, got {write_checkpoint!r}")
        self.write_checkpoint = write_checkpoint
        #: one plain-data record per pruning event (persisted in checkpoints)
        self.events: List[Dict[str, Any]] = []
        self.last_result = None

    # ------------------------------------------------------------------ checks before training
    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """What can be known before the first training step is checked now: the schedule against
        ``max_epochs``, the mixin that makes pruned checkpoints load, the first calibration batch."""
        if self.prune_at == "validate":
            return
        self._warned_schedule = False
        epochs = self._epochs()
        last = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        if last is not None and epochs and max(epochs) >= last:
            late = [e for e in epochs if e >= last]
            self._warned_schedule = True
            rank_zero_warn(
                f"FairPruneCallback(prune_at={self.prune_at if isinstance(self.prune_at, int) else list(epochs)}) "
                f"cannot prune at epoch(s) {late}: max_epochs={last} ends training at epoch {last - 1}"
                + ("; the gradual schedule stops short of its target" if len(epochs) > 1 else "")
                + f"; give epochs below {last} (or a larger max_epochs)"
            )
        if not isinstance(pl_module, FairPruningMixin) and (trainer.checkpoint_callbacks or self.write_checkpoint):
            rank_zero_warn(
                f"{type(pl_module).__name__} does not use FairPruningMixin: checkpoints written after the prune "
                f"hold narrower layers than {type(pl_module).__name__}() builds, and load_from_checkpoint will "
                f"fail with a size mismatch; declare class {type(pl_module).__name__}(FairPruningMixin, "
                "L.LightningModule) (the mixin first)"
            )
        self._check_first_batch(trainer, pl_module)

    def _check_first_batch(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The first calibration batch unpacks into inputs and labels and holds finite values."""
        try:
            loader = self._calibration_loader(trainer, pl_module)
        except MisconfigurationException:
            return  # the validation data may come later (said again, with the fix, at the prune)
        try:
            batch = next(iter(loader))
        except StopIteration:
            raise MisconfigurationException("FairPruneCallback: the calibration dataloader yields no batches") from None
        except TypeError:
            return  # not iterable before the loop sets it up
        where = "FairPruneCallback(dataloader=...)" if self.dataloader is not None else "the validation dataloader"
        try:
            inputs, labels = self.unpack(batch)
        except (TypeError, ValueError) as error:
            raise MisconfigurationException(
                f"FairPruneCallback: the first batch of {where} does not unpack into (inputs, labels): {error}. "
                "Calibration needs labelled batches; pass unpack=lambda batch: (inputs, labels), or labelled data"
            ) from error
        tensors = (
            [inputs]
            if isinstance(inputs, torch.Tensor)
            else [v for v in (inputs.values() if isinstance(inputs, dict) else []) if isinstance(v, torch.Tensor)]
        )
        for tensor in tensors + [torch.as_tensor(labels)]:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise MisconfigurationException(
                    f"FairPruneCallback: the first batch of {where} holds NaN or inf values; the scores would "
                    "be undefined. Clean the data (or the transform that makes it) before training"
                )

    # ------------------------------------------------------------------ when
    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch in self._epochs() and not self._done("fit", trainer):
            self.prune_now(trainer, pl_module, stage="fit")

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.prune_at == "fit_end" and not self._done("fit", trainer):
            self.prune_now(trainer, pl_module, stage="fit")
        elif getattr(self, "_warned_schedule", False):
            pass  # said at fit start
        elif isinstance(self.prune_at, int) and not any(e["epoch"] == self.prune_at for e in self.events):
            rank_zero_warn(
                f"FairPruneCallback(prune_at={self.prune_at}) did not prune: training ended at epoch "
                f"{trainer.current_epoch}; use a smaller prune_at or prune_at='fit_end'"
            )
        elif isinstance(self.prune_at, tuple):
            # epochs whose end training never reached (a step skipped because it was met was reached)
            missed = [
                e
                for e in self.prune_at
                if e >= trainer.current_epoch and not any(event["epoch"] == e for event in self.events)
            ]
            if missed:
                rank_zero_warn(
                    f"FairPruneCallback(prune_at={list(self.prune_at)}) did not prune at epoch(s) {missed}: "
                    f"training ran {trainer.current_epoch} epoch(s), so the schedule's last step(s) never "
                    "came; give epochs below max_epochs (or a larger max_epochs)"
                )

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.prune_at == "validate" and trainer.state.fn == "validate":
            self.prune_now(trainer, pl_module, stage="validate")

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.recalibrate_each_epoch or trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        # several FairPruneCallbacks (pruning at different moments): the first one that re-estimates acts
        mine = [cb for cb in trainer.callbacks if isinstance(cb, FairPruneCallback) and cb.recalibrate_each_epoch]
        pruned = any(e["stage"] == "fit" for cb in mine for e in cb.events)
        if pruned and mine[0] is self:
            self.recalibrate_now(trainer, pl_module)

    def recalibrate_now(self, trainer: Trainer, pl_module: LightningModule) -> List[str]:
        """Re-estimate the BatchNorm running statistics on training batches (see
        ``recalibrate_each_epoch``); returns the re-estimated layers."""
        loaders = trainer.train_dataloader
        if isinstance(loaders, dict):
            loaders = next(iter(loaders.values()), None)
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        if loaders is None:
            return []
        distributed = trainer.world_size > 1 and is_distributed()
        return recalibrate_bn(
            pl_module, loaders, max_batches=RECALIBRATION_BATCHES, unpack=self.unpack, distributed=distributed
        )

    def _done(self, stage: str, trainer: Trainer) -> bool:
        return any(e["stage"] == stage and e["epoch"] == trainer.current_epoch for e in self.events)

    def _epochs(self) -> Tuple[int, ...]:
        """The epochs at whose end this callback prunes (none for 'fit_end' and 'validate')."""
        if isinstance(self.prune_at, tuple):
            return self.prune_at
        return (self.prune_at,) if isinstance(self.prune_at, int) else ()

    def _config_now(self, trainer: Trainer, pl_module: LightningModule, example) -> Tuple[Optional[PruneConfig], dict]:
        """The config for :func:`lightning_fair.prune` now and the schedule's record of this step
        (:func:`lightning_fair.pipeline.schedule.step_options`); None (and an info note) for a step already met."""
        example = inputs_to(example, pl_module.device)
        original = self.events[0]["report"] if self.events else None
        config, record = step_options(
            self.config, self.prune_at, trainer.current_epoch, original, lambda: measure(pl_module, example)
        )
        if config is None:
            rank_zero_info(f"lightning_fair: {record['skipped']}")
        return config, record

    # ------------------------------------------------------------------ what
    def prune_now(self, trainer: Trainer, pl_module: LightningModule, stage: str = "fit") -> None:
        """Score, prune, re-point the optimizers and log, now.

        Atomic: if scoring, removal, compensation, BatchNorm re-estimation, re-pointing the
        optimizers or evaluating the pruned model fails, the module (the same parameter objects
        with the same values, buffers, train/eval flags, ``requires_grad``) and the optimizers
        (param groups and state) are put back exactly as they were, no event is recorded, and
        :class:`PruningError` says at which step it failed (the original exception is its
        ``__cause__``; KeyboardInterrupt and other BaseExceptions propagate unchanged, after the
        same restore). Missing calibration data raises MisconfigurationException before anything
        starts.

        At an epoch of a list ``prune_at`` with a target, it prunes to that step's scheduled
        fraction of the original model, or does nothing (an info note) if the model already
        keeps no more than that.
        """
        loader = self._calibration_loader(trainer, pl_module)
        calibration = self._with_progress(loader, trainer)
        # DDP (one or many nodes): every rank scores its shard; the statistics are merged so all
        # ranks remove the same channels (lightning_fair.runtime.distributed)
        distributed = trainer.world_size > 1 and is_distributed()
        step = "reading the first calibration batch"
        with torch.inference_mode(False), torch.enable_grad():
            undo = Undo(pl_module, trainer.optimizers)
            try:
                # example inputs from the plain loader: peeking at a progress bar would close it
                example = first_inputs(loader, self.unpack)
                step = "measuring the model for the pruning schedule"
                config, schedule = self._config_now(trainer, pl_module, example)
                if config is None:  # this step of the schedule is already met: nothing to do
                    return
                if config.target and min(config.target.values()) >= 1.0:
                    rank_zero_info(f"lightning_fair: target {config.target} keeps everything; nothing to prune")
                    return
                step = "scoring units on the calibration data"
                scores = compute_scores(
                    pl_module,
                    calibration,
                    config,
                    loss_fn=self.loss_fn,
                    unpack=self.unpack,
                    logits=self.logits,
                    distributed=distributed,
                    verbose=self.verbose and trainer.is_global_zero,
                )
                step = "removing units (lightning_fair.prune: removal, compensation, BatchNorm re-estimation)"
                result = prune(
                    pl_module,
                    calibration,
                    config,
                    scores=scores,
                    unpack=self.unpack,
                    loss_fn=self.loss_fn,
                    logits=self.logits,
                    example_inputs=example,
                    distributed=distributed,
                )
                step = "re-pointing the optimizers at the pruned parameters"
                dropped = sum(repoint_optimizer(opt, undo.params, pl_module, result.kept) for opt in undo.optimizers)
                step = "evaluating the pruned model on the calibration data"
                # under DDP: over every rank's shard (torchmetrics all-reduces the running means)
                after = evaluate(
                    pl_module,
                    loader,
                    loss_fn=self.loss_fn,
                    unpack=self.unpack,
                    logits=self.logits,
                    max_batches=config.max_batches,
                    distributed=distributed,
                )
                step = "wrapping the pruned model for distributed training again"
                undo.wrapped = rewrap_ddp(trainer, pl_module)
            except BaseException as error:
                undo.restore()
                if undo.wrapped is not None:
                    trainer.strategy.model = undo.wrapped
                if not isinstance(error, Exception):
                    raise
                raise PruningError(
                    f"lightning_fair: pruning failed while {step}; the model and optimizers were left unchanged "
                    f"({type(error).__name__}: {error})"
                ) from error
        if dropped:
            rank_zero_warn(
                f"lightning_fair: optimizer state of {dropped} pruned parameter(s) could not be mapped "
                "to the kept channels and was reset"
            )
        self.last_result = result
        self._log(trainer, pl_module, result, after, stage, schedule)
        if self.write_checkpoint:
            self._write(trainer, stage)

    def _write(self, trainer: Trainer, stage: str) -> None:
        last_too = stage == "fit" and self.prune_at == "fit_end"
        path = write_pruned_checkpoint(trainer, last_too)
        if path is not None:
            self.events[-1]["checkpoint"] = path

    def _calibration_loader(self, trainer: Trainer, pl_module: LightningModule):
        if self.dataloader is not None:
            return self.dataloader
        loaders = trainer.val_dataloaders
        if loaders is None:  # validation has not run yet (no sanity check, check_val_every_n_epoch > 1)
            loaders = attached_val_loader(trainer)
        if loaders is None and trainer.datamodule is not None and hasattr(trainer.datamodule, "val_dataloader"):
            loaders = trainer.datamodule.val_dataloader()
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        if loaders is None:
            raise MisconfigurationException(
                "FairPruneCallback needs labelled calibration data: give the Trainer validation data "
                "(val_dataloaders or a datamodule with val_dataloader) or pass FairPruneCallback(dataloader=...)"
            )
        return loaders

    def _with_progress(self, loader, trainer: Trainer):
        if not self.progress or not trainer.is_global_zero or trainer.progress_bar_callback is None:
            return loader
        total = len(loader) if hasattr(loader, "__len__") else None
        if total is not None and self.config.max_batches:
            total = min(total, self.config.max_batches)
        return Progress(loader, total, trainer.progress_bar_callback)

    def _log(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        result,
        after: dict,
        stage: str,
        schedule: Optional[dict] = None,
    ) -> None:
        report, config = result.report, result.scores.config
        # MACs/params kept of the model this callback first pruned (several steps: the product so far)
        first = self.events[0]["report"] if self.events else report.to_dict()
        of_original = {
            "macs_of_original": report.macs_after / max(first["macs_before"], 1),
            "params_of_original": report.params_after / max(first["params_before"], 1),
        }
        metrics = {
            "fair/macs_before": report.macs_before,
            "fair/macs_after": report.macs_after,
            "fair/macs_ratio": report.macs_ratio,
            "fair/params_before": report.params_before,
            "fair/params_after": report.params_after,
            "fair/params_ratio": report.params_ratio,
            # the level under its own name: fair/tolerance (ToD), fair/threshold (global), fair/ratio (uniform)
            f"fair/{result.level_name}": result.level,
            "fair/calibration_loss_before": config["calibration_loss"],
            "fair/calibration_accuracy_before": config["calibration_accuracy"],
            "fair/calibration_loss_after": after["loss"],
            "fair/calibration_accuracy_after": after["accuracy"],
            **{f"fair/{key}": value for key, value in of_original.items()},
        }
        metrics.update({f"fair/kept_channels/{row.name}": row.after for row in report.layers})
        # the event first: the model is pruned now, whatever a logger does
        self.events.append(
            to_plain(
                {
                    "stage": stage,
                    "epoch": int(trainer.current_epoch),
                    "global_step": int(trainer.global_step),
                    "level": float(result.level),
                    "level_name": result.level_name,
                    **({"tolerance": float(result.level)} if result.level_name == "tolerance" else {}),
                    "macs_ratio": float(report.macs_ratio),
                    "params_ratio": float(report.params_ratio),
                    "report": report.to_dict(),
                    **of_original,
                    **(schedule or {}),
                },
                "event",
            )
        )
        for logger in trainer.loggers:  # with the epoch, as Lightning logs self.log's metrics
            logger.log_metrics({**metrics, "epoch": trainer.current_epoch}, step=trainer.global_step)
        # also where EarlyStopping, ModelCheckpoint and the user read metrics (self.log is not allowed in
        # on_fit_end / on_validation_end, where pruning happens)
        trainer.callback_metrics.update({key: torch.tensor(float(value)) for key, value in metrics.items()})
        if self.verbose:
            where = f", step {schedule['step']} of {schedule['steps']}" if schedule else ""
            goal = f" (scheduled {schedule['scheduled']:.1%})" if schedule and "scheduled" in schedule else ""
            announce(
                trainer,
                (
                    f"lightning_fair: pruned at epoch {trainer.current_epoch} ({stage}{where})\n{report}\n"
                    f"kept of the original model: MACs {of_original['macs_of_original']:.1%}{goal}, "
                    f"params {of_original['params_of_original']:.1%}\n"
                    f"calibration loss {config['calibration_loss']:.4f} -> {after['loss']:.4f}, "
                    f"accuracy {config['calibration_accuracy']:.2%} -> {after['accuracy']:.2%}"
                ),
            )

    # ------------------------------------------------------------------ persistence
    @property
    @override
    def state_key(self) -> str:
        # one callback per moment: several may share a Trainer (e.g. prune at epochs 2 and 5); a list of
        # epochs is written as a list, so that [2, 4] and (2, 4) resume from the same entry
        prune_at = list(self.prune_at) if isinstance(self.prune_at, tuple) else self.prune_at
        return generated_state_key(self, prune_at=prune_at)

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: Dict[str, Any]) -> None:
        state = pruning_state(pl_module)
        if state is not None:
            checkpoint[CHECKPOINT_KEY] = state

    @override
    def state_dict(self) -> Dict[str, Any]:
        """``{"events": [...]}``, plain data only (loads with ``torch.load(..., weights_only=True)``)."""
        return {"events": to_plain(self.events, "events")}

    @override
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore the events; ValueError (nothing changed) if the state is not one this callback writes."""
        self.events = check_callback_state(state_dict, owner=self.state_key)
