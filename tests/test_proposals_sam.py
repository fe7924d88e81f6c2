"""``sam:CHECKPOINT`` proposals (issue #30): the wiring with SAM at random weights (a tiny image encoder, SAM's
own decoder), not quality: the architecture read from the weights, masks → boxes, click → region."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from dynrefer.cli import main
from dynrefer.errors import InputError
from dynrefer.proposals import proposal_source
from dynrefer.proposals.sam import SamProposals, _encoder_config

TINY = {"img_size": 256, "patch_size": 16, "embed_dim": 32, "depth": 3, "num_heads": 2, "mlp_ratio": 2.0,
        "out_chans": 256, "global_attn_indexes": [1], "window_size": 7}


def _tiny_sam(seed: int = 0) -> Sam:
    torch.manual_seed(seed)
    dim, grid = TINY["out_chans"], TINY["img_size"] // TINY["patch_size"]
    sam = Sam(image_encoder=ImageEncoderViT(norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True,
                                            use_rel_pos=True, **TINY),
              prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                           input_image_size=(TINY["img_size"],) * 2, mask_in_chans=16),
              mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=3,
                                       iou_head_hidden_dim=256, transformer=TwoWayTransformer(
                                           depth=2, embedding_dim=dim, mlp_dim=2048, num_heads=8)),
              pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    with torch.no_grad():  # random weights with some spread, so that masks are not all empty
        for p in sam.mask_decoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return sam.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    sam = _tiny_sam()
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.pth"
    torch.save(sam.state_dict(), path)
    return sam, path


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from dynrefer.demo import example_scene

    image, _ = example_scene()
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    image.save(path)
    return path, np.asarray(image.convert("RGB"))


def test_the_encoder_is_read_from_the_weights():
    from segment_anything import sam_model_registry

    cfg = _encoder_config(_tiny_sam().state_dict())
    assert cfg == TINY
    vit_b = _encoder_config(sam_model_registry["vit_b"]().state_dict())  # the published smallest size
    assert vit_b == {"img_size": 1024, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12,
                     "mlp_ratio": 4.0, "out_chans": 256, "global_attn_indexes": [2, 5, 8, 11], "window_size": 14}


def test_sam_proposals_are_the_boxes_of_the_generators_masks(tiny, scene):
    sam, path = tiny
    settings = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    source = SamProposals(path, **settings)
    got = source(scene[0])
    masks = SamAutomaticMaskGenerator(sam, **settings).generate(scene[1])
    want = []
    for m in masks:
        ys, xs = np.nonzero(m["segmentation"])
        if len(xs):
            want.append(([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], min(1.0, max(0.0, m["predicted_iou"]))))
    assert len(want) > 0 and got.boxes.shape == (len(want), 4)
    assert got.boxes.tolist() == [[float(v) for v in b] for b, _ in want]
    assert got.scores.tolist() == pytest.approx([s for _, s in want])
    for b, m in zip(got.boxes, [m for m in masks if m["segmentation"].any()]):  # box = the mask's tight extent
        x, y, w, h = m["bbox"]  # SAM's own (inclusive) xywh box of the mask
        assert b.tolist() == [x, y, x + w + 1, y + h + 1]


def test_click_to_region_with_sam(tiny, scene, capsys):
    sam, path = tiny
    x, y = 90, 70
    hit = proposal_source(f"sam:{path}").at_point(scene[0], x, y)
    predictor = SamPredictor(sam)
    predictor.set_image(scene[1])
    masks, scores, _ = predictor.predict(point_coords=np.array([[x, y]], np.float32), point_labels=np.array([1]))
    best = masks[int(np.argmax(scores))]
    ys, xs = np.nonzero(best)
    assert best.any() and hit.boxes.tolist() == [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]
    assert main(["describe", str(scene[0]), "--point", str(x), str(y), "--proposals", f"sam:{path}",
                 "--tasks", "caption"]) == 0
    region = json.loads(capsys.readouterr().out)["regions"][0]
    assert region["box"] == hit.boxes[0].tolist() and region["objectness"] == pytest.approx(hit.scores[0])


def test_bad_sam_checkpoints_are_named(tmp_path, scene, capsys):
    with pytest.raises(InputError, match="no such file"):
        proposal_source(f"sam:{tmp_path / 'missing.pth'}")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert main(["describe", str(scene[0]), "--all", "--proposals", f"sam:{tmp_path / 'junk.pth'}"]) == 2
    assert "cannot read the SAM checkpoint" in capsys.readouterr().err
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="not a Segment Anything checkpoint"):
        proposal_source(f"sam:{tmp_path / 'other.pth'}")
