"""The callbacks' state in checkpoints: plain data only, checked before it is used.

:func:`to_plain` turns a record into what ``torch.load(..., weights_only=True)`` reads;
:func:`check_callback_state` validates a checkpointed ``FairPruneCallback`` state (naming the
bad entry) before anything is restored. No Lightning here.
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import Mapping, Optional

import torch

from ..removal.history import describe, is_int

__all__ = ["check_callback_state", "to_plain"]

_EVENT_KEYS = ("stage", "epoch", "global_step", "macs_ratio", "params_ratio", "report")
_STAGES = ("fit", "validate")


def to_plain(value, where: str = "state"):
    """A copy of ``value`` made of None, bool, int, float, str, lists and str-keyed dicts only
    (what ``torch.load(..., weights_only=True)`` reads); TypeError for anything else."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, torch.Tensor):
        return to_plain(value.tolist(), where)
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{where} has a key that is not a string: not plain data")
        return {str(k): to_plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where} is a {type(value).__name__}, not plain data")


def _plain_problem(value, where: str) -> Optional[str]:
    """Where ``value`` holds something other than plain data (None if nothing)."""
    if value is None or type(value) in (bool, int, float, str):
        return None
    if isinstance(value, (list, tuple)):
        return next((p for i, v in enumerate(value) if (p := _plain_problem(v, f"{where}[{i}]"))), None)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has a key that is not a string ({describe(key, 30)})"
            problem = _plain_problem(item, f"{where}[{key!r}]")
            if problem:
                return problem
        return None
    return f"{where} is a {type(value).__name__}, not plain data"


def check_callback_state(state, owner: str = "FairPruneCallback") -> list:
    """Check a checkpointed FairPruneCallback state (``{"events": [...]}``); return a copy of its events.

    ValueError, naming the entry, if it is not what the callback writes: a dict whose ``events``
    is a list of plain-data records with ``stage`` ('fit' or 'validate'), ``epoch`` and
    ``global_step`` (integers >= 0), ``level`` (0.2: ``tolerance``, which 0.2 writes only when the
    level is one), ``macs_ratio`` and ``params_ratio`` (finite numbers) and ``report`` (a dict).
    Other keys are allowed (plain data only).
    """

    def fail(problem: str):
        raise ValueError(
            f"{owner}: the callback state in the checkpoint is malformed ({problem}); it was edited or damaged. "
            f"Use the checkpoint as it was written, or delete checkpoint['callbacks'][{owner!r}] to resume "
            "without the record of past pruning (the callback then prunes again at its moment)"
        )

    if not isinstance(state, Mapping):
        fail(f"expected a dict, got {type(state).__name__}")
    if "events" not in state:
        fail("no 'events' entry")
    events = state["events"]
    if not isinstance(events, (list, tuple)):
        fail(f"'events' must be a list, got {type(events).__name__}")
    for number, event in enumerate(events):
        where = f"events[{number}]"
        if not isinstance(event, Mapping):
            fail(f"{where} must be a dict, got {type(event).__name__}")
        missing = [key for key in _EVENT_KEYS if key not in event]
        if "level" not in event and "tolerance" not in event:  # 0.1 events hold the level as "tolerance"
            missing.append("level")
        if missing:
            fail(f"{where} lacks {missing}")
        if event["stage"] not in _STAGES:
            fail(f"{where}['stage'] must be one of {_STAGES}, got {describe(event['stage'], 30)}")
        for key in ("epoch", "global_step"):
            if not is_int(event[key]) or event[key] < 0:
                fail(f"{where}[{key!r}] must be an integer >= 0, got {describe(event[key], 30)}")
        for key in [k for k in ("level", "tolerance") if k in event] + ["macs_ratio", "params_ratio"]:
            value = event[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                fail(f"{where}[{key!r}] must be a finite number, got {describe(value, 30)}")
        if not isinstance(event["report"], Mapping):
            fail(f"{where}['report'] must be a dict, got {type(event['report']).__name__}")
    problem = _plain_problem(dict(state), "the state")
    if problem:
        fail(problem)
    return copy.deepcopy([dict(event) for event in events])
