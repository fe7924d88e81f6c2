"""``DynReferModule``: the LightningModule around the pure ``DynRefer`` model (SPEC §1.5).

No model logic here: the module builds the model, hands batches to ``DynRefer.forward``,
logs the losses and configures the official optimiser: AdamW (β 0.9 / 0.999, lr 1e-4,
weight decay 0.05, none on biases, norms and other 1-d parameters) with a cosine decay
stepped per epoch to 0 (per step over ``max_steps`` when the trainer has only a step budget).
Under data parallelism the contrastive loss sees the captions and
regions of every process (``self.all_gather`` with gradients).
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch

from ..errors import InputError
from ..model.config import DynReferConfig, merge_dicts
from ..model.dynrefer import DynRefer


def read_tags(path: str | None) -> list[str]:
    if not path:
        return []
    p = Path(path)
    if not p.is_file():
        raise InputError(f"cannot read tag vocabulary '{p}': no such file")
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed (≥ 2-d weights) and not decayed (biases, norms, 1-d)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(".bias") or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class DynReferModule(L.LightningModule):
    """Train / validate ``DynRefer``.

    Args:
        model: a config name (``tiny`` / ``mid`` / ``official``), a config file, a pretrained model folder
            (``save_pretrained`` output) to start from, or ``builtin``: the shipped trained model (to train the
            built-in architecture from scratch, give ``configs/model/builtin.yaml``).
        tags_file: tag vocabulary (one per line) for a model built from a config.
        overrides: nested dict merged into the config (e.g. ``{"views": {"num_views": 1}}``).
        lr, weight_decay, betas: AdamW settings; ``min_lr``: the cosine floor.
    """

    def __init__(self, model: str = "tiny", tags_file: str | None = None, overrides: dict | None = None,
                 lr: float = 1e-4, weight_decay: float = 0.05, betas: tuple[float, float] = (0.9, 0.999),
                 min_lr: float = 0.0):
        super().__init__()
        if tags_file is not None:  # absolute in the checkpoint's hyperparameters: it loads from any folder
            tags_file = str(Path(tags_file).resolve())
        if Path(str(model)).exists():
            model = str(Path(model).resolve())
        self.save_hyperparameters()
        self.model = self._build(model, tags_file, overrides or {})

    @staticmethod
    def _build(model: str, tags_file, overrides: dict) -> DynRefer:
        # the shipped trained model, as everywhere else (its config: configs/model/builtin.yaml)
        if str(model) == "builtin":
            from ..model.io import builtin_dir

            path = builtin_dir()
        else:
            path = Path(model)
        if path.is_dir():
            if overrides:
                raise InputError("config overrides cannot be applied to a pretrained model folder")
            return DynRefer.from_pretrained(path, dtype=torch.float32)  # float32 weights; precision: the Trainer's
        cfg = DynReferConfig.from_name(model)
        if overrides:
            cfg = DynReferConfig.from_dict(merge_dicts(cfg.to_dict(), overrides))
        return DynRefer(cfg, tags=read_tags(tags_file))

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        gathered = self.all_gather(tensor, sync_grads=True)
        return gathered.flatten(0, 1) if gathered.ndim > tensor.ndim else gathered

    def forward(self, batch: dict) -> dict:
        gather = self._gather if self.trainer is not None and self.trainer.world_size > 1 else None
        return self.model(batch, gather=gather, rank=self.global_rank if gather else 0)

    def setup(self, stage: str) -> None:
        """The data's views must be the model's: its encoder takes ``views.size`` pixels and its fusion
        ``views.num_views`` views (a mismatch failed deep inside open_clip or the fusion)."""
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        hparams = getattr(data, "hparams", None)
        if hparams is None:
            return
        views = self.model.config.views
        truncate = self.model.config.roi.truncate_boxes
        if hasattr(data, "follow_model_boxes"):
            data.follow_model_boxes(truncate)
        for name, want in (("size", views.size), ("num_views", views.num_views), ("truncate_boxes", truncate)):
            got = hparams.get(name)
            if got is not None and got != want:
                where = "roi" if name == "truncate_boxes" else "views"
                raise InputError(f"--data.{name} {got} does not match the model's {where}.{name} {want}: "
                                 f"set --data.{name} {want}")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=True, on_step=True,
                      batch_size=len(batch["captions"]))
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        losses = self(batch)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, prog_bar=True, on_epoch=True, sync_dist=True,
                      batch_size=len(batch["captions"]))

    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.AdamW(parameter_groups(self.model, h.weight_decay), lr=h.lr, betas=tuple(h.betas))
        trainer = self.trainer
        by_steps = trainer is not None and (trainer.max_epochs is None or trainer.max_epochs < 0) and (
            trainer.max_steps is not None and trainer.max_steps > 0)
        # Per epoch (official) when training for a number of epochs; per step over max_steps when
        # only a step budget is given (an epoch schedule would otherwise stay at lr forever).
        if by_steps:
            total = int(trainer.max_steps)
        elif trainer is not None and (trainer.max_epochs is None or trainer.max_epochs < 0):
            # no epoch or step budget (e.g. only max_time): no length to decay over; a constant lr, not a
            # cosine that would reach the floor after the first epoch
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn("no max_epochs or max_steps: the learning rate stays constant (the cosine needs a length)")
            return {"optimizer": opt}
        else:
            total = max(1, int(trainer.max_epochs)) if trainer is not None else 1
        # lr_i = min_lr + (lr - min_lr) (1 + cos(pi min(i, total) / total)) / 2, stepped per epoch or per step.
        # Not torch's CosineAnnealingLR: it is periodic past T_max and keeps T_max in checkpoints, so resuming with
        # a larger budget (5 epochs, then --trainer.max_epochs 8) would climb back up (0.19, 0.41, 0.69 of lr);
        # this one stays at the floor, and follows the new budget's length only through the floor.
        floor = h.min_lr / h.lr if h.lr else 0.0

        def cosine(i: int) -> float:
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(i, total) / total))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step" if by_steps else "epoch"}}
