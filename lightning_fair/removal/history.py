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

import collections
import copy
import math
from typing import Mapping, Optional

import torch
from torch import nn

from ..runtime.guards import on_uncompiled, rollback
from ..units.families import replay_row, row_target
from .graph import build_graph

__all__ = [
    "CHECKPOINT_KEY",
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


_FIX = (
    "the pruning state was edited by hand, damaged, or written for another architecture; load the file "
    "as lightning_fair wrote it, into a module built with the architecture and arguments it was pruned from "
    "(or prune the model again)"
)
_KEYS = ("format", "history", "example_input")
#: the example input is allocated to trace the model: refuse an edited shape that would exhaust memory
_MAX_EXAMPLE_ELEMENTS = 2**28


def describe(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _row_problem(row) -> Optional[str]:
    """What is wrong with one history row (None if it is a well-formed ``[name, is_out, idxs]``)."""
    if not isinstance(row, (list, tuple)) or len(row) != 3:
        return "a row must be [layer name, is_out (bool), [channel indices]]"
    name, is_out, idxs = row
    if not isinstance(name, str):
        return f"the layer name must be a string, got {type(name).__name__}"
    if not isinstance(is_out, bool):
        return f"is_out must be True or False, got {describe(is_out, 30)}"
    if not isinstance(idxs, (list, tuple)) or not idxs:
        return "the channel indices must be a non-empty list of integers"
    bad = [i for i in idxs if not is_int(i)]
    if bad:
        return f"channel indices must be integers, got {describe(bad[0], 30)} ({type(bad[0]).__name__})"
    if min(idxs) < 0:
        return f"channel indices must be >= 0, got {min(idxs)}"
    if len(set(idxs)) != len(idxs):
        duplicated = sorted(i for i, n in collections.Counter(idxs).items() if n > 1)
        return f"channel indices repeat: {duplicated[:8]}"
    return None


def _check_state(state) -> dict:
    """Check the structure of a pruning state (plain data, nothing touched); ValueError if malformed."""
    if not isinstance(state, dict):
        raise ValueError(
            f"not a lightning_fair pruning state: expected a dict with format {_FORMAT!r}, "
            f"got {type(state).__name__}; {_FIX}"
        )
    if state.get("format") != _FORMAT:
        raise ValueError(
            f"not a lightning_fair pruning state (expected format {_FORMAT!r}, got "
            f"{describe(state.get('format'), 40)}); {_FIX}"
        )
    missing = [key for key in _KEYS if key not in state]
    if missing:
        raise ValueError(f"the pruning state lacks the key(s) {missing}; {_FIX}")
    history = state["history"]
    if not isinstance(history, (list, tuple)):
        raise ValueError(
            f"the pruning history must be a list of [layer, is_out, indices] rows, got {type(history).__name__}; {_FIX}"
        )
    for number, row in enumerate(history):
        problem = _row_problem(row)
        if problem:
            raise ValueError(f"pruning history row {number} {describe(row)}: {problem}; {_FIX}")
    spec = state["example_input"]
    shape = spec.get("shape") if isinstance(spec, dict) else None
    dtype = spec.get("dtype") if isinstance(spec, dict) else None
    if not isinstance(shape, (list, tuple)) or not all(is_int(d) and d >= 1 for d in shape):
        raise ValueError(
            f"the pruning state's example_input shape must be a list of positive integers "
            f"(the input's shape without the batch dimension), got {describe(shape, 60)}; {_FIX}"
        )
    if math.prod(shape) > _MAX_EXAMPLE_ELEMENTS:
        raise ValueError(
            f"the pruning state's example_input shape {list(shape)} is implausibly large (replaying "
            f"would allocate {math.prod(shape):,} elements); {_FIX}"
        )
    if not isinstance(dtype, str) or not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(
            f"the pruning state's example_input dtype must name a torch dtype (e.g. 'float32'), "
            f"got {describe(dtype, 40)}; {_FIX}"
        )
    return state


def _rows(history) -> list:
    return [[name, is_out, [int(i) for i in idxs]] for name, is_out, idxs in history]


@on_uncompiled
def replay_pruning(model: nn.Module, state: dict) -> None:
    """Bring ``model`` to the pruned shapes that ``state`` describes (rows already applied are skipped).

    The whole state is checked before the model is touched: its structure (format, keys, every
    row a ``[layer name, bool, [distinct indices >= 0]]``, the example input), that the model's own
    history (if it was pruned already) is the beginning of this one, and that every remaining
    row names a layer of the model. Atomic: if anything does not fit (e.g. an index out of range
    for the layer at that point), the model is left exactly as it was and ValueError is raised,
    naming the row.
    """
    state = _check_state(state)
    history = _rows(state["history"])
    mine = _rows((pruning_state(model) or {"history": []})["history"])
    if history[: len(mine)] != mine:
        raise ValueError(
            f"this model already carries a pruning history ({len(mine)} rows) that is not the "
            f"beginning of the one to replay ({len(history)} rows): it was pruned differently; "
            "replay the history on a freshly built model"
        )
    rows = history[len(mine) :]
    if not rows:
        return
    modules = dict(model.named_modules())
    for number, (name, _, _) in enumerate(rows, start=len(mine)):
        if _row_module(name) not in modules:
            unknown = sorted({row[0] for row in rows if _row_module(row[0]) not in modules})
            raise ValueError(
                f"pruning history row {number} names the layer {name!r}, which this model does not "
                f"have (unknown layers: {unknown[:5]}); {_FIX}"
            )
    spec = state["example_input"]
    example = torch.zeros(
        1,
        *spec["shape"],
        dtype=getattr(torch, spec["dtype"]),
        device=next((p.device for p in model.parameters()), torch.device("cpu")),
    )
    try:
        with rollback(model) as snapshot:  # on any failure: the model as it was
            for param in model.parameters():
                param.requires_grad_(True)  # torch-pruning traces autograd; frozen layers must show up
            with torch.inference_mode(False), torch.enable_grad():
                graph = None  # traced only for torch-pruning's rows (unit-family rows need none)
                if any(row_target(name) is None for name, _, _ in rows):
                    graph = build_graph(model, example)  # as prune built it (a channel shuffle's reshape unmapped)
                    snapshot.include(graph.module2node)
                for number, (name, is_out, idxs) in enumerate(rows, start=len(mine)):
                    try:
                        if graph is None or row_target(name) is not None:  # a unit family's units
                            replay_row(model, name, idxs)
                        else:
                            _replay_row(graph, modules[name], name, is_out, idxs)
                    except Exception as error:
                        raise ValueError(f"pruning history row {number} ({name!r}): {error}") from error
    except Exception as error:
        raise ValueError(
            f"the pruning history does not fit this model, which was left as it was: {error}; {_FIX}"
        ) from error
    snapshot.restore_flags(model)
    model.__dict__[_ATTRIBUTE] = {**copy.deepcopy(state), "history": history}


def _row_module(name: str) -> str:
    target = row_target(name)
    return name if target is None else target[1]


def _replay_row(graph, module: nn.Module, name: str, is_out: bool, idxs: list) -> None:
    # torch-pruning's load_pruning_history silently ignores indices that do not exist
    # (the layer keeps a different number of channels than recorded): check them first.
    side = "output" if is_out else "input"
    size = (graph.get_out_channels if is_out else graph.get_in_channels)(module)
    if size is None:
        raise ValueError(f"torch-pruning does not see {side} channels of {name!r} ({type(module).__name__})")
    if max(idxs) >= size:
        raise ValueError(
            f"removes {side} channel {max(idxs)} but the layer has {size} {side} channels (index out of range)"
        )
    if len(idxs) >= size:
        raise ValueError(f"removes {len(idxs)} {side} channels but the layer has only {size}")
    pruner = graph.get_pruner_of_module(module)
    if pruner is None:
        raise ValueError(f"torch-pruning cannot prune {name!r} ({type(module).__name__})")
    function = pruner.prune_out_channels if is_out else pruner.prune_in_channels
    graph.get_pruning_group(module, function, idxs).prune(record_history=False)


def _shape(tensor) -> Optional[tuple]:
    if not isinstance(tensor, torch.Tensor) or isinstance(tensor, nn.parameter.UninitializedTensorMixin):
        return None  # lazy modules: nothing to compare yet
    return tuple(tensor.shape)


def check_fits(model: nn.Module, state_dict: Mapping, keys: bool = True) -> None:
    """ValueError unless every tensor of ``state_dict`` has the shape ``model`` has for it (and,
    with ``keys``, the two name the same tensors). Nothing is written."""
    expected = model.state_dict()
    mismatched = [(k, _shape(state_dict[k]), _shape(expected[k])) for k in expected if k in state_dict]
    mismatched = [(k, saved, mine) for k, saved, mine in mismatched if saved != mine and None not in (saved, mine)]
    missing = sorted(set(expected) - set(state_dict)) if keys else []
    unexpected = sorted(set(state_dict) - set(expected)) if keys else []
    if not (missing or unexpected or mismatched):
        return
    problems = [
        f"{k!r} is {list(saved)} in the checkpoint but {list(mine)} in the model" for k, saved, mine in mismatched[:3]
    ]
    if len(mismatched) > 3:
        problems.append(f"{len(mismatched) - 3} more tensors differ in shape")
    if missing:
        problems.append(f"missing from the checkpoint: {missing[:5]}")
    if unexpected:
        problems.append(f"not in the model: {unexpected[:5]}")
    raise ValueError(
        "the saved weights do not fit the model its pruning history gives ("
        + "; ".join(problems)
        + "): the weights or the history were edited, or come from different checkpoints; the model "
        "was left as it was; load an unedited file written by lightning_fair"
    )


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

    Raises ValueError, leaving ``model`` exactly as it was, if the file is not one written by
    :func:`save_pruned`, or its history or weights do not fit ``model``.
    """
    data = torch.load(path, weights_only=True, map_location=map_location)
    if not isinstance(data, dict) or CHECKPOINT_KEY not in data or not isinstance(data.get("state_dict"), Mapping):
        raise ValueError(
            f"{path} is not a file written by lightning_fair.save_pruned (expected a dict with "
            f"{CHECKPOINT_KEY!r} and 'state_dict')"
        )
    with rollback(model):
        replay_pruning(model, data[CHECKPOINT_KEY])  # atomic on its own
        check_fits(model, data["state_dict"])  # before load_state_dict writes into any tensor
        model.load_state_dict(data["state_dict"])
    return model
