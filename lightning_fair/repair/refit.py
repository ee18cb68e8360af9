"""Least-squares refit of the consumers: after removal, each Conv/Linear that lost inputs gets the
weights (and bias) that best reproduce, from its kept inputs, what it computed from all of them.

For a consumer with original weight ``W`` (its kept outputs only) and calibration inputs ``X`` (all
input channels, as the *unpruned* model produces them), the target is its original output
``Y = X W^T`` (bias excluded) and the refit solves, over the kept inputs ``X_K``,

    min over W', c of  || Y - X_K W'^T - c ||^2  +  lambda * n * ||W'||^2

a ridge regression with an intercept (ThiNet's and CHIP's reconstruction, AIMET's channel-pruning
weight reconstruction; mean replacement is the special case ``W' = W_K``). It is solved from
sufficient statistics gathered in **one** extra forward pass of the unpruned model over the
calibration batches (:func:`collect_refit_statistics`): per consumer the row count, the sums of
``X_K`` and ``Y`` and the products ``X_K^T X_K`` and ``X_K^T Y``, in float64, so memory does not
grow with the batches (``8 (D^2 + D O + D + O)`` bytes per consumer, ``D`` kept input columns,
``O`` kept outputs; :func:`refit_bytes`; over ``memory_budget`` the consumers are split into
several passes, :func:`split_by_budget`). With centred statistics the intercept is not penalised:

    W'^T = (C_xx + lambda I)^-1 C_xy,   c = mean(Y) - W' mean(X_K),   lambda = RIDGE * trace(C_xx) / D

A convolution's rows are its unfolded input patches (``F.unfold``: one row per output position,
columns channel-major like the weight); a Linear's rows are its input vectors (any leading
dimensions flattened). The intercept goes into the consumer's bias, or into the running mean of a
BatchNorm right after it (as mean replacement does); with neither, the fit has no intercept.

Left to mean replacement, each with a note: grouped (not depthwise) and transposed convolutions,
3-d convolutions, consumers whose kept input columns exceed :data:`MAX_INPUTS` (the statistics
would pass 0.5 GiB), consumers the pass never saw run (e.g. ``nn.MultiheadAttention``'s
``out_proj``, whose weight is read without calling the module), consumers with fewer than
:data:`MIN_ROWS_PER_INPUT` calibration rows per kept input column (too little data). Depthwise
convolutions lose their outputs with their inputs: nothing to refit.

Every parameter and buffer is replaced, never written into, so a
:class:`~lightning_fair.runtime.guards.ModelSnapshot` taken before removal undoes the refit too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.batches import batch_inputs, call_model, inputs_to, model_device, padding_mask, real_rows
from ..runtime.distributed import all_reduce_sum, is_distributed
from ..runtime.guards import preserved_modes
from ..units.channels import is_depthwise

__all__ = [
    "MAX_INPUTS",
    "MIN_ROWS_PER_INPUT",
    "RIDGE",
    "RefitTarget",
    "collect_refit_statistics",
    "refit_bytes",
    "refit_consumers",
    "refit_targets",
    "split_by_budget",
]

#: ridge strength, relative to the mean variance of the kept input columns
RIDGE = 1e-3
#: kept input columns (channels x kernel positions) above which a consumer is left to mean replacement
MAX_INPUTS = 8192
#: calibration rows needed per kept input column: with fewer the fit follows the calibration data's
#: noise (SmolLM2-135M, 10 % of the blocks removed, 1,024 calibration token rows, fewer than most
#: down_proj consumers keep of their 1,536 inputs: held-out perplexity 21.8 dense -> 108 with the
#: refit), and the consumer is left to mean replacement
MIN_ROWS_PER_INPUT = 2
#: rows x columns of one unfolded chunk (the transient memory of the pass: 64 MiB in float32)
CHUNK_ELEMENTS = 1 << 24


@dataclass
class RefitTarget:
    """A consumer to refit: the original indices of the inputs and outputs it keeps, and where its
    intercept goes (``"bias"``, ``"norm"``: the running mean of the BatchNorm after it, or ``"none"``)."""

    name: str
    kept_in: torch.Tensor
    kept_out: Optional[torch.Tensor]
    intercept: str
    #: the BatchNorm that takes the intercept (``intercept == "norm"``)
    follower: Optional[nn.Module] = None

    def columns(self, module: nn.Module) -> int:
        """``D``: kept inputs times kernel positions."""
        kernel = module.weight[0, 0].numel() if isinstance(module, nn.modules.conv._ConvNd) else 1
        return len(self.kept_in) * kernel

    def outputs(self, module: nn.Module) -> int:
        return module.weight.shape[0] if self.kept_out is None else len(self.kept_out)


def refit_targets(
    model: nn.Module, kept: Dict[str, Dict[str, torch.Tensor]], followers: Dict[str, Optional[nn.Module]]
) -> Tuple[Dict[str, RefitTarget], List[str]]:
    """The consumers that lose inputs under ``kept`` (original indices kept per module, as
    :meth:`DependencyPlanner.apply` returns them, taken from the unpruned ``model``) and can be
    refitted; ``followers`` maps a Conv/Linear to the BatchNorm right after it (or None).
    Returns ``(targets, notes on consumers left to mean replacement)``."""
    modules = dict(model.named_modules())
    targets, notes = {}, []
    for name, sides in kept.items():
        module = modules.get(name)
        if "in" not in sides or not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        total_in = module.weight.shape[1] * getattr(module, "groups", 1)
        if len(sides["in"]) >= total_in or is_depthwise(module):
            continue  # nothing removed, or a depthwise conv whose outputs went with its inputs
        why = unsupported(module)
        if why is None and len(sides["in"]) * module.weight[0, 0].numel() > MAX_INPUTS:
            why = f"more than {MAX_INPUTS} kept input columns"
        if why is not None:
            notes.append(f"{name}: {why}; left to mean replacement")
            continue
        follower = followers.get(name)
        intercept = "bias" if module.bias is not None else "norm" if follower is not None else "none"
        targets[name] = RefitTarget(name, sides["in"].cpu(), sides.get("out"), intercept, follower)
    return targets, notes


def unsupported(module: nn.Module) -> Optional[str]:
    """Why this Conv/Linear cannot be refitted, or None."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "transposed convolution"
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.weight.dim() > 4:
            return "3-d convolution"
        if module.groups > 1:
            return f"grouped convolution ({module.groups} groups)"
    return None


