"""Which classes U compares for next-token prediction.

For a causal language model every token position is a sample (:func:`lightning_fair.runtime.batches.token_samples`)
and its class is what it predicts. A vocabulary has tens of thousands of tokens, most of them rare: a
random subset of classes (what :mod:`.classes` does with many classes) would hold almost no samples.
Two definitions, the ``token_classes`` option:

- ``"frequent"`` (default): the class is the next token itself, among the ``max_classes`` most frequent
  next tokens of the first calibration batch (ties: the smaller token id); positions predicting any
  other token are not kept for U.
- ``"clusters"``: the class is the cluster of the next token's row of the output embedding (the
  language-model head, whose rows turn a hidden state into each token's logit: tokens with close rows
  are predicted from similar hidden states), among ``max_classes`` clusters of spherical k-means over
  all rows (seeded); every position is kept. Clusters absent from the first batch are not compared.

Either way each class keeps up to ``samples_per_class`` positions; R, the loss and the calibration
tallies use every position. ``docs/method.md`` ("Decoder language models") gives the measurements.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..config import TOKEN_CLASSES
from ..runtime.batches import IGNORE_INDEX

__all__ = ["NextTokenClasses", "embedding_clusters", "output_embedding"]

#: Lloyd iterations of the spherical k-means (the assignment has settled well before on vocabularies)
ITERATIONS = 25


def output_embedding(model: nn.Module) -> torch.Tensor:
    """The ``[vocabulary, hidden]`` weight of the model's language-model head: the first module (the
    model itself, or one inside it such as a LightningModule's wrapped model) whose
    ``get_output_embeddings()`` gives a layer with a weight.

    Raises:
        ValueError: no such module.
    """
    for module in model.modules():
        getter = getattr(module, "get_output_embeddings", None)
        weight = getattr(getter() if callable(getter) else None, "weight", None)
        if isinstance(weight, torch.Tensor):
            return weight
    raise ValueError(
        "token_classes='clusters' clusters the output embedding's rows, but the model has no "
        "get_output_embeddings() (a Hugging Face language model has one); use token_classes='frequent'"
    )


def embedding_clusters(weight: torch.Tensor, clusters: int, seed: int = 0) -> torch.Tensor:
    """``[vocabulary]``: each row's cluster under spherical k-means (cosine similarity) with
    ``clusters`` centres, started from distinct rows chosen by ``seed``; float32 on the weight's device.

    Example:
        >>> weight = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> labels = embedding_clusters(weight, 2)
        >>> bool(labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2])
        True
    """
    rows = nn.functional.normalize(weight.detach().float(), dim=1)
    clusters = min(int(clusters), rows.shape[0])
    generator = torch.Generator().manual_seed(seed)
    centres = rows[torch.randperm(rows.shape[0], generator=generator)[:clusters].to(rows.device)]
    labels = torch.full((rows.shape[0],), -1, dtype=torch.long, device=rows.device)
    for _ in range(ITERATIONS):
        new = (rows @ centres.T).argmax(dim=1)
        if torch.equal(new, labels):
            break
        labels = new
        sums = torch.zeros_like(centres).index_add_(0, labels, rows)
        empty = sums.norm(dim=1) == 0  # a centre that lost every row keeps its place
        centres = torch.where(empty[:, None], centres, nn.functional.normalize(sums, dim=1))
    return labels


class NextTokenClasses:
    """Next-token ids to the classes U compares (-1: not compared).

    Example:
        >>> classes = NextTokenClasses(max_classes=2)
        >>> classes.fit(torch.tensor([7, 7, 3, 9, 3, 7, -100]))
        >>> classes.tokens.tolist(), classes(torch.tensor([3, 9, 7, -100])).tolist()
        ([7, 3], [1, -1, 0, -1])
    """

    def __init__(self, max_classes: Optional[int], kind: str = "frequent", seed: int = 0):
        if kind not in TOKEN_CLASSES:
            raise ValueError(f"token_classes must be one of {TOKEN_CLASSES}, got {kind!r}")
        if kind == "clusters" and max_classes is None:
            raise ValueError("token_classes='clusters' needs max_classes (the number of clusters), not None")
        self.max_classes = max_classes
        self.kind = kind
        self.seed = seed
        #: ``"frequent"``: the compared tokens, most frequent first (class k is ``tokens[k]``)
        self.tokens = torch.zeros(0, dtype=torch.long)
        #: ``"clusters"``: each token's class (-1: its cluster is not compared), host
        self.table: Optional[torch.Tensor] = None

    @property
    def num_classes(self) -> int:
        if self.table is not None:
            return int(self.table.max()) + 1
        return int(self.tokens.numel())

    def fit(self, target: torch.Tensor, model: Optional[nn.Module] = None) -> None:
        """Choose the classes from the first batch's next-token targets ``[N]`` (host); ``"clusters"``
        reads the output embedding of ``model``.

        Raises:
            ValueError: fewer than two classes to compare, or (clusters) no output embedding.
        """
        valid = target[target != IGNORE_INDEX].long()
        if valid.numel() and valid.min() < 0:
            raise ValueError(f"token targets must be ids >= 0 or {IGNORE_INDEX} (no loss), got {int(valid.min())}")
        if self.kind == "clusters":
            if model is None:
                raise ValueError("token_classes='clusters' needs the model (its output embedding)")
            weight = output_embedding(model)
            if valid.numel() and int(valid.max()) >= weight.shape[0]:
                raise ValueError(
                    f"next token {int(valid.max())} is beyond the output embedding's {weight.shape[0]} rows"
                )
            cluster = embedding_clusters(weight, int(self.max_classes or 0), self.seed).cpu()
            valid = cluster[valid]  # from here on, count clusters as "frequent" counts tokens
        counts = torch.bincount(valid) if valid.numel() else torch.zeros(0, dtype=torch.long)
        present = counts.nonzero().flatten()
        order = present[torch.sort(-counts[present], stable=True).indices]
        chosen = order[: self.max_classes] if self.max_classes is not None else order
        if chosen.numel() < 2:
            raise ValueError(
                "the first calibration batch has fewer than two distinct next tokens (or token clusters); U "
                "compares the positions predicting different tokens: use longer or more varied calibration text"
            )
        if self.kind == "clusters":
            rank = torch.full((int(cluster.max()) + 1,), -1, dtype=torch.long)
            rank[chosen] = torch.arange(chosen.numel())
            self.table = rank[cluster]
        else:
            self.tokens = chosen

    def __call__(self, target: torch.Tensor) -> torch.Tensor:
        """``[N]``: the class of each position's next token, -1 where it is not compared."""
        target = target.long()
        if self.table is not None:
            inside = (target >= 0) & (target < self.table.numel())
            return torch.where(inside, self.table[target.clamp(0, self.table.numel() - 1)], torch.full_like(target, -1))
        ordered, where = self.tokens.sort()
        slot = torch.searchsorted(ordered, target.clamp(min=0)).clamp(max=max(ordered.numel() - 1, 0))
        found = (ordered.numel() > 0) & (ordered[slot] == target) & (target >= 0)
        return torch.where(found, where[slot], torch.full_like(target, -1))
