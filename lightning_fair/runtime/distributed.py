"""Collectives across processes (DDP, multi-node), used by the statistics pass (merged by
:mod:`lightning_fair.collect.ranks`), BatchNorm re-estimation (every rank's per-channel count, mean and
M2 merged in rank order with Chan's formula) and evaluation.

Every rank then holds bitwise the same statistics and computes the same scores, so all ranks
remove the same channels without a broadcast. Plain ``torch.distributed`` collectives (gloo,
NCCL, ...), so the same code serves one machine and many.
"""

from __future__ import annotations

from typing import List

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "world_size", "all_reduce_sum", "all_reduce_max", "all_gather_tensor"]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def _collective_device(tensor: torch.Tensor) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks (a new tensor on ``tensor``'s device)."""
    work = tensor.detach().to(_collective_device(tensor)).clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum over ranks (a new tensor on ``tensor``'s device)."""
    work = tensor.detach().to(_collective_device(tensor)).clone()
    dist.all_reduce(work, op=dist.ReduceOp.MAX)
    return work.to(tensor.device)


def all_gather_tensor(tensor: torch.Tensor) -> List[torch.Tensor]:
    """Every rank's tensor (same shape on every rank), in rank order, on ``tensor``'s device."""
    work = tensor.detach().to(_collective_device(tensor)).contiguous()
    parts = [torch.empty_like(work) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, work)
    return [p.to(tensor.device) for p in parts]


def check_same_everywhere(values: List[int], what: str) -> None:
    """Raise on every rank if ranks disagree on small integers (shapes, layer counts)."""
    mine = torch.tensor(values, dtype=torch.long)
    low = mine.to(_collective_device(mine))
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise RuntimeError(
            f"lightning_fair: the processes disagree on {what} ({values} here); every rank must run "
            "the same model on batches of the same structure"
        )
