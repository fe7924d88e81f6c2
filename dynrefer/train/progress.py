"""A prediction progress bar that also shows regions per second."""

from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


class RegionsProgressBar(TQDMProgressBar):
    """Lightning's bar over image batches, with ``regions`` done and ``regions/s`` as postfix, on stderr
    (stdout carries the command's JSON summary)."""

    def init_predict_tqdm(self) -> Tqdm:
        return Tqdm(desc=self.predict_description, position=2 * self.process_position, disable=self.is_disabled,
                    leave=True, dynamic_ncols=True, file=sys.stderr, smoothing=0, bar_format=self.BAR_FORMAT)

    def on_predict_start(self, trainer, pl_module):
        super().on_predict_start(trainer, pl_module)
        self._regions, self._start = 0, time.perf_counter()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._regions += len(outputs or [])
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        if self.predict_progress_bar is not None:
            self.predict_progress_bar.set_postfix(regions=self._regions, regions_per_s=f"{self._regions / elapsed:.1f}")
