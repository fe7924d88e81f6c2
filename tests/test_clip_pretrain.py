"""Stage 1: contrastive CLIP pretraining on generated scenes; the export loads as the frozen encoder."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from dynrefer_builtin.synthetic import generate_dataset
from torch.utils.data import DataLoader

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
    pixels, caption, (text_facts, facts) = ds[0]
    assert pixels.shape == (3, 64, 64) and isinstance(caption, str) and text_facts is None
    assert facts[0] == ds.records[ds.items[0][0]]["regions"][ds.items[0][1]]["category"]
    L.seed_everything(0, workers=True)
    module = ClipPretrainModule(TINY_CLIP, lr=2e-3, warmup_steps=2)
    # A fixed batch of 16 pairs: contrastive training must separate them.
    fixed = [ds[i] for i in range(16)]
    batch = (torch.stack([p for p, _, _ in fixed]), [c for _, c, _ in fixed])
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


def test_detail_description_and_multi_positive_loss():
    import open_clip

    from dynrefer.train.clip_pretrain import detail_description, multi_positive_clip_loss

    spec = {"category": "star", "attributes": ["pattern:dotted", "color:red/crimson", "size:small"]}
    assert detail_description(spec) == "the dotted red star"
    assert detail_description({"attributes": ["color:red"]}) is None
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    text = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    scale = torch.tensor(7.0)
    unique = [f"t{i}" for i in range(5)]
    torch.testing.assert_close(multi_positive_clip_loss(image, text, scale, unique),
                               open_clip.ClipLoss()(image, text, scale))
    # texts 0 and 3 are the same: each of the pair is a positive of both images (targets 1/2).
    texts = ["a", "b", "c", "a", "d"]
    logits = scale * image @ text.t()
    ref = 0.0
    for mat in (logits, logits.t()):
        logp = torch.log_softmax(mat, dim=1)
        for i in range(5):
            pos = [j for j in range(5) if texts[j] == texts[i]]
            ref = ref - sum(logp[i, j] for j in pos) / len(pos) / 5
    torch.testing.assert_close(multi_positive_clip_loss(image, text, scale, texts), ref / 2)


def test_detail_pairs_use_close_views(tmp_path):
    import random

    from dynrefer.errors import InputError

    summary = generate_dataset(tmp_path / "scenes", num_images=3, seed=5, workers=1, splits=(1.0, 0.0, 0.0))
    random.seed(0)
    ds = ViewCaptionDataset(summary["jsonl"], split="train", size=32, detail_text_prob=1.0)
    spec = ds.records[ds.items[0][0]]["regions"][ds.items[0][1]]
    texts = {ds[0][1] for _ in range(5)}
    assert texts == {f"the {spec['parts']['color']} {spec['parts']['pattern']} {spec['category']}"}
    captions = ViewCaptionDataset(summary["jsonl"], split="train", size=32, detail_text_prob=0.0)
    assert {captions[0][1] for _ in range(10)} <= set(spec["captions"])
    with pytest.raises(InputError, match="detail_text_prob"):
        ViewCaptionDataset(summary["jsonl"], split="train", size=32, detail_text_prob=2)


def test_multi_positive_loss_with_a_positives_matrix():
    """Asymmetric positives (text j true of image i): image → text targets spread over row i's
    positives, text → image over column j's; identical texts stay positives of each other."""
    from dynrefer.train.clip_pretrain import multi_positive_clip_loss

    torch.manual_seed(1)
    image = torch.nn.functional.normalize(torch.randn(4, 6), dim=1)
    text = torch.nn.functional.normalize(torch.randn(4, 6), dim=1)
    scale = torch.tensor(5.0)
    texts = ["the red star", "the red object", "the blue circle", "the red star"]
    positives = torch.eye(4, dtype=torch.bool)
    positives[0, 1] = positives[3, 1] = True  # "the red object" is true of regions 0 and 3 too
    logits = scale * image @ text.t()
    pos = [[j for j in range(4) if positives[i, j] or texts[i] == texts[j]] for i in range(4)]
    loss_i = -sum(sum(torch.log_softmax(logits[i], 0)[j] for j in pos[i]) / len(pos[i]) for i in range(4)) / 4
    cols = [[i for i in range(4) if j in pos[i]] for j in range(4)]
    loss_t = -sum(sum(torch.log_softmax(logits[:, j], 0)[i] for i in cols[j]) / len(cols[j]) for j in range(4)) / 4
    torch.testing.assert_close(multi_positive_clip_loss(image, text, scale, texts, positives), (loss_i + loss_t) / 2)
    assert cols[1] == [0, 1, 3] and pos[0] == [0, 1, 3]


