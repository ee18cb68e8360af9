"""Calibration batches: splitting one into ``(inputs, target)``, example inputs for tracing.

Batches are ``(inputs, labels, ...)`` sequences or dicts with an inputs key and a labels key
(:func:`default_unpack`); anything else needs an ``unpack`` callable. A model's inputs are a tensor,
``model(inputs)``, or a dict of keyword arguments, ``model(**inputs)`` (a Hugging Face batch without
its labels: ``input_ids`` with ``attention_mask``, ``token_type_ids``, ...; :func:`call_model` passes
the entries the model's ``forward`` names). Under next-token prediction, positions that
``attention_mask`` marks as padding are not samples and carry no loss (:func:`mask_padding`).

Two kinds of target are understood. *Classification*: one class index per sample, class logits
``[batch, classes]``. *Next-token prediction* (causal language models): token ids ``[batch, length]``
as inputs and as target (Hugging Face's convention: ``labels`` equal to ``input_ids``, -100 where no
loss is taken; a batch of token ids alone, or a dict without ``labels``, is its own target), logits
``[batch, length, vocabulary]``; position ``t`` predicts token ``t + 1`` (:func:`next_token_pairs`),
and every token position is a sample (:func:`token_samples`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Callable, Optional

import torch
from torch import nn

__all__ = [
    "batch_inputs",
    "call_model",
    "inputs_to",
    "main_input",
    "mask_padding",
    "name_next_pass",
    "padding_mask",
    "real_rows",
    "IGNORE_INDEX",
    "default_unpack",
    "first_inputs",
    "first_sample",
    "is_token_ids",
    "is_token_target",
    "next_token_pairs",
    "token_samples",
    "grad_inputs",
    "model_device",
    "select_logits",
    "traceable_output",
]


#: a target position without a loss (Hugging Face's and ``F.cross_entropy``'s ``ignore_index``)
IGNORE_INDEX = -100
#: the entries of a dict batch that are targets, never model inputs
LABEL_KEYS = ("y", "label", "labels", "target", "targets")
#: the entries of a Hugging Face batch that are the model's main input, in order of preference
MAIN_INPUT_KEYS = ("input_ids", "pixel_values", "inputs_embeds", "input_values", "input_features")


def main_input(inputs) -> torch.Tensor:
    """The tensor that says a batch's size and layout: ``inputs`` itself, or a dict's ``input_ids``
    (``pixel_values``, ...; else its first tensor).

    Example:
        >>> ids = torch.zeros(2, 5, dtype=torch.long)
        >>> main_input({"attention_mask": torch.ones(2, 5), "input_ids": ids}) is ids
        True
    """
    if isinstance(inputs, Mapping):
        for key in MAIN_INPUT_KEYS:
            if isinstance(inputs.get(key), torch.Tensor):
                return inputs[key]
        for value in inputs.values():
            if isinstance(value, torch.Tensor):
                return value
        raise TypeError(f"model inputs must hold a tensor, got a dict with keys {sorted(inputs)}")
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(
            f"model inputs must be a tensor or a dict of tensors, got {type(inputs).__name__}; pass "
            "unpack=lambda batch: (inputs, target) to extract them"
        )
    return inputs


def _keyword_names(model: nn.Module) -> Optional[frozenset]:
    """The keyword arguments ``model.forward`` names, or None when it takes ``**kwargs`` only
    (then every entry goes through)."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    names = frozenset(
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )
    if not names and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return names


def call_model(model: nn.Module, inputs):
    """``model(inputs)`` for a tensor; for a dict, ``model(**entries)`` with the entries ``forward``
    names (a Hugging Face model's ``attention_mask``, ``token_type_ids``, ...; the rest, such as a
    collator's ``special_tokens_mask``, stays out), or ``model(inputs)`` when ``forward`` names none
    of them (a module written as ``forward(self, batch)``).

    Example:
        >>> class Masked(nn.Module):
        ...     def forward(self, input_ids, attention_mask=None):
        ...         return input_ids * attention_mask
        >>> call_model(Masked(), {"input_ids": torch.ones(1, 2), "attention_mask": torch.tensor([[1, 0]]),
        ...                       "special_tokens_mask": None}).tolist()
        [[1.0, 0.0]]
    """
    if not isinstance(inputs, Mapping):
        return model(inputs)
    names = _keyword_names(model)
    if names is None:
        return model(**inputs)
    passed = {key: value for key, value in inputs.items() if key in names}
    return model(**passed) if passed else model(inputs)