def refit_bytes(model: nn.Module, targets: Dict[str, RefitTarget]) -> int:
    """Bytes the refit's statistics take (float64 sums and products), for a memory estimate."""
    modules = dict(model.named_modules())
    total = 0
    for target in targets.values():
        d, o = target.columns(modules[target.name]), target.outputs(modules[target.name])
        total += 8 * (d * d + d * o + d + o + 1)
    return total


def split_by_budget(
    model: nn.Module, targets: Dict[str, RefitTarget], budget: Optional[int]
) -> List[Dict[str, RefitTarget]]:
    """The targets in parts whose statistics fit ``budget`` bytes each (one pass per part; a consumer
    over the budget alone is a part of its own), in the model's order; one part without a budget."""
    if budget is None:
        return [targets] if targets else []
    parts: List[Dict[str, RefitTarget]] = []
    used = budget + 1
    for name, target in targets.items():
        size = refit_bytes(model, {name: target})
        if used + size > budget:
            parts.append({})
            used = 0
        parts[-1][name] = target
        used += size
    return parts


@dataclass
class LeastSquares:
    """Sufficient statistics of one consumer's regression, float64 on the model's device."""

    rows: torch.Tensor
    sum_x: torch.Tensor
    sum_y: torch.Tensor
    xx: torch.Tensor
    xy: torch.Tensor

    @classmethod
    def zeros(cls, columns: int, outputs: int, device) -> "LeastSquares":
        z = dict(dtype=torch.float64, device=device)
        return cls(
            torch.zeros((), **z),
            torch.zeros(columns, **z),
            torch.zeros(outputs, **z),
            torch.zeros(columns, columns, **z),
            torch.zeros(columns, outputs, **z),
        )

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Rows ``x`` [n, D] (kept inputs) and ``y`` [n, O] (original outputs, no bias), float32."""
        self.rows += x.shape[0]
        self.sum_x += x.sum(0, dtype=torch.float64)
        self.sum_y += y.sum(0, dtype=torch.float64)
        x, y = x.double(), y.double()
        self.xx += x.T @ x
        self.xy += x.T @ y

    def merge_across_ranks(self) -> None:
        for tensor in (self.rows, self.sum_x, self.sum_y, self.xx, self.xy):
            tensor.copy_(all_reduce_sum(tensor))

    def solve(self, intercept: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(W' [O, D], c [O])`` (c zero without an intercept), float64."""
        n = self.rows.clamp_min(1)
        xx, xy = self.xx / n, self.xy / n
        mean_x, mean_y = self.sum_x / n, self.sum_y / n
        if intercept:
            xx = xx - torch.outer(mean_x, mean_x)
            xy = xy - torch.outer(mean_x, mean_y)
        d = xx.shape[0]
        scale = torch.diagonal(xx).clamp_min(0).mean().clamp_min(1e-12)
        system = xx + RIDGE * scale * torch.eye(d, dtype=xx.dtype, device=xx.device)
        weight_t = torch.linalg.solve(system, xy)
        shift = mean_y - mean_x @ weight_t if intercept else torch.zeros_like(mean_y)
        return weight_t.T, shift


