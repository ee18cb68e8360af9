"""The statistics of one pass merged across processes (DDP, multi-node): every rank ends with the
same numbers.

The ranks first check that they scored the same layers with the same classes and the same chunk of
units; then every accumulator of the pass merges itself (``merge``, in its own module: sums are
all-reduced, the per-class samples of U gathered and merged class by class in rank order). The
collectives themselves are in :mod:`lightning_fair.runtime.distributed`.
"""

from __future__ import annotations

import torch

from ..runtime.distributed import all_reduce_sum, check_same_everywhere

__all__ = ["merge_ranks"]


def merge_ranks(col) -> None:
    """Merge every rank's statistics into the StatisticsCollector ``col``, in place; all ranks
    end bitwise equal (collective: call on every rank)."""
    empty = all_reduce_sum(torch.tensor([float(col.num_batches == 0)]))
    if empty.item() > 0:
        raise ValueError(
            f"{int(empty.item())} process(es) got no calibration batch; give every rank data "
            "(a DistributedSampler over at least world_size batches)"
        )
    names = list(col.layers)
    check_same_everywhere(
        [len(names), col.class_counts.numel()] + [col.layers[n].num_units for n in names], "the scored layers"
    )
    check_same_everywhere([v for n in names if n in col.channels for v in col.channels[n]], "the chunk of units")
    for statistic in col.statistics():
        statistic.merge()