def inputs_to(inputs, device):
    """``inputs`` (a tensor or a dict of them) on ``device``, as normal tensors (not inference ones)."""
    if isinstance(inputs, Mapping):
        return {key: inputs_to(value, device) for key, value in inputs.items()}
    if not isinstance(inputs, torch.Tensor):
        return inputs
    inputs = inputs.to(device, non_blocking=True)  # from the host: no wait for the device's queue
    return inputs.clone() if inputs.is_inference() else inputs


def name_next_pass(dataloader, what: str) -> None:
    """Tell a calibration loader that shows progress (the callback's progress bar) what its next
    pass over the data is for, e.g. ``"refitting consumers"``; any other iterable is left alone.

    Example:
        >>> name_next_pass([torch.zeros(1)], "refitting consumers")  # a plain list: nothing to tell
    """
    tell = getattr(dataloader, "name_next_pass", None)
    if callable(tell):
        tell(what)


def padding_mask(inputs) -> Optional[torch.Tensor]:
    """``[batch, length]`` True at the real tokens of padded keyword inputs (``attention_mask`` with a
    zero somewhere), else None.

    Example:
        >>> padding_mask({"input_ids": torch.zeros(1, 3), "attention_mask": torch.tensor([[1, 1, 0]])}).tolist()
        [[True, True, False]]
    """
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or bool((mask != 0).all()):
        return None
    return mask != 0


