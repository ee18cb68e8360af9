"""Units with massive activations go last: a guard on the ranking, not a score.

Some transformer units take, on a few tokens of every sequence ([CLS]/[SEP], the first token), values
many times larger than any other unit of their layer: *massive activations* (Sun et al. 2024,
arXiv 2402.17762), which the attention uses as a fixed bias. The same tokens are in every sample, so
such a unit separates no classes (U near zero), and the loss is flat in its value (first-order R near
zero): both scores put it first in line for removal, and removing it breaks the model. On
all-MiniLM-L6-v2 the five feed-forward neurons of this kind (layers 0-3) were among the first removed;
keeping them takes one-shot accuracy at kept MACs 0.5 from 51 to 70 % (docs/method.md, "Massive
activations").

A unit is *massive* when its largest ``|value|`` on the calibration data (:mod:`lightning_fair.collect.peaks`,
of the tensor U observes) is at least ``massive`` times the median of its layer's units' largest
values (the ``massive`` option, :class:`lightning_fair.PruneConfig`; the default preset's ratio and
why are there). It then goes last in its layer's removal order (after every other unit): the per-layer counts
and the global ranking are those of the scores, unchanged; only *which* units a count removes differs.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import torch

from .criterion import CriterionScores

__all__ = ["massive_units", "keeping_massive"]


def massive_units(peaks: Dict[str, torch.Tensor], ratio: Optional[float]) -> Dict[str, torch.Tensor]:
    """``{layer: bool [C]}`` the units whose peak is at least ``ratio`` times their layer's median peak
    (layers with none are left out; ``ratio`` 0 or None: none).

    Example:
        >>> massive_units({"fc": torch.tensor([1.0, 1.2, 0.9, 9.0])}, 6.0)["fc"].tolist()
        [False, False, False, True]
        >>> massive_units({"fc": torch.tensor([1.0, 1.2, 0.9, 9.0])}, 0)
        {}
    """
    if not ratio:
        return {}
    found = {}
    for name, peak in peaks.items():
        if peak.numel() < 2:
            continue
        median = peak.float().median()
        if median <= 0:
            continue
        mask = peak.float() >= ratio * median
        if bool(mask.any()):
            found[name] = mask.cpu()
    return found


def keeping_massive(ranked: CriterionScores, peaks: Dict[str, torch.Tensor], ratio: Optional[float]) -> CriterionScores:
    """``ranked`` with its layers' massive units marked to go last (:attr:`CriterionScores.last`)."""
    masks = {name: mask for name, mask in massive_units(peaks, ratio).items() if name in ranked.removal}
    masks = {name: mask for name, mask in masks.items() if mask.numel() == ranked.removal[name].numel()}
    return dataclasses.replace(ranked, last=masks) if masks else ranked
