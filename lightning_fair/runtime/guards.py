"""Putting a model back: train/eval flags, and everything a failed pruning may have changed.

Pruning replaces parameters and edits module attributes instead of writing into tensors, so a
shallow snapshot of every module's dicts is enough to undo it exactly (:class:`ModelSnapshot`);
:func:`rollback` wraps a block with one, :func:`preserved_modes` only keeps train/eval flags.
"""

from __future__ import annotations

import contextlib
import functools
import traceback
from typing import Iterator

from torch import nn

__all__ = ["ModelSnapshot", "on_uncompiled", "preserved_modes", "rollback", "uncompiled"]


@contextlib.contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Run the block, then put every submodule's ``training`` flag back as it was (also on error).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
        >>> with preserved_modes(net):
        ...     _ = net.eval()
        >>> net.training, net[1].training
        (True, True)
    """
    flags = {module: module.training for module in model.modules()}
    try:
        yield
    finally:
        for module, flag in flags.items():
            module.training = flag


def _is_compiled(module: nn.Module) -> bool:
    # torch.compile's wrapper (torch._dynamo.eval_frame.OptimizedModule), without importing dynamo
    return type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None), nn.Module)


@contextlib.contextmanager
def uncompiled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every ``torch.compile``d submodule of ``model`` is replaced by the module it
    compiles (as Lightning's ``to_uncompiled`` does for the LightningModule); yields the model to
    work on (``model._orig_mod`` if ``model`` itself is compiled). The wrappers are put back after,
    around the same (possibly pruned) modules; they recompile at their next call.

    Pruning and scoring then see plain layer names (no ``_orig_mod``) and their hooks run eagerly,
    instead of making dynamo recompile the wrapped forward for every hook and shape.
    """
    while _is_compiled(model):
        model = model._orig_mod
    swapped = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent._modules.items()
        if child is not None and _is_compiled(child)
    ]
    for parent, name, child in swapped:
        plain = child
        while _is_compiled(plain):
            plain = plain._orig_mod
        parent._modules[name] = plain
    try:
        yield model
    finally:
        for parent, name, child in swapped:
            parent._modules[name] = child


def on_uncompiled(function):
    """Run ``function(model, ...)`` on :func:`uncompiled` ``model``."""

    @functools.wraps(function)
    def wrapper(model, *args, **kwargs):
        with uncompiled(model) as plain:
            return function(plain, *args, **kwargs)

    return wrapper


@contextlib.contextmanager
def rollback(model: nn.Module) -> Iterator["ModelSnapshot"]:
    """Snapshot ``model``; if the block raises (anything, KeyboardInterrupt too), restore the
    modules, parameters, buffers, train/eval flags and ``requires_grad`` exactly, then re-raise.

    The snapshot is yielded: ``include`` more modules, ``restore`` after a trial, ``restore_flags``.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> weight = net.weight
        >>> try:
        ...     with rollback(net):
        ...         net.weight = nn.Parameter(weight[:1].detach())
        ...         raise RuntimeError("failed half-way")
        ... except RuntimeError:
        ...     pass
        >>> net.weight is weight
        True
    """
    snapshot = ModelSnapshot(model)
    try:
        yield snapshot
    except BaseException as error:
        if isinstance(error, MemoryError):  # free what the failed step held before putting the model back
            traceback.clear_frames(error.__traceback__)
        try:
            snapshot.restore()
            snapshot.restore_flags(model)
        except BaseException as failed:  # the original error stays the one raised, with this as a note
            if hasattr(error, "add_note"):
                error.add_note(
                    f"putting the model back failed too ({type(failed).__name__}: {failed}): "
                    "the model may be left partly pruned"
                )
        raise


class ModelSnapshot:
    """Shallow snapshot of every module's attributes, parameters and buffers.

    Pruning replaces parameters and edits attributes instead of writing into tensors,
    so restoring these dicts puts the model back exactly as it was.
    """

    def __init__(self, model: nn.Module):
        self.state = []
        self.include(model.modules())
        self.requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        self.training = {m: m.training for m in model.modules()}

    def include(self, modules) -> None:
        """Also snapshot these modules (e.g. torch-pruning's concat/split bookkeeping ops)."""
        seen = {id(entry[0]) for entry in self.state}
        for m in modules:
            if isinstance(m, nn.Module) and id(m) not in seen:
                seen.add(id(m))
                self.state.append(
                    (m, _copy_lists(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules), type(m))
                )

    def restore(self) -> None:
        """Undo every change made since the snapshot (can be called more than once)."""
        for module, attributes, parameters, buffers, modules, cls in self.state:
            module.__class__ = cls  # head removal turns nn.MultiheadAttention into its head-pruned subclass
            module.__dict__.clear()
            module.__dict__.update(_copy_lists(attributes))
            module.__dict__.update(_parameters=dict(parameters), _buffers=dict(buffers), _modules=dict(modules))

    def restore_flags(self, model: nn.Module) -> None:
        """Put back train/eval flags and ``requires_grad`` (pruning makes new parameters)."""
        for module, flag in self.training.items():
            module.training = flag
        for name, param in model.named_parameters():
            if name in self.requires_grad:
                param.requires_grad_(self.requires_grad[name])


def _copy_lists(attributes: dict) -> dict:
    # torch-pruning edits some list attributes in place (e.g. a concat's sizes).
    return {k: list(v) if isinstance(v, list) else v for k, v in attributes.items()}