def _rows(module: nn.Module, x: torch.Tensor, kept_in: torch.Tensor) -> torch.Tensor:
    """The consumer's kept inputs as regression rows [n, D] (convolutions: unfolded patches of a
    batched input)."""
    if isinstance(module, nn.Linear):
        return x[..., kept_in].reshape(-1, len(kept_in))
    spatial = module.weight.dim() - 2
    x = x[:, kept_in]
    padding = module.padding
    if module.padding_mode != "zeros" or isinstance(padding, str):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        padding = (0,) * spatial
    kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    if spatial == 1:  # Conv1d as a Conv2d of height 1
        x = x.unsqueeze(2)
        kernel, stride, dilation, padding = (1, *kernel), (1, *stride), (1, *dilation), (0, *padding)
    patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # [N, D, L]
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def _targets_rows(module: nn.Module, y: torch.Tensor, kept_out: Optional[torch.Tensor]) -> torch.Tensor:
    """The consumer's original output without its bias, kept outputs only, as rows [n, O]."""
    if isinstance(module, nn.Linear):
        y = y.reshape(-1, y.shape[-1])
        if module.bias is not None:
            y = y - module.bias
        return y if kept_out is None else y[:, kept_out]
    spatial = module.weight.dim() - 2
    if module.bias is not None:
        y = y - module.bias.view(1, -1, *([1] * spatial))
    if kept_out is not None:
        y = y[:, kept_out]
    return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])


