"""Which classes U compares for next-token prediction.

For a causal language model every token position is a sample (:func:`lightning_fair.runtime.batches.token_samples`)
and its class is the token it predicts. A vocabulary has tens of thousands of tokens, most of them
rare: a random subset of classes (what :mod:`.classes` does with many classes) would hold almost no
samples. U compares the ``max_classes`` most frequent next tokens of the first calibration batch
instead (ties: the smaller token id), each with up to ``samples_per_class`` positions; positions
predicting any other token (and positions without a target) are not kept for U. R, the loss and
the calibration tallies use every position. ``docs/method.md`` ("Decoder language models") gives the
reasoning and the measurements.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..runtime.batches import IGNORE_INDEX

__all__ = ["NextTokenClasses"]


class NextTokenClasses:
    """Next-token ids to the classes U compares (-1: not compared).

    Example:
        >>> classes = NextTokenClasses(max_classes=2)
        >>> classes.fit(torch.tensor([7, 7, 3, 9, 3, 7, -100]))
        >>> classes.tokens.tolist(), classes(torch.tensor([3, 9, 7, -100])).tolist()
        ([7, 3], [1, -1, 0, -1])
    """

    def __init__(self, max_classes: Optional[int]):
        self.max_classes = max_classes
        #: the compared tokens, most frequent first (class k is ``tokens[k]``)
        self.tokens = torch.zeros(0, dtype=torch.long)

    @property
    def num_classes(self) -> int:
        return int(self.tokens.numel())

    def fit(self, target: torch.Tensor) -> None:
        """Choose the classes from the first batch's next-token targets ``[N]`` (host).

        Raises:
            ValueError: fewer than two distinct tokens to compare.
        """
        valid = target[target != IGNORE_INDEX].long()
        if valid.numel() and valid.min() < 0:
            raise ValueError(f"token targets must be ids >= 0 or {IGNORE_INDEX} (no loss), got {int(valid.min())}")
        counts = torch.bincount(valid) if valid.numel() else torch.zeros(0, dtype=torch.long)
        present = counts.nonzero().flatten()
        order = present[torch.sort(-counts[present], stable=True).indices]
        self.tokens = order[: self.max_classes] if self.max_classes is not None else order
        if self.tokens.numel() < 2:
            raise ValueError(
                "the first calibration batch has fewer than two distinct next tokens; U compares the "
                "positions predicting different tokens: use longer or more varied calibration text"
            )

    def __call__(self, target: torch.Tensor) -> torch.Tensor:
        """``[N]``: the class of each position's next token, -1 where it is not compared."""
        target = target.long()
        ordered, where = self.tokens.sort()
        slot = torch.searchsorted(ordered, target.clamp(min=0)).clamp(max=max(ordered.numel() - 1, 0))
        found = (ordered.numel() > 0) & (ordered[slot] == target) & (target >= 0)
        return torch.where(found, where[slot], torch.full_like(target, -1))
