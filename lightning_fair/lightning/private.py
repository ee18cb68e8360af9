"""Every use of a private Lightning API in lightning_fair, in one place.

Lightning offers no public way to do these; each is small, guarded where it may be absent, and
tested against the pinned Lightning version (lightning>=2.2). When Lightning changes, this is
the one file to look at.

- :func:`attached_trainer`: ``LightningModule._trainer`` (``module.trainer`` raises when unattached).
- :func:`attached_val_loader`: a loop's ``_data_source`` (validation data given to ``fit``/``validate``
  before the loop has built its dataloaders).
- :func:`rewrap_ddp`: ``strategy._setup_model`` and ``strategy._register_ddp_hooks`` (a pruned module
  needs a new DistributedDataParallel wrapper: the old reducer holds the old parameters).
- :func:`legacy_state_key`: ``Callback._legacy_state_key`` (checkpoints of older Lightning versions).
- :func:`generated_state_key`: ``Callback._generate_state_key`` (one state entry per pruning moment).
- :class:`TrainerInstantiation`: overrides ``LightningCLI._instantiate_trainer`` (drops the optional
  ``--prune`` group when it is absent, refuses two callbacks that prune at the same moment).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = [
    "TrainerInstantiation",
    "attached_trainer",
    "attached_val_loader",
    "generated_state_key",
    "legacy_state_key",
    "loads_state_dict_through_module",
    "rewrap_ddp",
]


def attached_trainer(module: LightningModule) -> Optional[Trainer]:
    """The Trainer ``module`` is attached to, or None (``module.trainer`` raises instead)."""
    return getattr(module, "_trainer", None)


def loads_state_dict_through_module(module: LightningModule) -> bool:
    """Whether ``module.load_state_dict(checkpoint["state_dict"])`` follows ``on_load_checkpoint``:
    in ``load_from_checkpoint`` and with strategies that load through the module (not FSDP,
    DeepSpeed or ModelParallel, which load by themselves)."""
    trainer = attached_trainer(module)
    if trainer is None:
        return True
    from lightning.pytorch.strategies import Strategy

    return type(trainer.strategy).load_model_state_dict is Strategy.load_model_state_dict


def attached_val_loader(trainer: Trainer):
    """The validation data given to ``fit``/``validate`` (loader, datamodule or module hook), or None."""
    try:  # Lightning's private data source of the loop that will validate
        loop = trainer.validate_loop if trainer.state.fn == "validate" else trainer.fit_loop.epoch_loop.val_loop
        source = loop._data_source
        if source.instance is None or not source.is_defined():
            return None
        return source.dataloader()
    except AttributeError:  # pragma: no cover - other Lightning versions
        return None


def rewrap_ddp(trainer: Trainer, module: LightningModule) -> Optional[Any]:
    """Under DDP, wrap ``module`` (just pruned) in a new DistributedDataParallel, as the strategy did
    at setup; returns the old wrapper (to put back on failure), or None if nothing was done."""
    from torch.nn.parallel import DistributedDataParallel

    strategy = trainer.strategy
    if not isinstance(strategy.model, DistributedDataParallel) or not hasattr(strategy, "_setup_model"):
        return None
    old = strategy.model
    try:
        strategy.model = strategy._setup_model(module)
        if hasattr(strategy, "_register_ddp_hooks"):
            strategy._register_ddp_hooks()
    except BaseException:
        strategy.model = old
        raise
    return old


def legacy_state_key(callback: Callback) -> str:
    """The key older Lightning versions stored ``callback``'s state under."""
    return callback._legacy_state_key


def generated_state_key(callback: Callback, **identity: Any) -> str:
    """``callback``'s state key made of its class name and ``identity`` (Lightning's own format)."""
    return callback._generate_state_key(**identity)


class TrainerInstantiation:
    """Mixin for a ``LightningCLI`` subclass: before the Trainer is made, drop ``None`` callbacks (an
    absent optional callback group) and pass ``(config, callbacks)`` to ``self.check_callbacks``."""

    check_callbacks: Callable[[Dict[str, Any], list], None]

    def _instantiate_trainer(self, config: Dict[str, Any], callbacks: list) -> Trainer:
        callbacks = [c for c in callbacks if c is not None]
        self.check_callbacks(config, callbacks)
        return super()._instantiate_trainer(config, callbacks)
