"""Lightning callbacks: export the trained model as a ``save_pretrained`` folder."""

from __future__ import annotations

import lightning as L


class ExportPretrained(L.Callback):
    """At the end of ``fit`` write ``pl_module.model.save_pretrained(dirpath)`` (rank 0 only),
    so that the next recipe (or ``describe``) can start from the folder."""

    def __init__(self, dirpath: str, include_frozen: bool = True, frozen_dtype: str | None = None):
        super().__init__()
        self.dirpath = dirpath
        self.include_frozen = include_frozen
        self.frozen_dtype = frozen_dtype

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            pl_module.model.save_pretrained(self.dirpath, include_frozen=self.include_frozen,
                                            frozen_dtype=self.frozen_dtype)
