"""Stage 1: contrastive CLIP pretraining on generated scenes; the export loads as the frozen encoder."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from dynrefer.data.synthetic import generate_dataset
from dynrefer.model.config import TINY_CLIP, EncoderConfig
from dynrefer.model.encoder import FrozenCLIP
from dynrefer.train.clip_pretrain import ClipPretrainModule, ViewCaptionDataset


class Losses(L.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


def test_pretrain_reduces_loss_and_exports(tmp_path):
    summary = generate_dataset(tmp_path / "scenes", num_images=10, seed=3, workers=1, splits=(1.0, 0.0, 0.0))
    ds = ViewCaptionDataset(summary["jsonl"], split="train", size=64)
    assert len(ds) >= 30
    pixels, caption = ds[0]
    assert pixels.shape == (3, 64, 64) and isinstance(caption, str)
    L.seed_everything(0, workers=True)
    module = ClipPretrainModule(TINY_CLIP, lr=2e-3, warmup_steps=2)
    # A fixed batch of 16 pairs: contrastive training must separate them.
    fixed = [ds[i] for i in range(16)]
    batch = (torch.stack([p for p, _ in fixed]), [c for _, c in fixed])
    loader = DataLoader([batch] * 12, batch_size=None)
    losses = Losses()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[losses],
                        default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=loader)
    assert len(losses.values) == 12
    assert sum(losses.values[-3:]) / 3 < 0.7 * sum(losses.values[:3]) / 3, losses.values
    path = module.export(tmp_path / "clip.safetensors")
    encoder = FrozenCLIP(EncoderConfig(model=TINY_CLIP, weights=str(path)))
    module.clip.eval()
    with torch.no_grad():
        ref = module.clip.visual.forward_intermediates(batch[0][:2], indices=1, normalize_intermediates=True,
                                                       intermediates_only=True, output_fmt="NCHW")
    cls, patches = encoder(batch[0][:2])
    assert torch.allclose(patches, ref["image_intermediates"][-1], atol=1e-5)
