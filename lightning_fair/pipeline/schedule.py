"""When :class:`~lightning_fair.FairPruneCallback` prunes, and how far each step of a gradual schedule goes.

Plain functions, no Lightning. ``prune_at`` is a moment (``"fit_end"``, ``"validate"``), one epoch,
or a strictly increasing list of epochs. With a list and a target, step ``i`` of ``n`` keeps

    ``1 - (1 - target) * i / n``  of the **original** model's MACs (or parameters)

(linear in the removed fraction; the last step's fraction is the target). :func:`lightning_fair.prune`
takes targets relative to the model it is given, so each step asks it for
``scheduled / (current / original)`` (:func:`step_options`); a step whose scheduled fraction the
model already meets is skipped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple, Union

__all__ = ["MOMENTS", "check_prune_at", "relative_target", "scheduled_fraction", "step_of", "step_options"]

#: the named moments of ``prune_at`` (besides epoch numbers)
MOMENTS = ("fit_end", "validate")

PruneAt = Union[int, str, Tuple[int, ...]]


def _is_epoch(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_prune_at(prune_at) -> PruneAt:
    """``prune_at`` as the callback keeps it (a list or tuple becomes a tuple); ValueError otherwise.

    Example:
        >>> check_prune_at([2, 4, 6])
        (2, 4, 6)
        >>> check_prune_at("fit_end")
        'fit_end'
    """
    if isinstance(prune_at, (list, tuple)):
        epochs = tuple(prune_at)
        valid = bool(epochs) and all(_is_epoch(e) for e in epochs)
        if not valid or not all(later > earlier for earlier, later in zip(epochs, epochs[1:])):
            raise ValueError(
                f"prune_at as a list must hold strictly increasing epoch numbers >= 0 (integers), got {prune_at!r}; "
                "e.g. prune_at=[2, 4, 6] prunes at the end of epochs 2, 4 and 6"
            )
        return epochs
    if prune_at in MOMENTS or _is_epoch(prune_at):
        return prune_at
    raise ValueError(
        f"prune_at must be 'fit_end', 'validate', an epoch number >= 0 or a strictly increasing list "
        f"of them (e.g. [2, 4, 6]), got {prune_at!r}"
    )


def step_of(prune_at: PruneAt, epoch: int) -> Optional[Tuple[int, int]]:
    """``(i, n)`` if ``epoch`` is the ``i``-th (1-based) of the ``n`` epochs of a list ``prune_at``, else None.

    Example:
        >>> step_of((2, 4, 6), 4)
        (2, 3)
    """
    if isinstance(prune_at, tuple) and epoch in prune_at:
        return prune_at.index(epoch) + 1, len(prune_at)
    return None


def scheduled_fraction(target: float, step: int, steps: int) -> float:
    """The fraction of the original model kept after ``step`` of ``steps`` (linear in the removed fraction).

    Example:
        >>> [round(scheduled_fraction(0.4, i, 3), 3) for i in (1, 2, 3)]
        [0.8, 0.6, 0.4]
    """
    if not 1 <= step <= steps:
        raise ValueError(f"step must be in 1..{steps}, got {step}")
    return 1.0 - (1.0 - float(target)) * step / steps


def relative_target(scheduled: float, current: float, original: float) -> Optional[float]:
    """What :func:`lightning_fair.prune` must keep of the *current* model to be at ``scheduled`` of the
    ``original`` (MACs or parameters), in (0, 1]; None if the current model is already at or below it.

    Example:
        >>> round(relative_target(0.6, current=80.0, original=100.0), 6)
        0.75
        >>> relative_target(0.6, current=50.0, original=100.0) is None
        True
    """
    if original <= 0 or current <= 0:
        raise ValueError(f"MACs/params must be positive, got current={current}, original={original}")
    kept = current / original
    if kept <= scheduled + 1e-12:
        return None
    return min(1.0, scheduled / kept)


def step_options(
    config, prune_at: PruneAt, epoch: int, original: Optional[Dict[str, Any]], measure: Callable[[], Tuple[int, int]]
) -> Tuple[Optional[Any], Dict[str, Any]]:
    """The :class:`~lightning_fair.PruneConfig` of :func:`lightning_fair.prune` at ``epoch``, and the
    record of this step.

    ``config`` is the callback's (``target_macs``/``target_params`` as given); ``original`` is the
    report (``macs_before``, ``params_before``) of the first pruning of this schedule, None before
    it; ``measure()`` gives the current ``(MACs, params)`` and is called only when needed. Outside a
    list ``prune_at`` the config is returned unchanged and the record is empty. At a listed epoch
    the record holds ``step`` and ``steps``; with a target also ``scheduled`` (the fraction of the
    original to keep after this step), and the target becomes relative to the current model. The
    config is None if the model already keeps no more than ``scheduled`` (the record then has a
    ``skipped`` sentence).

    Example:
        >>> from lightning_fair import PruneConfig
        >>> new, record = step_options(PruneConfig(target_macs=0.5), (2, 4), 2, {"macs_before": 100}, lambda: (80, 10))
        >>> new.target_macs, record   # keep 0.75 of the original: 0.9375 of the current 80%
        (0.9375, {'step': 1, 'steps': 2, 'scheduled': 0.75})
    """
    step = step_of(prune_at, epoch)
    if step is None:
        return config, {}
    record: Dict[str, Any] = {"step": step[0], "steps": step[1]}
    key = next((k for k in ("macs", "params") if getattr(config, f"target_{k}") is not None), None)
    if key is None:  # a tolerance or ratio: applied to the model as it is now (it compounds)
        return config, record
    current = measure()[0 if key == "macs" else 1]
    base = original[f"{key}_before"] if original else current
    record["scheduled"] = scheduled_fraction(getattr(config, f"target_{key}"), *step)
    target = relative_target(record["scheduled"], current, base)
    if target is None:
        record["skipped"] = (
            f"step {step[0]} of {step[1]} (epoch {epoch}) skipped: the model keeps "
            f"{current / base:.1%} of the original {key}, at or below this step's "
            f"{record['scheduled']:.1%}"
        )
        return None, record
    return dataclasses.replace(config, **{f"target_{key}": target}), record
