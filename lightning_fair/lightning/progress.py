"""Progress and messages inside a Trainer: a calibration loader with a progress bar on every pass
(scoring, then BatchNorm re-estimation), and text printed without breaking Lightning's bars."""

from __future__ import annotations

from typing import Optional

from lightning.pytorch import Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info

__all__ = ["Progress", "announce"]


def announce(trainer: Trainer, text: str) -> None:
    """Print ``text`` once (rank zero) through the Trainer's progress bar (``ProgressBar.print``: no
    interleaving with a live bar), or log it when there is no progress bar."""
    if not trainer.is_global_zero:
        return
    bar = trainer.progress_bar_callback
    if bar is not None:
        bar.print(text)
    else:
        rank_zero_info(text)


class Progress:
    """A loader with a progress bar on every pass (scoring, then BatchNorm re-estimation)."""

    def __init__(self, loader, total: Optional[int]):
        self.loader, self.total, self.passes = loader, total, 0

    def __iter__(self):
        from tqdm.auto import tqdm

        self.passes += 1
        desc = "lightning_fair: scoring units" if self.passes == 1 else "lightning_fair: re-estimating BatchNorm"
        # disable=None: no bar when the output is not a terminal (a log file gets no cursor codes)
        with tqdm(total=self.total, desc=desc, leave=False, dynamic_ncols=True, disable=None) as bar:
            for batch in self.loader:
                if self.total is not None and bar.n >= self.total:
                    return  # max_batches reached: the pass stops here anyway
                bar.update(1)  # counts the batch being processed
                yield batch
