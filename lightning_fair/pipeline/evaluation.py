"""Loss and top-1 accuracy of a model over labelled batches (no gradients, flags restored).

The running means are ``torchmetrics.aggregation.MeanMetric``\\ s, so under ``distributed=True``
their states are summed across ranks by torchmetrics' own synchronisation: every rank gets the
loss and accuracy of all ranks' batches together.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from ..runtime.batches import (
    IGNORE_INDEX,
    call_model,
    default_unpack,
    inputs_to,
    is_token_target,
    mask_padding,
    next_token_pairs,
    select_logits,
)
from ..runtime.distributed import is_distributed
from ..runtime.guards import preserved_modes

__all__ = ["evaluate"]


def evaluate(
    model: nn.Module,
    batches: Iterable,
    *,
    loss_fn: Optional[Callable] = None,
    unpack: Callable = default_unpack,
    max_batches: Optional[int] = None,
    distributed: bool = False,
    logits: Optional[Callable] = None,
) -> dict:
    """``{"loss": mean of the batch losses, "accuracy": top-1 over all samples}`` of ``model`` in
    eval mode, without gradients; every submodule's train/eval flag is put back afterwards.

    Args:
        model: maps inputs to class logits.
        batches: labelled batches, ``(inputs, labels)`` by default.
        loss_fn: ``loss_fn(logits, labels)`` (a mean over the batch), cross-entropy by default.
        unpack: ``batch -> (inputs, labels)``.
        max_batches: evaluate at most this many batches (all by default).
        logits: ``output -> class logits`` for a model that returns more (``lambda out: out[0]``);
            by default the output, or its ``"logits"`` entry / ``.logits`` attribute.
        distributed: inside a ``torch.distributed`` process group of several processes (e.g.
            DDP), each process passes its own shard and gets the result over all shards: the
            loss is the mean of every rank's batch losses, the accuracy is over every rank's
            samples (the running means' states are all-reduced by torchmetrics). Collective: call
            it on every rank. Without a process group it is the single-process result.

    The loss is each batch's ``loss_fn`` value averaged over batches (as the calibration loss of
    :func:`lightning_fair.compute_scores`); no batches give ``{"loss": 0.0, "accuracy": 0.0}``.
    Token batches (a causal language model, :func:`lightning_fair.runtime.batches.is_token_target`)
    are scored on next-token prediction: the loss over every position with a target, the accuracy
    of the next token, and ``"perplexity"``, the exponential of the loss.

    Example:
        >>> from lightning_fair.demos import zoo
        >>> data = [(torch.randn(8, 1, 8, 8), torch.arange(8))]
        >>> sorted(evaluate(zoo.small_cnn(), data))
        ['accuracy', 'loss']
    """
    from torchmetrics.aggregation import (
        MeanMetric,  # imported on use: `import lightning_fair` stays light
    )

    loss_fn = loss_fn or nn.functional.cross_entropy
    logits_of = logits
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    sync = bool(distributed) and is_distributed()
    # nan_strategy=nan: a NaN loss stays NaN in the mean (MeanMetric drops it, with a warning, by default)
    loss, accuracy = (MeanMetric(nan_strategy=float("nan"), sync_on_compute=sync).to(device) for _ in range(2))
    if device.type != "mps":  # float64 tallies, as Python floats were (MPS has no float64)
        loss, accuracy = loss.set_dtype(torch.float64), accuracy.set_dtype(torch.float64)
    count, next_token = 0, False
    with preserved_modes(model), torch.no_grad():
        model.eval()
        for batch in batches:
            if max_batches is not None and count >= max_batches:
                break
            inputs, target = unpack(batch)
            tokens = is_token_target(inputs, target)
            inputs, target = inputs_to(inputs, device), torch.as_tensor(target).to(device)
            logits = select_logits(call_model(model, inputs), logits_of, tokens=tokens)
            if tokens:  # next-token prediction: every position with a target (not padding) is a sample
                logits, target = next_token_pairs(logits, mask_padding(inputs, target))
                scored = target != IGNORE_INDEX
                loss.update(loss_fn(logits, target).detach())
                accuracy.update((logits[scored].argmax(1) == target[scored]).to(accuracy.dtype))
                count, next_token = count + 1, True
                continue
            target = target.reshape(-1)
            loss.update(loss_fn(logits, target).detach())  # weight 1: the mean of the batch losses
            accuracy.update((logits.argmax(1) == target).to(accuracy.dtype))  # weight 1 per sample
            count += 1
    if count == 0 and not sync:
        return {"loss": 0.0, "accuracy": 0.0}
    # collective under DDP: every rank computes both, in the same order
    mean_loss, mean_accuracy = float(loss.compute()), float(accuracy.compute())
    if math.isnan(mean_accuracy):  # no sample on any rank (an accuracy is never NaN otherwise)
        return {"loss": 0.0, "accuracy": 0.0}
    if next_token:
        return {"loss": mean_loss, "accuracy": mean_accuracy, "perplexity": math.exp(mean_loss)}
    return {"loss": mean_loss, "accuracy": mean_accuracy}
