"""``OnTheFlyPruning``: Pruning On-the-Fly (arXiv 2212.12651, our reconstruction) in a ``Trainer``.

The hooks only decide *when*; the work is in :mod:`lightning_fair.methods.onthefly` (plain PyTorch):
``setup`` makes the layers hyperspherical (before the optimizers exist), every optimizer step
adds the polarising penalty's gradient, and at the chosen moment the layers are pruned with
mean recovery and the optimizers re-pointed.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from ..methods.onthefly import (
    RECOVERIES,
    add_polarization_grad,
    check_ratio,
    hold_pruned,
    hypersphere_of,
    hyperspherical_layers,
    make_hyperspherical,
    prune_on_the_fly,
    select_layers,
    unregister_hypersphere,
)
from .callback import PruningError
from .private import rewrap_ddp
from .progress import announce
from .state import to_plain

__all__ = ["OnTheFlyPruning"]


class OnTheFlyPruning(Callback):
    r"""Train hyperspherical layers with a polarising penalty, then prune without fine-tuning.

    Our reconstruction of Pruning On-the-Fly (Liu & Liu, arXiv 2212.12651; see
    :mod:`lightning_fair.methods.onthefly` and docs/method.md). In ``setup`` every chosen Conv/Linear
    weight becomes ``radius * V / ||V||`` per output filter (``torch.nn.utils.parametrize``;
    ``V`` is the same Parameter object, ``radius`` a new learnable one, so
    ``configure_optimizers`` sees both). Before every optimizer step the gradient of
    ``penalty * (sum_{|w_hat| < t} |w_hat| - beta * sum_{|w_hat| >= t} |w_hat|)`` (``t``: the
    ``ratio``-quantile of the layer's ``|w_hat|``, recomputed each step) is added to ``V.grad``:
    the loss Lightning computes, logs and backpropagates is not changed. At ``prune_at`` the
    parametrisation is removed (weights kept), the ``ratio`` smallest-``|w_hat|`` weights of each
    layer are pruned (unstructured) and replaced per ``recovery``, the optimizers drop the radii
    and forget the weights' state; if training goes on, pruned entries stay zero / tied.

    Logged every step: ``onthefly/penalty``, ``onthefly/pruned_energy`` (share of the normalised
    weights' squared norm that pruning now would remove) and ``onthefly/separation`` (mean
    ``|w_hat|`` kept over pruned); after pruning: ``onthefly/pruned_fraction``,
    ``onthefly/zero_fraction`` and ``onthefly/pruned_energy_at_pruning``.

    Args:
        ratio: fraction of each layer's weights to prune, in (0, 1).
        penalty: strength ``lambda`` of the penalty (0: hyperspherical training only).
        beta: weight of the push-apart term for the kept weights.
        recovery: ``"channel"`` (pruned entries set to the mean of the pruned values, one value
            per output channel; not zero), ``"layer"`` (one value per layer) or None (zero).
        start_epoch: first epoch with the penalty.
        prune_at: ``"fit_end"`` or an epoch (prune at its end; later epochs train the pruned model).
        layers: names of the layers to use; default every Conv1d/2d/3d and Linear but the last
            registered (the output layer) and ``ignored_layers``.
        ignored_layers: names of layers (and their submodules) left alone.
        include_output: also use the last Conv/Linear when ``layers`` is None.
        verbose: print the pruning report on rank zero.

    Raises:
        ValueError: a bad option, at construction; a layer name not in the module, in ``setup``.

    Example::

        import lightning as L
        from lightning_fair import OnTheFlyPruning

        trainer = L.Trainer(max_epochs=10, callbacks=[OnTheFlyPruning(ratio=0.5)])
        trainer.fit(model, datamodule=dm)       # model ends pruned, no fine-tuning
        trainer.save_checkpoint("pruned.ckpt")  # plain state_dict keys again
    """

    def __init__(
        self,
        ratio: float = 0.5,
        penalty: float = 1e-2,
        beta: float = 0.2,
        recovery: Optional[str] = "channel",
        start_epoch: int = 0,
        prune_at: Union[int, str] = "fit_end",
        layers: Optional[List[str]] = None,
        ignored_layers: Optional[List[str]] = None,
        include_output: bool = False,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        check_ratio(ratio)
        for name, value in (("penalty", penalty), ("beta", beta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if recovery not in RECOVERIES:
            raise ValueError(f"recovery must be 'channel', 'layer' or None, got {recovery!r}")
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(f"start_epoch must be an integer >= 0, got {start_epoch!r}")
        if not (
            prune_at == "fit_end" or (isinstance(prune_at, int) and not isinstance(prune_at, bool) and prune_at >= 0)
        ):
            raise ValueError(f"prune_at must be 'fit_end' or an epoch number >= 0, got {prune_at!r}")
        if isinstance(prune_at, int) and prune_at < start_epoch:
            raise ValueError(
                f"prune_at={prune_at} comes before start_epoch={start_epoch}: the penalty would never "
                "act; use prune_at >= start_epoch"
            )
        for name, value in (("layers", layers), ("ignored_layers", ignored_layers)):
            if value is not None and (isinstance(value, str) or not all(isinstance(v, str) for v in value)):
                raise ValueError(f"{name} must be a list of module names, got {value!r}")
        if layers is not None and ignored_layers is not None:
            raise ValueError("give layers (the layers to use) or ignored_layers (the ones to leave out), not both")
        self.ratio, self.penalty, self.beta, self.recovery = float(ratio), float(penalty), float(beta), recovery
        self.start_epoch, self.prune_at = start_epoch, prune_at
        self.layers, self.ignored_layers, self.include_output = layers, ignored_layers, include_output
        self.verbose = verbose
        #: ``{layer: bool mask}`` of the pruned entries once pruned (persisted in checkpoints)
        self.masks: Dict[str, torch.Tensor] = {}
        #: one plain-data record per pruning (persisted in checkpoints)
        self.events: List[Dict[str, Any]] = []
        self.last_report = None
        self._module: Optional[LightningModule] = None

    @property
    def pruned(self) -> bool:
        return bool(self.events)

    # ------------------------------------------------------------------ when
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._module = pl_module
        if stage != "fit" or self.pruned:
            return
        select_layers(pl_module, self.layers, self.ignored_layers, self.include_output)  # names checked first
        names = make_hyperspherical(pl_module, self.layers, self.ignored_layers, self.include_output)
        if not names:
            rank_zero_warn("OnTheFlyPruning found no Conv/Linear layer to use; pass layers=[...]")

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        in_optimizers = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        missing = [
            n for n, m in hyperspherical_layers(pl_module).items() if id(hypersphere_of(m).radius) not in in_optimizers
        ]
        if missing:
            rank_zero_warn(
                f"OnTheFlyPruning: the radius of {len(missing)} layer(s) (e.g. {missing[0]}) is in no "
                "optimizer and stays fixed; build the optimizer from self.parameters() in "
                "configure_optimizers to learn it"
            )

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if self.pruned:
            hold_pruned(pl_module, self.masks, self.recovery)
            return
        if trainer.current_epoch < self.start_epoch:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        stats = add_polarization_grad(pl_module, self.ratio, self.penalty, self.beta, params=params)
        for key in ("value", "pruned_energy", "separation"):
            name = "penalty" if key == "value" else key
            pl_module.log(f"onthefly/{name}", getattr(stats, key), on_step=True, on_epoch=False)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.prune_at == trainer.current_epoch and not self.pruned:
            self.prune_now(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.prune_at == "fit_end" and not self.pruned:
            self.prune_now(trainer, pl_module)
        elif not self.pruned:
            rank_zero_warn(
                f"OnTheFlyPruning(prune_at={self.prune_at}) did not prune: training ended at epoch "
                f"{trainer.current_epoch}; the layers stay hyperspherical (use prune_at='fit_end' or "
                "lightning_fair.methods.onthefly.prune_on_the_fly)"
            )

    # ------------------------------------------------------------------ what
    def prune_now(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Prune now (see :func:`lightning_fair.methods.onthefly.prune_on_the_fly`), re-point the optimizers, log.

        Atomic: on failure the module (parametrisations, values) and the optimizers are as they
        were, nothing is recorded, and :class:`lightning_fair.lightning.callback.PruningError` is raised
        (the original exception is its ``__cause__``).
        """
        optimizers = list(trainer.optimizers)
        try:
            report = prune_on_the_fly(pl_module, self.ratio, self.recovery, optimizers=optimizers)
        except Exception as error:
            raise PruningError(
                f"lightning_fair: on-the-fly pruning failed; the model and optimizers were left "
                f"unchanged ({type(error).__name__}: {error})"
            ) from error
        self.masks = report.masks
        self.last_report = report
        rewrap_ddp(trainer, pl_module)
        energy = sum(r.pruned_energy * r.weights for r in report.layers) / max(report.weights, 1)
        self.events.append(
            to_plain(
                {
                    "epoch": int(trainer.current_epoch),
                    "global_step": int(trainer.global_step),
                    "report": report.to_dict(),
                },
                "event",
            )
        )
        metrics = {
            "onthefly/pruned_fraction": report.pruned / max(report.weights, 1),
            "onthefly/zero_fraction": report.zero_fraction,
            "onthefly/pruned_energy_at_pruning": energy,
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if self.verbose:
            announce(trainer, f"lightning_fair: pruned on the fly at epoch {trainer.current_epoch}\n{report}")

    # ------------------------------------------------------------------ persistence
    @override
    def state_dict(self) -> Dict[str, Any]:
        """``{"events": [...], "masks": {layer: bool tensor}}`` (loads with ``torch.load(..., weights_only=True)``)."""
        return {"events": to_plain(self.events, "events"), "masks": {k: v.cpu() for k, v in self.masks.items()}}

    @override
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore the record; a checkpoint written after pruning also turns the layers plain again.

        Lightning loads the module's weights first: a pruned checkpoint's plain ``weight``
        entries went into the hyperspherical layers as ``V = W``, ``radius = ||W||``; removing
        the parametrisation keeping ``V`` gives back ``W`` exactly (before the optimizers are built).
        """
        events, masks = state_dict.get("events"), state_dict.get("masks", {})
        if (
            not isinstance(events, list)
            or not isinstance(masks, dict)
            or not all(isinstance(v, torch.Tensor) and v.dtype == torch.bool for v in masks.values())
        ):
            raise ValueError(
                "OnTheFlyPruning: the callback state in the checkpoint is malformed (expected "
                "{'events': [...], 'masks': {layer: bool tensor}}); use the checkpoint as written"
            )
        self.events, self.masks = list(events), dict(masks)
        if self.pruned and self._module is not None:
            for module in hyperspherical_layers(self._module).values():
                unregister_hypersphere(module, keep_original=True)
