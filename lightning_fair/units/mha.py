"""``nn.MultiheadAttention`` with fewer heads than its embedding dimension implies.

PyTorch's attention requires ``num_heads * head_dim == embed_dim``: the queries, keys and
values are projected to the embedding dimension itself, so a head cannot be removed without
changing the residual stream. :class:`HeadPrunedMultiheadAttention` is the same module (same
parameters and ``state_dict`` keys, a subclass, so ``isinstance`` checks still hold) whose
forward projects to ``num_heads * head_dim`` features and lets ``out_proj`` map them back to
``embed_dim``. :func:`lightning_fair.units.attention.remove_heads` turns a module into one by
changing its class (it has no state of its own). Its result equals the original module's
up to float rounding; it never takes PyTorch's fused "fast path" (``_qkv_same_embed_dim`` reads
False, which is what ``nn.TransformerEncoderLayer`` checks), so every Linear runs as a module
and is seen by hooks.

Not covered (such modules are left whole): separate key/value dimensions (``kdim``/``vdim``),
``add_bias_kv`` and ``add_zero_attn``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HeadPrunedMultiheadAttention", "hookable_attention", "is_plain_mha", "no_fastpath"]


def is_plain_mha(module: nn.Module) -> bool:
    """An ``nn.MultiheadAttention`` whose heads this project can remove (packed in-projection,
    no ``add_bias_kv`` / ``add_zero_attn``)."""
    return (
        isinstance(module, nn.MultiheadAttention)
        and module.__dict__.get("_qkv_same_embed_dim", False)
        and module.in_proj_weight is not None
        and module.bias_k is None
        and not module.add_zero_attn
    )


def _additive(mask: Optional[torch.Tensor], dtype) -> Optional[torch.Tensor]:
    """A boolean mask (True: not allowed, PyTorch's convention) as an additive float mask."""
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask.bool(), float("-inf"))


class HeadPrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose in-projection holds ``3 * num_heads * head_dim`` rows and
    whose ``out_proj`` reads ``num_heads * head_dim`` features (``embed_dim`` is unchanged)."""

    @property
    def _qkv_same_embed_dim(self) -> bool:  # makes nn.TransformerEncoderLayer skip its fused fast path
        return False

    @_qkv_same_embed_dim.setter
    def _qkv_same_embed_dim(self, value) -> None:
        pass

    def forward(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        # sequence first from here: [L, B, E]
        length, batch, _ = query.shape
        source = key.shape[0]
        heads, dim = self.num_heads, self.head_dim
        inner = heads * dim
        weight, bias = self.in_proj_weight, self.in_proj_bias
        biases = (None, None, None) if bias is None else bias.split(inner)
        q, k, v = (F.linear(x, w, b) for x, w, b in zip((query, key, value), weight.split(inner), biases))
        q, k, v = (t.reshape(t.shape[0], batch, heads, dim).permute(1, 2, 0, 3) for t in (q, k, v))  # [B, H, L, d]
        mask = _additive(attn_mask, q.dtype)
        if mask is not None and mask.dim() == 3:  # [B * H, L, S]
            mask = mask.reshape(batch, heads, length, source)
        padding = _additive(key_padding_mask, q.dtype)
        if padding is not None:
            padding = padding.reshape(batch, 1, 1, source)
            mask = padding if mask is None else mask + padding
        if is_causal and mask is None:
            mask = torch.full((length, source), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * dim**-0.5) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            weights = scores.softmax(-1)
            context = F.dropout(weights, dropout, training=self.training) @ v
            weights = weights.mean(1) if average_attn_weights else weights
            weights = weights.squeeze(0) if unbatched else weights
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        context = context.permute(0, 2, 1, 3).reshape(batch, length, inner)  # batch first: [B, L, H * d]
        output = self.out_proj(context)
        if unbatched:
            return output.squeeze(0), weights
        return (output if self.batch_first else output.transpose(0, 1)), weights


@contextlib.contextmanager
def no_fastpath() -> Iterator[None]:
    """PyTorch's fused transformer fast path off within the block (its Linear layers then run as
    modules, so hooks see them: MAC counts, statistics)."""
    backend = getattr(torch.backends, "mha", None)
    if backend is None or not hasattr(backend, "set_fastpath_enabled"):
        yield
        return
    enabled = backend.get_fastpath_enabled()
    backend.set_fastpath_enabled(False)
    try:
        yield
    finally:
        backend.set_fastpath_enabled(enabled)


@contextlib.contextmanager
def hookable_attention(model: nn.Module) -> Iterator[None]:
    """Within the block, every prunable ``nn.MultiheadAttention`` of ``model`` runs as
    :class:`HeadPrunedMultiheadAttention` (same result), whose ``out_proj`` is called as a module,
    so a hook on it sees the heads' outputs; the classes are put back after."""
    swapped = [m for m in model.modules() if is_plain_mha(m) and type(m) is nn.MultiheadAttention]
    for module in swapped:
        module.__class__ = HeadPrunedMultiheadAttention
    try:
        with no_fastpath():
            yield
    finally:
        for module in swapped:
            module.__class__ = nn.MultiheadAttention
