"""Mean-replacement compensation: removed inputs replaced by their mean, folded into a bias.

When a channel goes, every Conv/Linear that read it (the *consumer*) loses that input.
Replacing the lost input by its mean over the calibration data changes the consumer's
output by a constant per output channel,

    delta[o] = mean over output positions of  conv(mean input with kept channels zeroed, W)[o]

(for a Linear, ``delta = W @ mean input of the removed features``), computed with the
consumer's original weight, stride, padding and groups on the mean input map, so zero
padding at the borders is accounted for exactly in expectation. The constant goes into

* the consumer's bias, if it has one;
* otherwise the running mean of a BatchNorm that directly follows it (``BN(x + d)`` with
  running mean ``m`` equals ``BN(x)`` with running mean ``m - d``; BatchNorm
  re-estimation afterwards measures this directly);
* otherwise nowhere, and the report says so.

The means come with the scores (``FairScores.input_means``: the input every Conv/Linear
received during the scoring pass, unpruned). The graph does not need to be a chain: a
consumer behind a residual add or a concatenation loses whole input channels too, and its
own input mean is what replaces them. A depthwise consumer loses its outputs with its
inputs, so there is nothing to fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..removal.graph import following_batchnorm
from ..units.channels import is_depthwise

__all__ = ["Consumer", "capture_consumers", "fold_mean_replacement"]

_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@dataclass
class Consumer:
    """A Conv/Linear as it was before removal: its weight, groups and what directly follows it."""

    weight: torch.Tensor
    groups: int
    depthwise: bool
    #: a BatchNorm with running statistics fed only by this layer, or None
    follower: object = None


def capture_consumers(model: nn.Module, graph=None) -> Dict[str, Consumer]:
    """Remember every Conv/Linear's original weight (removal makes new parameters, so the old
    tensor stays intact) and, from torch-pruning's ``graph``, the BatchNorm right after it."""
    consumers = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (
            isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd)
        ):
            follower = following_batchnorm(graph, module)
            consumers[name] = Consumer(module.weight, getattr(module, "groups", 1), is_depthwise(module), follower)
    return consumers


def removed_input_shift(
    module: nn.Module, consumer: Consumer, mean: torch.Tensor, kept_in: torch.Tensor
) -> torch.Tensor:
    """``[out channels]`` (original numbering): expected contribution of the removed inputs."""
    weight = consumer.weight.detach().to(device="cpu", dtype=torch.float64)
    masked = mean.to(torch.float64).clone()
    masked[kept_in.cpu()] = 0
    if isinstance(module, nn.Linear):
        return weight @ masked
    x = masked.unsqueeze(0)
    padding = module.padding
    if module.padding_mode != "zeros":
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding = 0
    out = _CONVS[weight.dim() - 2](x, weight, None, module.stride, padding, module.dilation, consumer.groups)
    return out[0].flatten(1).mean(1)


def fold_mean_replacement(
    model: nn.Module,
    kept: Dict[str, Dict[str, torch.Tensor]],
    input_means: Dict[str, torch.Tensor],
    consumers: Dict[str, Consumer],
) -> Tuple[Dict[str, int], List[str]]:
    """Fold the removed inputs' means into each consumer's bias (or following BatchNorm).

    ``kept`` is what :meth:`DependencyPlanner.apply` returned. Parameters and buffers are
    replaced, never written into, so a :class:`ModelSnapshot` taken before removal undoes
    this too. Returns ``({consumer: removed inputs folded}, notes on consumers left alone)``.
    """
    modules = dict(model.named_modules())
    folded, notes = {}, []
    for name, sides in kept.items():
        module = modules.get(name)
        if "in" not in sides or module is None:
            continue
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            notes.append(f"{name}: transposed conv, removed inputs not compensated")
            continue
        consumer = consumers.get(name)
        if consumer is None or consumer.depthwise:
            continue  # not a Conv/Linear, or its outputs went with its inputs
        mean = input_means.get(name)
        if mean is None or mean.shape[0] != consumer.weight.shape[1] * consumer.groups:
            notes.append(
                f"{name}: no single mean input (it runs more than once per forward, or its input "
                "shape varies); removed inputs not compensated"
            )
            continue
        removed = mean.shape[0] - len(sides["in"])
        if removed <= 0:
            continue
        shift = removed_input_shift(module, consumer, mean, sides["in"])
        if "out" in sides:
            shift = shift[sides["out"].cpu()]
        if module.bias is not None:
            bias = module.bias
            module.bias = nn.Parameter(bias.detach() + shift.to(bias), requires_grad=bias.requires_grad)
        elif consumer.follower is not None:
            norm = consumer.follower
            norm.running_mean = norm.running_mean - shift.to(norm.running_mean)
        else:
            notes.append(f"{name}: no bias and no BatchNorm right after it; {removed} removed inputs not compensated")
            continue
        folded[name] = removed
    return folded, notes
