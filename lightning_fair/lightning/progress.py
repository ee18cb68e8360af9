"""A calibration loader with a progress bar on every pass (scoring, then BatchNorm re-estimation)."""

from __future__ import annotations

from typing import Optional

__all__ = ["Progress"]


class Progress:
    """A loader with a progress bar on every pass (scoring, then BatchNorm re-estimation)."""

    def __init__(self, loader, total: Optional[int]):
        self.loader, self.total, self.passes = loader, total, 0

    def __iter__(self):
        from tqdm.auto import tqdm

        self.passes += 1
        desc = "lightning_fair: scoring units" if self.passes == 1 else "lightning_fair: re-estimating BatchNorm"
        with tqdm(total=self.total, desc=desc, leave=False, dynamic_ncols=True) as bar:
            for batch in self.loader:
                if self.total is not None and bar.n >= self.total:
                    return  # max_batches reached: the pass stops here anyway
                bar.update(1)  # counts the batch being processed
                yield batch