def collect_refit_statistics(
    model: nn.Module,
    targets: Dict[str, RefitTarget],
    dataloader: Iterable,
    *,
    unpack: Optional[Callable] = None,
    max_batches: Optional[int] = None,
    distributed: bool = False,
) -> Dict[str, LeastSquares]:
    """One eval-mode forward pass of the **unpruned** ``model`` over the calibration batches,
    gathering each target's least-squares statistics (merged across ranks when ``distributed``).
    The model is handed back unchanged (flags included)."""
    modules = dict(model.named_modules())
    device = model_device(model)
    stats: Dict[str, LeastSquares] = {}
    for name, target in targets.items():
        module = modules[name]
        stats[name] = LeastSquares.zeros(target.columns(module), target.outputs(module), device)

    def make_hook(name: str):
        target, module = targets[name], modules[name]
        kept_in = target.kept_in.to(device)
        kept_out = None if target.kept_out is None else target.kept_out.to(device)
        columns = target.columns(module)

        def hook(_module, args, output):
            x, y = args[0].detach(), output.detach()
            if isinstance(module, nn.Linear):  # padded token positions are no rows of the fit
                x, y = real_rows(x, current["mask"]), real_rows(y, current["mask"])
                stats[name].add(_rows(module, x, kept_in).float(), _targets_rows(module, y, kept_out).float())
                return
            if x.dim() == module.weight.dim() - 1:  # an unbatched input
                x, y = x.unsqueeze(0), y.unsqueeze(0)
            # chunks of whole samples, so that the unfolded patches stay within CHUNK_ELEMENTS
            step = max(1, CHUNK_ELEMENTS // (y[0, 0].numel() * columns))
            for start in range(0, x.shape[0], step):
                rows = _rows(module, x[start : start + step], kept_in).float()
                stats[name].add(rows, _targets_rows(module, y[start : start + step], kept_out).float())

        return hook

    handles = []
    used = 0
    current: Dict[str, Optional[torch.Tensor]] = {"mask": None}  # this batch's real tokens (padded inputs)
    with torch.inference_mode(False), torch.no_grad(), preserved_modes(model):
        model.eval()
        try:
            for name in targets:
                handles.append(modules[name].register_forward_hook(make_hook(name)))
            for batch in dataloader:
                inputs = inputs_to(batch_inputs(batch, unpack), device)
                current["mask"] = padding_mask(inputs)
                call_model(model, inputs)
                used += 1
                if max_batches is not None and used >= max_batches:
                    break
        finally:
            for handle in handles:
                handle.remove()
    if used == 0:
        raise ValueError("the calibration dataloader yielded no batches for the refit pass; pass a non-empty one")
    if distributed and is_distributed():
        for name in sorted(stats):
            stats[name].merge_across_ranks()
    return stats


def refit_consumers(
    model: nn.Module, targets: Dict[str, RefitTarget], stats: Dict[str, LeastSquares]
) -> Tuple[Dict[str, int], List[str]]:
    """Replace each target's weight (and bias or following running mean) in the **pruned**
    ``model`` by the least-squares solution. Returns ``({consumer: kept inputs refitted from},
    notes on the consumers left alone)``; those are for mean replacement to handle."""
    modules = dict(model.named_modules())
    refitted, notes = {}, []
    for name, target in targets.items():
        module, stat = modules.get(name), stats.get(name)
        if module is None or stat is None or int(stat.rows) == 0:
            notes.append(f"{name}: did not run during the refit pass; left to mean replacement")
            continue
        rows, inputs = int(stat.rows), int(stat.xx.shape[0])
        if rows < MIN_ROWS_PER_INPUT * inputs:
            notes.append(
                f"{name}: {rows} calibration rows for {inputs} kept inputs (the refit needs at least "
                f"{MIN_ROWS_PER_INPUT * inputs}: pass more calibration data); left to mean replacement"
            )
            continue
        try:
            weight, shift = stat.solve(intercept=target.intercept != "none")
        except RuntimeError as error:  # torch.linalg.LinAlgError
            notes.append(f"{name}: least squares failed ({error}); left to mean replacement")
            continue
        old = module.weight
        weight = weight.reshape(old.shape[0], -1)
        if weight.shape[1] != old[0].numel() or weight.shape[0] != old.shape[0]:
            notes.append(f"{name}: pruned weight {tuple(old.shape)} does not match the refit; left to mean replacement")
            continue
        if not (torch.isfinite(weight).all() and torch.isfinite(shift).all()):
            notes.append(f"{name}: the refit is not finite; left to mean replacement")
            continue
        module.weight = nn.Parameter(weight.reshape(old.shape).to(old), requires_grad=old.requires_grad)
        if target.intercept == "bias":
            bias = module.bias
            module.bias = nn.Parameter(bias.detach() + shift.to(bias), requires_grad=bias.requires_grad)
        elif target.intercept == "norm":
            norm = target.follower
            norm.running_mean = norm.running_mean - shift.to(norm.running_mean)
        refitted[name] = len(target.kept_in)
    return refitted, notes