def test_detail_subsets_are_true_of_their_regions(tmp_path):
    """detail_subsets: each detail text names a subset of the region's colour / pattern and maybe its
    category (never its size), and collate_pairs marks every region of the batch the text is true of."""
    import random

    from dynrefer.train.clip_pretrain import collate_pairs

    summary = generate_dataset(tmp_path / "scenes", num_images=4, seed=6, workers=1, splits=(1.0, 0.0, 0.0))
    random.seed(0)
    ds = ViewCaptionDataset(summary["jsonl"], split="train", size=32, detail_text_prob=1.0, detail_subsets=True)
    samples = [ds[i] for i in range(len(ds))]
    shapes = set()
    for k, (_, text, (text_facts, _facts)) in enumerate(samples):
        spec = ds.records[ds.items[k][0]]["regions"][ds.items[k][1]]
        head, words = text_facts
        assert head in (None, spec["category"]) and set(words) <= {spec["parts"]["color"], spec["parts"]["pattern"]}
        assert text == " ".join(["the", *words, head or "object"]) and "size" not in text
        shapes.add((head is None, len(words)))
    assert len(shapes) >= 4  # category / no category, 0–2 attribute words
    pixels, texts, positives = collate_pairs(samples)
    assert pixels.shape == (len(samples), 3, 32, 32) and positives.diagonal().all()
    for j, (_, _, (text_facts, _)) in enumerate(samples):
        head, words = text_facts
        for i in range(len(samples)):
            spec = ds.records[ds.items[i][0]]["regions"][ds.items[i][1]]
            true = (head is None or head == spec["category"]) and set(words) <= {spec["parts"]["color"],
                                                                                 spec["parts"]["pattern"]}
            assert bool(positives[i, j]) == (true or i == j)
    assert positives.sum() > len(samples)  # some texts are true of other regions


def test_detail_texts_may_name_the_absolute_size(tmp_path):
    """detail_skip=("position:",): the detail text names the region's absolute size class too (never
    its position); the default leaves both out."""
    import random

    from dynrefer.train.clip_pretrain import detail_description

    spec = {"category": "star", "attributes": ["color:red", "pattern:dotted", "size:small", "position:top left"]}
    assert detail_description(spec) == "the red dotted star"
    assert detail_description(spec, ("position:",)) == "the red dotted small star"
    assert detail_description(spec, ()) == "the red dotted small top left star"
    summary = generate_dataset(tmp_path / "scenes", num_images=3, seed=5, workers=1, splits=(1.0, 0.0, 0.0))
    random.seed(0)
    ds = ViewCaptionDataset(summary["jsonl"], split="train", size=32, detail_text_prob=1.0, detail_skip=("position:",))
    for k in range(len(ds)):
        spec = ds.records[ds.items[k][0]]["regions"][ds.items[k][1]]
        size = next(a for a in spec["attributes"] if a.startswith("size:")).split(":")[1]
        assert spec["parts"]["size"] in (size, "largest", "smallest")
        assert ds[k][1] == f"the {spec['parts']['color']} {spec['parts']['pattern']} {size} {spec['category']}"


def test_pretrain_continues_from_earlier_weights(tmp_path):
    """init_weights (``load_local_weights``): stage 1 starts from an earlier export (the loaded model equals
    the file); a file of another config (shapes differ) or a missing one is an InputError naming it."""
    from safetensors.torch import load_file

    from dynrefer.errors import InputError
    from dynrefer.model.encoder import load_local_weights

    torch.manual_seed(0)
    first = ClipPretrainModule(TINY_CLIP)
    path = first.export(tmp_path / "first.safetensors")
    torch.manual_seed(1)
    second = ClipPretrainModule(TINY_CLIP)
    key = "visual.conv1.weight"
    assert not torch.equal(second.clip.state_dict()[key], first.clip.state_dict()[key])
    load_local_weights(second.clip, path)
    saved = load_file(str(path))
    for name, value in second.clip.state_dict().items():
        assert torch.equal(value, saved[name]), name
    with pytest.raises(InputError, match="missing.safetensors': no such file"):
        load_local_weights(second.clip, tmp_path / "missing.safetensors")
    other = dict(TINY_CLIP, embed_dim=TINY_CLIP["embed_dim"] * 2)
    with pytest.raises(InputError, match="first.safetensors' does not match the model: size mismatch"):
        load_local_weights(ClipPretrainModule(other).clip, path)
