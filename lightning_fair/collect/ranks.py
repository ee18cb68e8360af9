"""The statistics of one pass merged across processes (DDP, multi-node): every rank ends with the
same numbers.

* sums (the reconstruction sums, the consumers' input sums and counts, the calibration
  loss/accuracy tallies) are all-reduced;
* the per-class samples of the utilization score are all-gathered and merged class by
  class in rank order, keeping the first ``samples_per_class`` of each class;
* the screening moments are summed.

The collectives themselves are in :mod:`lightning_fair.runtime.distributed`.
"""

from __future__ import annotations

from typing import List

import torch

from ..runtime.distributed import (
    all_gather_tensor,
    all_reduce_sum,
    check_same_everywhere,
)
from .moments import ClassMoments

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
    for name in names:
        col.layers[name].taylor_sum = all_reduce_sum(col.layers[name].taylor_sum)
        col.layers[name].taylor_abs_sum = all_reduce_sum(col.layers[name].taylor_abs_sum)
    if col.collects_screening:
        _merge_screening(col, names)
    names = [n for n in names if n in col.channels]  # layers with utilization samples in this pass
    missing = all_reduce_sum(torch.tensor([float(sum(col.layers[n].samples is None for n in names))]))
    if missing.item() > 0:
        raise RuntimeError(
            "lightning_fair: a process recorded no samples for some layer; calibration batches must not be empty"
        )
    counts = torch.stack(all_gather_tensor(col.class_counts)).cpu()  # [W, K]
    n = col.samples_per_class
    # for each class U compares (one slot each), the first n rows over the ranks' valid rows, in rank order
    chosen = col.chosen_classes.tolist()
    src_rank = torch.zeros(len(chosen), n, dtype=torch.long)
    src_row = torch.zeros(len(chosen), n, dtype=torch.long)
    merged_counts = torch.zeros(counts.shape[1], dtype=torch.long)
    for slot, k in enumerate(chosen):
        ranks = torch.repeat_interleave(torch.arange(counts.shape[0]), counts[:, k])
        rows = torch.cat([torch.arange(int(c)) for c in counts[:, k]]) if counts[:, k].sum() else ranks
        take = min(n, ranks.numel())
        src_rank[slot, :take], src_row[slot, :take] = ranks[:take], rows[:take]
        merged_counts[k] = take
    classes = torch.arange(len(chosen)).unsqueeze(1).expand(-1, n)
    for name in names:
        stats = col.layers[name]
        gathered = torch.stack(all_gather_tensor(stats.samples))  # [W, K, n, C, D]
        dev = gathered.device
        stats.samples = gathered[src_rank.to(dev), classes.to(dev), src_row.to(dev)]
    col.class_counts = merged_counts
    consumers = sorted(col.input_sums)
    check_same_everywhere([len(consumers)] + [col.input_sums[c].numel() for c in consumers], "the layer inputs")
    for name in consumers:
        col.input_sums[name] = all_reduce_sum(col.input_sums[name])
    tallies = torch.tensor(
        [col.loss_sum, col.correct, col.seen, col.num_batches]
        + [max(col.input_counts[c], 0) for c in consumers]
        + [col.input_calls.get(c, 0) for c in consumers]
        + [float(col.input_counts[c] < 0) for c in consumers],
        dtype=torch.float64,
    )
    tallies = all_reduce_sum(tallies).tolist()
    col.loss_sum, col.correct, col.seen, col.num_batches = tallies[0], int(tallies[1]), int(tallies[2]), int(tallies[3])
    k = len(consumers)
    for i, name in enumerate(consumers):
        # a rank that saw the input shape vary marked it -1: no single mean anywhere then
        col.input_counts[name] = -1 if tallies[4 + 2 * k + i] > 0 else int(tallies[4 + i])
        col.input_calls[name] = int(tallies[4 + k + i])


def _merge_screening(col, names: List[str]) -> None:
    """All-reduce the per-class counts, sums and sums of squares (layers, then layer inputs)."""
    for name in names:
        if col.layers[name].moments is not None:  # not on the entries observing a layer's input
            col.layers[name].moments = ClassMoments(*map(all_reduce_sum, col.layers[name].moments.tensors()))
    consumers = sorted(col.input_moments)
    check_same_everywhere([len(consumers)], "the layer inputs")
    invalid = all_reduce_sum(torch.tensor([float(col.input_moments[c] is None) for c in consumers]))
    valid = [c for c, bad in zip(consumers, invalid.tolist()) if bad == 0]
    check_same_everywhere([col.input_moments[c].total.numel() for c in valid], "the layer input widths")
    for name in consumers:
        col.input_moments[name] = (
            ClassMoments(*map(all_reduce_sum, col.input_moments[name].tensors())) if name in valid else None
        )
