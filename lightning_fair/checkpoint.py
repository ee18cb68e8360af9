"""Pruned models at rest: the pruning history as plain data, replayed before weights load.

:func:`lightning_fair.prune` records on the model what it removed (torch-pruning's history
rows ``[layer, is_out, idxs]`` and the example input's shape). A fresh model of the same
architecture is brought to the pruned shapes by replaying those rows on a freshly built
DependencyGraph, after which a plain ``state_dict`` loads. Everything saved is plain data, so
files load with ``torch.load(..., weights_only=True)``.

- plain ``nn.Module``: :func:`save_pruned` / :func:`load_pruned`;
- LightningModule: add :class:`FairPruningMixin`; checkpoints then carry the history and
  ``MyModule.load_from_checkpoint(path)`` / ``trainer.fit(model, ckpt_path=path)`` restore it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch_pruning as tp
from torch import nn

from .removal import ModelSnapshot

__all__ = [
    "CHECKPOINT_KEY",
    "FairPruningMixin",
    "load_pruned",
    "pruning_state",
    "record_pruning",
    "replay_pruning",
    "save_pruned",
]

#: Key of the pruning state in Lightning checkpoints and in files written by save_pruned.
CHECKPOINT_KEY = "lightning_fair"
_FORMAT = "lightning_fair.pruning/1"
_ATTRIBUTE = "_lightning_fair_pruning"


def pruning_state(model: nn.Module) -> Optional[dict]:
    """The plain-data pruning state recorded on ``model`` (None if it was never pruned)."""
    return model.__dict__.get(_ATTRIBUTE)


def record_pruning(model: nn.Module, history: list, example_inputs: torch.Tensor) -> None:
    """Append history rows of a prune that just happened to ``model``'s recorded state."""
    state = pruning_state(model) or {
        "format": _FORMAT,
        "history": [],
        "example_input": {"shape": list(example_inputs.shape[1:]), "dtype": str(example_inputs.dtype).split(".")[-1]},
    }
    state["history"] = list(state["history"]) + [[str(n), bool(o), [int(i) for i in idxs]] for n, o, idxs in history]
    model.__dict__[_ATTRIBUTE] = state


def _check_state(state) -> dict:
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(f"not a lightning_fair pruning state (expected format {_FORMAT!r})")
    return state


def replay_pruning(model: nn.Module, state: dict) -> None:
    """Bring ``model`` to the pruned shapes that ``state`` describes (rows already applied are skipped).

    Atomic: if a row does not fit the model, the model is left as it was and ValueError is raised.
    """
    state = _check_state(state)
    done = len((pruning_state(model) or {"history": []})["history"])
    rows = state["history"][done:]
    if not rows:
        return
    modules = dict(model.named_modules())
    unknown = sorted({row[0] for row in rows if row[0] not in modules})
    if unknown:
        raise ValueError(f"the pruning history names layers this model does not have: {unknown[:5]}")
    spec = state["example_input"]
    example = torch.zeros(1, *spec["shape"], dtype=getattr(torch, spec["dtype"]),
                          device=next((p.device for p in model.parameters()), torch.device("cpu")))
    snapshot = ModelSnapshot(model)
    try:
        for param in model.parameters():
            param.requires_grad_(True)  # torch-pruning traces autograd; frozen layers must show up
        with torch.inference_mode(False), torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
            snapshot.include(graph.module2node)
            for name, is_out, idxs in rows:
                _replay_row(graph, modules[name], name, bool(is_out), [int(i) for i in idxs])
    except Exception as error:
        snapshot.restore()
        snapshot.restore_flags(model)
        raise ValueError(f"the pruning history does not fit this model: {error}") from error
    snapshot.restore_flags(model)
    model.__dict__[_ATTRIBUTE] = {**state, "history": list(state["history"])}


def _replay_row(graph, module: nn.Module, name: str, is_out: bool, idxs: list) -> None:
    # torch-pruning's load_pruning_history silently ignores indices that do not exist
    # (the layer keeps a different number of channels than recorded): check them first.
    size = (graph.get_out_channels if is_out else graph.get_in_channels)(module)
    if size is not None and (not idxs or min(idxs) < 0 or max(idxs) >= size or len(set(idxs)) >= size
                             or len(set(idxs)) != len(idxs)):
        raise ValueError(f"row for {name!r} removes {'output' if is_out else 'input'} channels {idxs[:8]} "
                         f"but the layer has {size}")
    pruner = graph.get_pruner_of_module(module)
    if pruner is None:
        raise ValueError(f"torch-pruning cannot prune {name!r} ({type(module).__name__})")
    function = pruner.prune_out_channels if is_out else pruner.prune_in_channels
    graph.get_pruning_group(module, function, idxs).prune(record_history=False)


def _check_fits(model: nn.Module, state_dict: dict) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state_dict)
                        if tuple(expected[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or mismatched:
        raise ValueError(f"the saved weights do not fit the replayed model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape mismatch {mismatched[:5]}")


def save_pruned(model: nn.Module, path) -> None:
    """Save a pruned plain ``nn.Module`` as pruning history + ``state_dict``.

    Example:
        ``save_pruned(result.model, "pruned.pt")``, later
        ``load_pruned(MyNet(), "pruned.pt")`` gives the pruned network back.
    """
    state = pruning_state(model)
    if state is None:
        raise ValueError("this model carries no lightning_fair pruning history; prune it with lightning_fair.prune")
    torch.save({CHECKPOINT_KEY: state, "state_dict": model.state_dict()}, path)


def load_pruned(model: nn.Module, path, map_location=None) -> nn.Module:
    """Replay the pruning saved by :func:`save_pruned` on a fresh ``model``, load its weights, return it.

    Raises ValueError, leaving ``model`` as it was, if the history or the weights do not fit it.
    """
    data = torch.load(path, weights_only=True, map_location=map_location)
    snapshot = ModelSnapshot(model)
    replay_pruning(model, data[CHECKPOINT_KEY])
    try:
        _check_fits(model, data["state_dict"])  # before load_state_dict writes into any tensor
    except ValueError:
        snapshot.restore()
        snapshot.restore_flags(model)
        raise
    model.load_state_dict(data["state_dict"])
    return model


class FairPruningMixin:
    """Mixin for a LightningModule whose checkpoints may hold a pruned model.

    Put it before ``LightningModule``: ``class Net(FairPruningMixin, L.LightningModule)``.
    Saving writes the pruning history into the checkpoint; loading replays it before the
    weights are loaded (``load_from_checkpoint`` and ``trainer.fit(..., ckpt_path=...)``).
    """

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = pruning_state(self)
        if state is not None:
            checkpoint[CHECKPOINT_KEY] = state
        super().on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is not None:
            replay_pruning(self, state)
        super().on_load_checkpoint(checkpoint)
