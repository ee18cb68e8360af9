"""When :class:`~lightning_fair.FairPruneCallback` prunes, and how far each step of a gradual schedule goes.

Plain functions, no Lightning. ``prune_at`` is a moment (``"fit_end"``, ``"validate"``), one epoch,
or a strictly increasing list of epochs. With a list and a target, step ``i`` of ``n`` keeps

    ``1 - (1 - target) * i / n``  of the **original** model's MACs (or parameters)

(linear in the removed fraction; the last step reaches the target). :func:`lightning_fair.prune`
takes targets relative to the model it is given, so each step asks it for
``scheduled / (current / original)``; a step whose scheduled fraction the model already meets is
skipped.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

__all__ = ["MOMENTS", "check_prune_at", "relative_target", "scheduled_fraction", "step_of"]

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
                "e.g. prune_at=[2, 4, 6] prunes at the end of epochs 2, 4 and 6")
        return epochs
    if prune_at in MOMENTS or _is_epoch(prune_at):
        return prune_at
    raise ValueError(f"prune_at must be 'fit_end', 'validate', an epoch number >= 0 or a strictly increasing list "
                     f"of them (e.g. [2, 4, 6]), got {prune_at!r}")


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

