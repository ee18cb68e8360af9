"""Loss and top-1 accuracy of a model over labelled batches (no gradients, flags restored)."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn

from .statistics import default_unpack

__all__ = ["evaluate"]


def evaluate(model: nn.Module, batches: Iterable, *, loss_fn: Optional[Callable] = None,
             unpack: Callable = default_unpack, max_batches: Optional[int] = None) -> dict:
    """``{"loss": mean of batch losses, "accuracy": top-1}`` of ``model`` in eval mode.

    Example:
        >>> from lightning_fair import zoo
        >>> data = [(torch.randn(8, 1, 8, 8), torch.arange(8))]
        >>> sorted(evaluate(zoo.small_cnn(), data))
        ['accuracy', 'loss']
    """
    loss_fn = loss_fn or nn.functional.cross_entropy
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    training = {m: m.training for m in model.modules()}
    loss_sum, correct, seen, count = 0.0, 0, 0, 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                if max_batches is not None and count >= max_batches:
                    break
                inputs, target = unpack(batch)
                inputs, target = inputs.to(device), torch.as_tensor(target).to(device).reshape(-1)
                logits = model(inputs)
                loss_sum += float(loss_fn(logits, target))
                correct += int((logits.argmax(1) == target).sum())
                seen += int(target.shape[0])
                count += 1
    finally:
        for module, flag in training.items():
            module.training = flag
    return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(seen, 1)}
