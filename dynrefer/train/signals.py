"""Stop a prediction run cleanly on SIGINT / SIGTERM.

Lightning's prediction loop does not stop on SIGTERM (its handler only records it) and turns a
``KeyboardInterrupt`` into a silent ``sys.exit(1)``. :class:`StopOnSignal` catches both signals while
``Trainer.predict`` runs and stops at the end of the batch in progress, after the prediction writer has
saved it: what was done is kept and a rerun of the same command resumes. A second SIGINT interrupts at
once, as usual.
"""

from __future__ import annotations

import signal
import threading

from lightning.pytorch.callbacks import Callback

from ..errors import Interrupted

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal(Callback):
    """Raise :class:`~dynrefer.errors.Interrupted` at the first batch end after SIGINT or SIGTERM (put it after
    the prediction writer in the callback list, so that the batch is written first)."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C: stop now
        self.received = signum

    def on_predict_start(self, trainer, pl_module):
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in _SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.received is not None:
            name = signal.Signals(self.received).name
            self._restore()
            raise Interrupted(f"stopped by {name}; the regions predicted so far are kept: rerun the same command to "
                              "resume", exit_code=128 + int(self.received))

    def on_predict_end(self, trainer, pl_module):
        self._restore()

    def on_exception(self, trainer, pl_module, exception):
        self._restore()
