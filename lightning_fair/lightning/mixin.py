"""``FairPruningMixin``: LightningModule checkpoints that hold a pruned model.

Saving writes the pruning history (:mod:`lightning_fair.removal.history`) into the checkpoint; loading
replays it before the weights load. The module does not import Lightning itself: a plain
``nn.Module`` user never needs it.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..removal.history import CHECKPOINT_KEY, check_fits, pruning_state, replay_pruning
from ..runtime.guards import rollback
from .private import attached_trainer, legacy_state_key, loads_state_dict_through_module
from .state import check_callback_state

__all__ = ["FairPruningMixin"]

#: the undo of a replay, between on_load_checkpoint and Lightning's load_state_dict
PENDING = "_lightning_fair_pending_load"


class FairPruningMixin:
    """Mixin for a LightningModule whose checkpoints may hold a pruned model.

    Put it before ``LightningModule``: ``class Net(FairPruningMixin, L.LightningModule)``.
    Saving writes the pruning history into the checkpoint; loading replays it before the
    weights are loaded (``load_from_checkpoint`` and ``trainer.fit(..., ckpt_path=...)``).

    Loading is checked before anything is kept: a history that does not fit the module
    (unknown layer, index out of range, edited by hand), or weights whose shapes differ from
    the shapes the history gives, raise ValueError and leave the module exactly as it was
    (instead of Lightning's size-mismatch error on a half-reshaped module). If Lightning's
    ``load_state_dict`` then fails anyway (e.g. a missing key under strict loading), the replay
    is undone too. In a Trainer, the state of its FairPruneCallbacks is checked first.
    """

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = pruning_state(self)
        if state is not None:
            checkpoint[CHECKPOINT_KEY] = state
        super().on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._check_fair_callback_states(checkpoint)
        self.__dict__.pop(PENDING, None)
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            super().on_load_checkpoint(checkpoint)
            return
        before = {id(t) for t in self.state_dict(keep_vars=True).values()}  # alive: the snapshot holds them
        with rollback(self) as snapshot:  # on any failure: the module as it was
            replay_pruning(self, state)  # atomic on its own
            super().on_load_checkpoint(checkpoint)
            weights = checkpoint.get("state_dict")
            if isinstance(weights, Mapping):
                check_fits(self, weights, keys=False)  # shapes; missing/unexpected keys: Lightning's strict=...
                if self._loads_state_dict_next():  # then undo the replay if that load fails
                    self.__dict__[PENDING] = (snapshot, weights, before)

    def load_state_dict(self, state_dict, *args, **kwargs):
        pending = self.__dict__.pop(PENDING, None)
        if pending is None or pending[1] is not state_dict:
            return super().load_state_dict(state_dict, *args, **kwargs)
        snapshot, _, before = pending
        # torch copies every tensor it can before it reports missing keys: keep the values of those the
        # replay did not replace (the replaced ones come back with the snapshot)
        with torch.no_grad():
            kept = [(t, t.detach().clone()) for t in self.state_dict(keep_vars=True).values() if id(t) in before]
        try:
            return super().load_state_dict(state_dict, *args, **kwargs)
        except BaseException:  # e.g. a missing key under strict loading: back to the module before the load
            snapshot.restore()
            snapshot.restore_flags(self)
            with torch.no_grad():
                for tensor, value in kept:
                    tensor.copy_(value)
            raise

    def _loads_state_dict_next(self) -> bool:
        """Whether ``self.load_state_dict(checkpoint["state_dict"])`` follows this hook: in
        ``load_from_checkpoint`` and with strategies that load through the module (not FSDP,
        DeepSpeed or ModelParallel, which load by themselves)."""
        return loads_state_dict_through_module(self)

    def _check_fair_callback_states(self, checkpoint: dict) -> None:
        # Lightning restores callbacks after the module: check the state of the FairPruneCallbacks
        # the attached Trainer will restore first, so that a malformed one fails before the module
        # is reshaped and loaded.
        trainer = attached_trainer(self)
        states = checkpoint.get("callbacks")
        if trainer is None or not isinstance(states, Mapping):
            return
        from .callback import (
            FairPruneCallback,  # Lightning is there: a Trainer is attached
        )

        for callback in getattr(trainer, "callbacks", []):
            if isinstance(callback, FairPruneCallback):
                state = states.get(callback.state_key, states.get(legacy_state_key(callback)))
                if state:  # what Lightning passes to load_state_dict later
                    check_callback_state(state, owner=callback.state_key)
