"""The utilization statistic: per scored layer, the first ``samples_per_class`` observations of each
compared class, projected.

U is the largest sliced W1 distance between the per-class distributions of a unit's observed tensor
(method.md §1.1). Of each batch only the samples still needed are kept: the first
``samples_per_class`` of each class U compares (:mod:`.classes`), each conv map seen through
``num_projections`` seeded unit directions (:mod:`.projections`), a scalar unit as itself. They live
in one preallocated ``[K', n, C, D]`` float32 buffer per layer, so memory does not grow with the
number of batches (:func:`unit_bytes` per unit). Across processes the buffers are gathered and merged
class by class in rank order, keeping the first ``samples_per_class`` of each class.
"""

from __future__ import annotations

import zlib
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from ..runtime.distributed import all_gather_tensor, all_reduce_sum
from .classes import chosen_classes, class_slots, projections_for, rank_within_class
from .projections import random_projections

__all__ = ["ClassSamples", "unit_bytes"]


def unit_bytes(num_classes: int, samples_per_class: int, map_size: int, num_projections: int) -> int:
    """Bytes of one unit's utilization samples (float32)."""
    return 4 * num_classes * samples_per_class * (1 if map_size == 1 else num_projections)


class ClassSamples:
    """Per-class projected samples of every scored layer's observed tensor.

    ``start`` on the first batch (the number of classes is known once the model has answered),
    ``select`` which rows of a batch are still needed, ``add`` them, ``merge`` across processes.

    Example:
        >>> s = ClassSamples(samples_per_class=2, num_projections=4, max_classes=None, seed=0)
        >>> s.start(num_classes=2)
        >>> labels = torch.tensor([0, 0, 0, 1])
        >>> rows = s.select(labels)
        >>> s.add(labels[rows], {"fc": torch.randn(3, 5, 1)}, {"fc": (0, 5)})
        >>> s.counts.tolist(), tuple(s.buffers["fc"].shape)
        ([2, 1], (2, 2, 5, 1))
    """

    def __init__(
        self,
        samples_per_class: int,
        num_projections: Union[int, str],
        max_classes: Optional[int],
        seed: int,
        device=None,
    ):
        self.samples_per_class = int(samples_per_class)
        #: ``"auto"`` until :meth:`start` resolves it from the classes compared
        self.num_projections = num_projections
        self.max_classes = max_classes
        self.seed = int(seed)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        #: ``[K]`` samples kept per class (host); the classes U compares; each class's slot (-1: none);
        #: empty until :meth:`start`
        self.started = False
        self.counts = self.chosen = self.slots = torch.zeros(0, dtype=torch.long)
        #: ``{layer: [K', n, C, D]}``, the first ``counts[k]`` rows of class k's slot valid
        self.buffers: Dict[str, torch.Tensor] = {}
        #: layers that must hold samples at the end of the pass (checked across processes)
        self.expected: List[str] = []
        self._projections: Dict[str, torch.Tensor] = {}

    def start(self, num_classes: int) -> None:
        """Known on the first batch: the classes, which of them U compares, the projections."""
        self.counts = torch.zeros(num_classes, dtype=torch.long)
        self.chosen = chosen_classes(num_classes, self.max_classes, self.seed)
        self.slots = class_slots(num_classes, self.chosen)
        self.num_projections = projections_for(self.num_projections, self.chosen.numel())
        self.started = True

    def select(self, labels: torch.Tensor) -> torch.Tensor:
        """Indices (host) of the samples of ``labels`` (host, ``[B]``, checked; -1: no class) still
        needed: the first ``samples_per_class`` per compared class, counting what earlier batches gave."""
        n = self.samples_per_class
        if not self.started:  # first batch: every class may still need n
            room = torch.full((int(labels.max()) + 1 if labels.numel() else 1,), n, dtype=torch.long)
        else:
            room = torch.where(self.slots >= 0, n - self.counts, 0).clamp(min=0)
        wanted = rank_within_class(labels) < room[labels.clamp(min=0)]
        return (wanted & (labels >= 0)).nonzero().flatten()  # -1: a sample of no class U compares

    def projection(self, name: str, map_size: int) -> Optional[torch.Tensor]:
        """The ``[map_size, P]`` seeded directions of a layer (None for scalar units)."""
        if map_size == 1:
            return None
        key = f"{name}:{map_size}"
        if key not in self._projections:
            layer_seed = zlib.crc32(name.encode()) ^ self.seed
            directions = random_projections(map_size, int(self.num_projections), seed=layer_seed)
            self._projections[key] = directions.to(self.device)
        return self._projections[key]

    def add(
        self,
        labels: torch.Tensor,
        observed: Dict[str, torch.Tensor],
        channels: Dict[str, Tuple[int, int]],
        check: Optional[Callable[[str, torch.Tensor], None]] = None,
    ) -> None:
        """Write selected rows into the per-class buffers: ``labels`` (host) their classes,
        ``observed[layer]`` their ``[m, C, M]`` views (rows in the order of ``labels``), of which
        the units ``channels[layer] = (start, stop)`` are kept; ``check(layer, values)`` sees the
        values first (NaN/inf)."""
        counts = self.counts
        positions = counts[labels] + rank_within_class(labels)
        slots = self.slots[labels]
        # first batch: more than n of a class may arrive, and classes U does not compare
        keep = ((positions < self.samples_per_class) & (slots >= 0)).nonzero().flatten()
        if keep.numel() == 0:
            return
        # rows of the selection, slots, positions: one copy to the device
        rows_d, slots_d, positions_d = (
            torch.stack([keep, slots[keep], positions[keep]]).to(self.device, non_blocking=True).unbind(0)
        )
        for name, values in observed.items():
            start, stop = channels[name]
            values = values.index_select(0, rows_d.to(values.device))[:, start:stop].float()
            if check is not None:
                check(name, values)
            theta = self.projection(name, values.shape[2])
            projected = values if theta is None else values @ theta
            if name not in self.buffers:
                # rows past a class's count are never read: no need to zero them
                self.buffers[name] = projected.new_empty(
                    self.chosen.numel(), self.samples_per_class, *projected.shape[1:]
                )
            self.buffers[name][slots_d, positions_d] = projected
        counts += torch.bincount(labels[keep], minlength=counts.numel())

    def present_classes(self) -> List[int]:
        """The compared classes the calibration data holds (ascending); at least two, else ValueError."""
        counts = self.counts
        present = (counts > 0).nonzero().flatten().tolist()
        if len(present) < 2:
            compared = self.chosen.numel()
            among = (
                f" among the {compared} classes U compares (max_classes={self.max_classes})"
                if compared < counts.numel()
                else ""
            )
            advice = "; pass calibration data covering more classes, or a larger max_classes (None: all)"
            raise ValueError(
                f"the calibration data holds {len(present)} class(es){among}; the utilization score compares "
                "classes, so it needs labelled samples of at least two" + (advice if among else "")
            )
        return present

    def per_class(self, name: str) -> List[torch.Tensor]:
        """The valid ``[n_k, C, D]`` samples of each present class of layer ``name``."""
        buffer = self.buffers[name]
        return [buffer[int(self.slots[k]), : int(self.counts[k])] for k in self.present_classes()]

    def release(self, name: str) -> None:
        """Free a layer's buffer (scored)."""
        self.buffers.pop(name, None)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())

    @property
    def projection_bytes(self) -> int:
        """Bytes of the cached projection matrices (``[map_size, P]`` per layer and map size)."""
        return sum(t.numel() * t.element_size() for t in self._projections.values())

    def merge(self) -> None:
        """Every rank's samples merged class by class in rank order (the first ``samples_per_class``
        of each class over the ranks' valid rows); collective: every rank calls it, all end equal."""
        missing = all_reduce_sum(torch.tensor([float(sum(n not in self.buffers for n in self.expected))]))
        if missing.item() > 0:
            raise RuntimeError(
                "lightning_fair: a process recorded no samples for some layer; calibration batches must not be empty"
            )
        counts = torch.stack(all_gather_tensor(self.counts)).cpu()  # [W, K]
        n = self.samples_per_class
        chosen = self.chosen.tolist()
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
        for name in self.expected:
            gathered = torch.stack(all_gather_tensor(self.buffers[name]))  # [W, K, n, C, D]
            dev = gathered.device
            self.buffers[name] = gathered[src_rank.to(dev), classes.to(dev), src_row.to(dev)]
        self.counts = merged_counts
