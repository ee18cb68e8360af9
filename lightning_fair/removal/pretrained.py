"""A pruned Hugging Face model from its ``save_pretrained`` folder, whatever its layers' shapes.

A model pruned with ``shapes="uniform"`` loads with stock ``from_pretrained``: its config holds the
new counts. One pruned with ``shapes="per_layer"`` (the default) has layers of different widths,
which no standard config describes; its config keeps the counts it had before pruning and carries
the pruning history (:data:`lightning_fair.units.pretrained_config.CONFIG_KEY`). :func:`load_pretrained`
builds the model from that config, replays the history (:func:`~lightning_fair.removal.history.replay_pruning`)
as the model is built, and lets ``from_pretrained`` load (and convert, e.g. Mixtral's per-expert
tensors) the weights into it: no ``trust_remote_code``, no code of the model's own. A history of
unit-family rows only (heads, gated-MLP neurons, experts) is replayed on the meta device that
``from_pretrained`` builds on; rows of torch-pruning's graph need a traceable forward there.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from ..units.pretrained_config import CONFIG_KEY
from .history import replay_pruning

__all__ = ["load_pretrained"]

_STATE_KEYS = ("format", "history", "example_input")


def _concrete(model_class, config):
    """The model class to build: ``model_class`` itself, or the one an auto class maps ``config`` to."""
    mapping = getattr(model_class, "_model_mapping", None)
    if mapping is None:
        return model_class
    try:
        return mapping[type(config)]
    except KeyError:
        raise ValueError(
            f"{model_class.__name__} has no model class for {type(config).__name__}; pass the model class itself"
        ) from None


def load_pretrained(path, model_class=None, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """The pruned Hugging Face model saved in the folder ``path`` by ``save_pretrained``, in eval mode.

    Args:
        path: the folder (a pruned model's ``save_pretrained`` output).
        model_class: the class to build (``LlamaForCausalLM``, or an auto class such as
            ``AutoModelForCausalLM``); default: the config's ``architectures[0]`` from transformers.
        dtype: cast the loaded model to this dtype (default: as built, float32).

    A folder whose config carries no per-layer pruning history (a model pruned with
    ``shapes="uniform"``, or never pruned) is loaded with ``model_class.from_pretrained``.

    Raises:
        ValueError: the folder's history or weights do not fit the model its config builds.

    Example:
        ``result = prune(model, batches, target_params=0.8); result.model.save_pretrained("pruned")``,
        later ``model = lightning_fair.load_pretrained("pruned")`` (same logits).
    """
    import transformers  # imported on use: a test/bench extra, not a dependency

    path = os.fspath(path)
    config = transformers.AutoConfig.from_pretrained(path)
    record = getattr(config, CONFIG_KEY, None)
    if model_class is None:
        names = getattr(config, "architectures", None) or []
        model_class = getattr(transformers, names[0], None) if names else None
        if model_class is None:
            raise ValueError(f"{path}: the config names no transformers architecture ({names}); pass model_class=...")
    if not isinstance(record, dict):
        model = model_class.from_pretrained(path, dtype=dtype) if dtype else model_class.from_pretrained(path)
        return model.eval()
    missing = [key for key in (*_STATE_KEYS, "config") if key not in record]
    if missing:
        raise ValueError(f"{path}: the config's {CONFIG_KEY} lacks {missing}; it was edited by hand")
    for field, value in record["config"].items():  # built as it was before pruning
        setattr(config, field, value)
    delattr(config, CONFIG_KEY)
    concrete = _concrete(model_class, config)
    state = {key: record[key] for key in _STATE_KEYS}

    class Replaying(concrete):  # type: ignore[misc, valid-type]
        """``concrete`` brought to the pruned shapes as soon as it is built, before Hugging Face
        loads (and converts) the checkpoint's weights into it."""

        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            replay_pruning(self, state)

    Replaying.__name__, Replaying.__qualname__ = concrete.__name__, concrete.__qualname__
    options = {"config": config, **({"dtype": dtype} if dtype is not None else {})}
    model = Replaying.from_pretrained(path, **options)
    model.__class__ = concrete  # the class the user asked for; the pruned shapes stay
    setattr(model.config, CONFIG_KEY, record)  # a later save_pretrained writes the history again
    return model.eval()