def real_rows(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``x`` ``[batch, length, ...]`` as ``[n, ...]`` rows of its real tokens (``mask``: :func:`padding_mask`);
    any other ``x`` (or no mask) as it is."""
    if mask is None or x.dim() < 3 or tuple(x.shape[:2]) != tuple(mask.shape):
        return x
    return x[mask.to(x.device)]


def mask_padding(inputs, target: torch.Tensor) -> torch.Tensor:
    """A next-token target without the positions ``inputs["attention_mask"]`` marks as padding: a
    padded token is not predicted, and a padded position predicts nothing (left or right padding);
    both become :data:`IGNORE_INDEX`. Other inputs and targets are returned as they are.

    Example:
        >>> ids = torch.tensor([[5, 6, 7, 0]])
        >>> mask_padding({"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1, 0]])}, ids).tolist()
        [[5, 6, 7, -100]]
        >>> mask_padding({"input_ids": ids, "attention_mask": torch.tensor([[0, 1, 1, 1]])}, ids).tolist()
        [[-100, -100, 7, 0]]
    """
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(target.shape):
        return target
    mask = mask.to(target.device) != 0
    drop = ~mask
    drop[:, 1:] |= ~mask[:, :-1]  # the token after a padded position is predicted from padding
    return target.masked_fill(drop, IGNORE_INDEX)


def is_token_ids(value) -> bool:
    """Whether ``value`` (or a dict's main input, :func:`main_input`) is a ``[batch, length]`` tensor
    of token ids (integers)."""
    if isinstance(value, Mapping):
        value = next((value[k] for k in MAIN_INPUT_KEYS if isinstance(value.get(k), torch.Tensor)), None)
    return isinstance(value, torch.Tensor) and value.dim() == 2 and not value.is_floating_point()


def default_unpack(batch):
    """Split a batch into ``(inputs, target)``: ``(x, y, ...)`` sequences and dicts with
    ``x``/``input``/``image`` and ``y``/``label``/``target`` keys are understood, and Hugging Face
    batches (``input_ids`` or ``pixel_values``, and ``labels``). A Hugging Face batch's inputs are
    the batch without its labels, a dict that :func:`call_model` passes as keywords (so
    ``attention_mask``, ``token_type_ids``, ``position_ids`` reach the model); with the main input
    alone they are that tensor. A batch of token ids ``[batch, length]`` alone, or a dict with
    ``input_ids`` and no labels, is its own target (next-token prediction).

    Example:
        >>> ids, mask = torch.tensor([[5, 6]]), torch.tensor([[1, 1]])
        >>> inputs, target = default_unpack({"input_ids": ids, "attention_mask": mask, "labels": ids})
        >>> sorted(inputs), target is ids
        (['attention_mask', 'input_ids'], True)
    """
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        xs = [k for k in ("x", "input", "inputs", "image", "images") if k in batch]
        ys = [k for k in LABEL_KEYS if k in batch]
        if xs and ys:
            return batch[xs[0]], batch[ys[0]]
        main = next((k for k in MAIN_INPUT_KEYS if isinstance(batch.get(k), torch.Tensor)), None)
        if main is not None:
            entries = {k: v for k, v in batch.items() if k not in LABEL_KEYS and isinstance(v, torch.Tensor)}
            inputs = entries if len(entries) > 1 else batch[main]
            if ys:
                return inputs, batch[ys[0]]
            if main == "input_ids" and is_token_ids(batch["input_ids"]):
                return inputs, batch["input_ids"]
    if is_token_ids(batch):
        return batch, batch
    if isinstance(batch, (tuple, list)) and len(batch) == 1 and is_token_ids(batch[0]):
        return batch[0], batch[0]
    raise TypeError(
        f"cannot find (inputs, target) in a batch of type {type(batch).__name__}; batches must be "
        "(inputs, labels, ...) sequences or dicts with 'x' and 'y' keys, or pass "
        "unpack=lambda batch: (inputs, labels)"
    )


def is_token_target(inputs, target) -> bool:
    """Whether ``(inputs, target)`` is next-token prediction: integer ``[batch, length]`` token ids as
    both (the inputs' :func:`main_input`), the target equal to the inputs wherever it is not
    :data:`IGNORE_INDEX` (Hugging Face's causal-LM ``labels``; a token-classification target differs
    from the inputs).

    Example:
        >>> ids = torch.tensor([[5, 6, 7]])
        >>> is_token_target(ids, ids), is_token_target(ids, torch.tensor([[5, -100, 7]]))
        (True, True)
        >>> is_token_target(ids, ids[:, 0])  # one label per sample: classification
        False
    """
    if isinstance(inputs, Mapping):
        inputs = main_input(inputs)
    if not (is_token_ids(inputs) and is_token_ids(target)) or tuple(inputs.shape) != tuple(target.shape):
        return False
    target = target.to(inputs.device)
    return bool(((target == inputs) | (target == IGNORE_INDEX)).all())


def next_token_pairs(logits: torch.Tensor, target: torch.Tensor) -> tuple:
    """``(logits [N, vocabulary], target [N])`` of next-token prediction, ``N = batch * (length - 1)``:
    position ``t``'s logits against token ``t + 1`` (targets :data:`IGNORE_INDEX` stay so).

    Example:
        >>> logits, target = next_token_pairs(torch.zeros(2, 4, 10), torch.arange(8).view(2, 4))
        >>> tuple(logits.shape), target.tolist()
        ((6, 10), [1, 2, 3, 5, 6, 7])
    """
    return logits[:, :-1].reshape(-1, logits.shape[-1]), target[:, 1:].reshape(-1)


def token_samples(tensor: torch.Tensor, batch: int, length: int) -> Optional[torch.Tensor]:
    """A ``[batch, length, ...]`` activation (or ``[batch * length, ...]``, tokens flattened as sparse
    MoE blocks do) as one sample per predicting position, ``[batch * (length - 1), 1, ...]`` (the order
    of :func:`next_token_pairs`); None for a tensor of another layout.

    Example:
        >>> tuple(token_samples(torch.zeros(2, 4, 8), 2, 4).shape), token_samples(torch.zeros(2, 8), 2, 4)
        ((6, 1, 8), None)
    """
    if tensor.dim() >= 2 and tensor.shape[0] == batch * length and (batch, length) != tuple(tensor.shape[:2]):
        tensor = tensor.reshape(batch, length, *tensor.shape[1:])  # tokens flattened first (MoE blocks)
    if tensor.dim() < 3 or tuple(tensor.shape[:2]) != (batch, length):
        return None
    return tensor[:, :-1].reshape(batch * (length - 1), 1, *tensor.shape[2:])


def select_logits(output, logits: Optional[Callable] = None, tokens: bool = False) -> torch.Tensor:
    """The class logits ``[batch, num_classes]`` in a model's output (``tokens``: next-token logits
    ``[batch, length, vocabulary]``): ``logits(output)`` if given; else the output itself, or its
    ``"logits"`` entry / ``.logits`` attribute (Hugging Face outputs).

    Raises:
        ValueError: no such tensor; the message says how to pick it (``logits=lambda out: out[0]``).

    Example:
        >>> select_logits((torch.zeros(2, 3), torch.zeros(2, 8)), logits=lambda out: out[0]).shape
        torch.Size([2, 3])
        >>> select_logits({"logits": torch.zeros(2, 3), "hidden": None}).shape
        torch.Size([2, 3])
    """
    if logits is not None:
        output = logits(output)
    elif not isinstance(output, torch.Tensor):
        if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
            output = output["logits"]
        elif isinstance(getattr(output, "logits", None), torch.Tensor):
            output = output.logits
    if tokens and isinstance(output, torch.Tensor) and output.dim() == 3:
        return output
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        if tokens:
            raise ValueError(
                f"the model's output must be next-token logits of shape [batch, length, vocabulary] for token "
                f"batches, got {got}; pass logits=lambda out: ... to pick them"
            )
        how = (
            "check what the logits= callable returns"
            if logits is not None
            else "if the model returns more than logits (a tuple, a dict), pass logits=lambda out: out[0] (or the key) "
            "to prune, compute_scores, sweep, evaluate or FairPruneCallback (--prune.logits=a.module.function)"
        )
        raise ValueError(f"the model's output must be class logits of shape [batch, num_classes], got {got}; {how}")
    return output


def traceable_output(output):
    """A model's output as torch-pruning's tracer can walk it: tensors, lists, tuples and dicts of
    tensors as they are; a dict holding other things (a Hugging Face output with a key-value cache) as
    its tensor entries; any other object (a dataclass-like model output) as the list of its tensor
    attributes."""
    if isinstance(output, Mapping) and not all(isinstance(v, torch.Tensor) for v in output.values()):
        # a Hugging Face output with a key-value cache or hidden-state tuples: its tensors only
        return {key: value for key, value in output.items() if isinstance(value, torch.Tensor)}
    if output is None or isinstance(output, (torch.Tensor, list, tuple, Mapping)):
        return output
    return (
        [value for value in vars(output).values() if isinstance(value, torch.Tensor)]
        if hasattr(output, "__dict__")
        else output
    )


def first_inputs(dataloader, unpack=default_unpack):
    """The first calibration batch's inputs (one sample of a tensor, or of each tensor of a dict):
    example inputs for tracing."""
    with torch.inference_mode(False):  # under trainer.validate: a normal tensor, usable for tracing
        for batch in dataloader:
            inputs, _ = unpack(batch)
            return first_sample(inputs)
    raise ValueError("the calibration dataloader yielded no batches; pass a non-empty dataloader")


def first_sample(inputs):
    """The first sample of ``inputs``: a tensor's first row, or a dict's tensors' (same batch size)."""
    if isinstance(inputs, torch.Tensor):
        return inputs[:1].clone()
    if isinstance(inputs, Mapping):
        size = main_input(inputs).shape[0] if main_input(inputs).dim() else None
        return {
            k: v[:1].clone() if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == size else v
            for k, v in inputs.items()
        }
    return inputs


def grad_inputs(inputs, device):
    """``inputs`` (a tensor, or a dict of them) on ``device`` as normal tensors (not inference ones);
    floating-point inputs require grad, so every layer output is part of the autograd graph."""
    if isinstance(inputs, Mapping):
        main_input(inputs)  # a clear error for a dict without tensors
        return {k: grad_inputs(v, device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"model inputs must be a tensor, got {type(inputs).__name__}; pass unpack=... to extract it")
    inputs = inputs.to(device, non_blocking=True)  # from the host: no wait for the device's queue
    if inputs.is_inference():
        inputs = inputs.clone()
    if inputs.is_floating_point():
        # Makes every layer output part of the graph even when all parameters are frozen.
        inputs = inputs.detach().requires_grad_(True)
    return inputs


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model with neither."""
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def batch_inputs(batch, unpack: Optional[Callable]):
    """A batch's model inputs (a tensor or a dict of them, for :func:`call_model`): ``unpack(batch)``'s
    first element, the batch itself, a one-element sequence's element, or :func:`default_unpack`'s
    inputs."""
    if unpack is not None:
        out = unpack(batch)
        inputs = out[0] if isinstance(out, (tuple, list)) else out
    elif isinstance(batch, torch.Tensor):
        inputs = batch
    elif isinstance(batch, (tuple, list)) and len(batch) == 1:
        inputs = batch[0]
    else:
        inputs = default_unpack(batch)[0]
    main_input(inputs)  # a tensor, or a dict holding one: else a clear error
    return inputs
