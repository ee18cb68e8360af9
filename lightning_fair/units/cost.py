"""What a model costs: multiply-accumulates and parameters, and the unit count of each layer.

The allocation's target search, the report and the Lightning callback measure with these. Units
of every family count here: Conv/Linear channels, and attention heads (an ``nn.MultiheadAttention``
counts its in-projection and ``out_proj``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Dict

import torch
from torch import nn

from ..runtime.batches import call_model, is_token_ids, main_input
from ..runtime.guards import on_uncompiled, preserved_modes
from .channels import PRUNABLE_TYPES
from .experts import expert_macs, find_experts
from .families import unit_count
from .mha import no_fastpath

__all__ = ["embedding_params", "macs_basis", "measure", "unit_counts"]


@on_uncompiled
def measure(model: nn.Module, example_inputs) -> tuple:
    """``(MACs, params)``: multiply-accumulates of every Conv and Linear layer in one forward of
    ``example_inputs``, per sample, and the number of parameters.

    Counted with forward hooks on the model itself (no copy, so a LightningModule attached to
    a Trainer is fine); train/eval flags are restored. An ``nn.MultiheadAttention`` counts its
    in-projection and ``out_proj`` (its attention products, like every matmul, are not counted);
    PyTorch's fused transformer fast path is off while counting, so its Linear layers run as modules.
    A mixture-of-experts block counts its router and, per token, the experts it routes to
    (:func:`lightning_fair.units.experts.expert_macs`). Per sample: the total over the example
    divided by its batch size (for a language model, a sample is a sequence of the example's length).
    """
    macs = [0]
    attention_outputs = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}

    def attention_hook(module, args, kwargs, output):
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs.get("key", query)
        per_sample = 1 if query.dim() == 2 else query.shape[0 if module.batch_first else 1]
        queries, keys = query.numel() // query.shape[-1] // per_sample, key.numel() // key.shape[-1] // per_sample
        inner = module.in_proj_weight.shape[0] // 3
        macs[0] += (queries + 2 * keys) * inner * module.embed_dim + queries * inner * module.out_proj.out_features

    # per sample: the example's batch size (a layer may see tokens flattened, [batch * length, ...])
    main = main_input(example_inputs) if isinstance(example_inputs, (torch.Tensor, Mapping)) else None
    samples = main.shape[0] if main is not None and main.dim() else None

    def hook(module, args, output):
        if id(module) in attention_outputs:
            return  # counted with its attention module
        batch = samples or (output.shape[0] if output.dim() > 1 else 1)
        if isinstance(module, nn.Linear):
            macs[0] += output.numel() // batch * module.in_features
        elif isinstance(module, nn.modules.conv._ConvTransposeNd):
            macs[0] += args[0].numel() // batch * (module.out_channels // module.groups) * _prod(module.kernel_size)
        else:
            macs[0] += output.numel() // batch * (module.in_channels // module.groups) * _prod(module.kernel_size)

    def experts_hook(units):
        def hook(module, args, kwargs):
            index = args[1] if len(args) > 1 else kwargs["top_k_index"]
            tokens = index.shape[0]
            macs[0] += (expert_macs(module, index) + tokens * units.router.weight.numel()) // (samples or 1)

        return hook

    with preserved_modes(model):
        handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
        handles += [
            units.output.register_forward_pre_hook(experts_hook(units), with_kwargs=True)
            for units in find_experts(model).values()
        ]
        handles += [
            m.register_forward_hook(attention_hook, with_kwargs=True)
            for m in model.modules()
            if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None
        ]
        try:
            model.eval()
            with torch.no_grad(), no_fastpath():
                call_model(model, example_inputs)
        finally:
            for handle in handles:
                handle.remove()
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return int(macs[0]), int(params)


def _prod(values) -> int:
    result = 1
    for v in values:
        result *= int(v)
    return result


def unit_counts(model: nn.Module, names) -> Dict[str, int]:
    """Current number of units of the named layers: output channels / features, or the units of a
    family module (:func:`lightning_fair.units.families.unit_count`, e.g. an attention module's heads)."""
    modules = dict(model.named_modules())
    counts = {}
    for name in names:
        module = modules[name]
        if isinstance(module, nn.Linear):
            counts[name] = module.out_features
        elif isinstance(module, PRUNABLE_TYPES):
            counts[name] = module.out_channels
        elif unit_count(module) is not None:
            counts[name] = unit_count(module)
    return counts


def embedding_params(model: nn.Module) -> int:
    """Parameters of the model's ``nn.Embedding`` layers (a weight tied to an output layer counted
    once): what a language model's budget cannot remove unless ``prune_embedding``."""
    seen = {id(p): p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return int(sum(seen.values()))


def macs_basis(example_inputs) -> str:
    """What :func:`measure`'s MACs are per: ``"sequence of T tokens"`` for token ids ``[batch, T]``,
    else ``"sample"``."""
    if is_token_ids(example_inputs):
        return f"sequence of {main_input(example_inputs).shape[1]} tokens"
    return "sample"
