"""Progress and messages inside a Trainer: a calibration loader with a progress bar on every pass
(scoring, the refit's statistics, BatchNorm re-estimation), and text printed without breaking
Lightning's bars.

Under Lightning's ``RichProgressBar`` the pass is a task of that bar's own live display (a tqdm bar
there would print a new line per update); under ``TQDMProgressBar`` it is a tqdm bar beside
Lightning's."""

from __future__ import annotations

from typing import Optional

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import RichProgressBar
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


def live_rich_display(bar):
    """The running ``rich`` display of a ``RichProgressBar`` (None for other bars, or when it has not
    started or has stopped)."""
    if not isinstance(bar, RichProgressBar):
        return None
    display = bar.progress
    if display is None or not display.live.is_started:
        return None
    return display


class Progress:
    """A loader with a progress bar on every pass (scoring, the refit's statistics, BatchNorm
    re-estimation, each named by the pipeline): a task of the Trainer's rich display when it has
    one, else a tqdm bar."""

    def __init__(self, loader, total: Optional[int], bar=None):
        self.loader, self.total, self.bar, self.passes = loader, total, bar, 0
        self.next_name: Optional[str] = None

    def name_next_pass(self, what: str) -> None:
        """What the next pass is for (the pipeline says it: ``runtime.batches.name_next_pass``)."""
        self.next_name = what

    def __iter__(self):
        self.passes += 1
        what, self.next_name = self.next_name or ("scoring units" if self.passes == 1 else "a further pass"), None
        desc = f"lightning_fair: {what}"
        display = live_rich_display(self.bar)
        if display is not None:
            yield from self._rich(display, desc)
        else:
            yield from self._tqdm(desc)

    def _rich(self, display, desc: str):
        # Lightning's display repaints only when its bar asks (``refresh``): without it our task
        # would stand still, and once removed would linger in the last frame
        task = display.add_task(desc, total=self.total if self.total is not None else float("inf"))
        try:
            for done, batch in enumerate(self.loader):
                if self.total is not None and done >= self.total:
                    return  # max_batches reached: the pass stops here anyway
                display.update(task, advance=1)
                self.bar.refresh()
                yield batch
        finally:
            display.remove_task(task)
            self.bar.refresh(hard=True)

    def _tqdm(self, desc: str):
        from tqdm.auto import tqdm

        # disable=None: no bar when the output is not a terminal (a log file gets no cursor codes)
        with tqdm(total=self.total, desc=desc, leave=False, dynamic_ncols=True, disable=None) as bar:
            for batch in self.loader:
                if self.total is not None and bar.n >= self.total:
                    return  # max_batches reached: the pass stops here anyway
                bar.update(1)  # counts the batch being processed
                yield batch
