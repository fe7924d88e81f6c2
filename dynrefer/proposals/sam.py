"""``sam:CHECKPOINT`` proposals: Segment Anything (the ``segment-anything`` package, the ``proposals`` extra).

* :meth:`SamProposals.__call__`: the automatic mask generator (a grid of point prompts, masks filtered by predicted
  IoU and stability, duplicates removed); each mask gives a box, its predicted IoU the objectness;
* :meth:`SamProposals.at_point`: click-to-region, the mask SAM predicts for one foreground point (of its three
  candidate masks, the one of highest predicted IoU).

The DynRefer model describes a region by its box, so masks become boxes (their tight extents). The checkpoint is
one of the published SAM files (ViT-H, ViT-L, ViT-B; ``sam_vit_*.pth``) or any state dict of the same
architecture: the image encoder's size (width, depth, heads, global-attention blocks, input size) is read from
the weights themselves, so a file of another size loads as well (the tests use a tiny one).
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import InputError
from .base import Proposals

__all__ = ["SamProposals", "build_sam"]

_ENC = "image_encoder."


def _encoder_config(state: dict) -> dict:
    """The image encoder's settings from its weights (``segment_anything``'s ``ImageEncoderViT`` arguments)."""
    try:
        proj = state[_ENC + "patch_embed.proj.weight"]
        embed_dim, patch = int(proj.shape[0]), int(proj.shape[2])
        grid = int(state[_ENC + "pos_embed"].shape[1])
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(_ENC + r"blocks\.(\d+)\.", k)))
        rel = [int(state[f"{_ENC}blocks.{i}.attn.rel_pos_h"].shape[0]) for i in range(depth)]
        head_dim = int(state[_ENC + "blocks.0.attn.rel_pos_h"].shape[1])
        mlp = int(state[_ENC + "blocks.0.mlp.lin1.weight"].shape[0])
        out_chans = int(state[_ENC + "neck.0.weight"].shape[0])
    except (KeyError, ValueError, IndexError, AttributeError) as exc:
        raise InputError(f"not a Segment Anything checkpoint (image encoder weights: {exc})") from None
    windows = {r for r in rel if r != 2 * grid - 1}
    return {"embed_dim": embed_dim, "patch_size": patch, "img_size": grid * patch, "depth": depth,
            "num_heads": embed_dim // head_dim, "mlp_ratio": mlp / embed_dim, "out_chans": out_chans,
            "global_attn_indexes": [i for i, r in enumerate(rel) if r == 2 * grid - 1],
            "window_size": (windows.pop() + 1) // 2 if windows else 14}


def build_sam(state: dict):
    """A ``segment_anything`` ``Sam`` with ``state`` loaded (strictly), its image encoder sized from the weights;
    the prompt encoder and mask decoder are SAM's own (every published checkpoint shares them)."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    cfg = _encoder_config(state)
    dim, embedding = cfg["out_chans"], cfg["img_size"] // cfg["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True,
                                      use_rel_pos=True, **cfg),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(embedding, embedding),
                                     input_image_size=(cfg["img_size"], cfg["img_size"]), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=3,
                                 iou_head_hidden_dim=256,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=2048, num_heads=8)),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    try:
        sam.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InputError(f"the SAM checkpoint does not fit SAM's architecture: {first[0] if first else exc}") from None
    return sam.eval()


class SamProposals:
    """Proposals from a SAM checkpoint (see the module docstring). ``generator``: settings of
    ``SamAutomaticMaskGenerator`` (``points_per_side``, ``pred_iou_thresh``, ``stability_score_thresh``, ...;
    SAM's defaults otherwise)."""

    def __init__(self, checkpoint, *, device=None, **generator):
        import segment_anything  # noqa: F401 - a missing extra stops here, named in one line by the CLI
        import torch

        path = Path(checkpoint)
        if not path.is_file():
            raise InputError(f"cannot read the SAM checkpoint '{path}': no such file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds for a file that is not a checkpoint
            raise InputError(f"cannot read the SAM checkpoint '{path}': {type(exc).__name__}: {exc}") from None
        for key in ("model", "state_dict"):  # a training checkpoint wraps the weights
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise InputError(f"the SAM checkpoint '{path}' is not a state dict")
        try:
            self.model = build_sam(state)
        except InputError as err:
            raise InputError(f"SAM checkpoint '{path}': {err}") from None
        if device is not None:
            self.model.to(device)
        self.generator = generator

    def _pixels(self, image) -> np.ndarray:
        from ..images import load_image

        return np.ascontiguousarray(load_image(image).permute(1, 2, 0).cpu().numpy())

    def __call__(self, image) -> Proposals:
        import torch
        from segment_anything import SamAutomaticMaskGenerator

        with torch.inference_mode():
            masks = SamAutomaticMaskGenerator(self.model, **self.generator).generate(self._pixels(image))
        boxes = [_mask_box(m["segmentation"]) for m in masks]
        keep = [i for i, b in enumerate(boxes) if b is not None]
        scores = np.clip(np.asarray([masks[i]["predicted_iou"] for i in keep], dtype=np.float64), 0.0, 1.0)
        return Proposals(np.asarray([boxes[i] for i in keep], dtype=np.float64).reshape(-1, 4), scores)

    def at_point(self, image, x: float, y: float) -> Proposals:
        """The region SAM segments for a foreground click at (x, y): one box (empty when the mask is empty)."""
        return self.at_points(image, [(x, y)])[0]

    def at_points(self, image, points) -> list[Proposals]:
        """:meth:`at_point` for several clicks on one image (the image encoded once)."""
        import torch
        from segment_anything import SamPredictor

        predictor = SamPredictor(self.model)
        out = []
        with torch.inference_mode():
            predictor.set_image(self._pixels(image))
            for x, y in points:
                masks, scores, _ = predictor.predict(point_coords=np.asarray([[x, y]], dtype=np.float32),
                                                     point_labels=np.asarray([1]), multimask_output=True)
                boxes = [(i, _mask_box(masks[i])) for i in np.argsort(-scores, kind="stable")]
                hit = next(((i, b) for i, b in boxes if b is not None), None)
                out.append(Proposals(np.zeros((0, 4)), np.zeros(0)) if hit is None else
                           Proposals(np.asarray([hit[1]], dtype=np.float64), np.clip(scores[hit[0]:hit[0] + 1], 0, 1)))
        return out


def _mask_box(mask: np.ndarray):
    """The tight pixel box ``[x1, y1, x2, y2]`` (exclusive ends) of a boolean mask; None when it is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
