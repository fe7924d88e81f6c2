"""The default proposal source: class-agnostic boxes from graph-based segmentation, no weights needed.

Felzenszwalb-Huttenlocher segmentation (scikit-image) at three scales; each segment's box and the union box of
every pair of adjacent segments (so an object split into parts, such as a striped or checkered one, is covered
whole) are candidates. A candidate's objectness is how stable it is: the share of all candidates that overlap it
at IoU >= 0.7 (an object's box comes back at several scales and from several merges; clutter does not).
Images are segmented at most 320 pixels on their longer side (boxes scaled back).

Tuned on generated scenes of seed 7 (not a training or test seed): scales (50, 150, 400), sigma 0.8, min_size 20,
stability IoU 0.7; measured in docs/proposals.md.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .base import Proposals

SCALES = (50, 150, 400)
MAX_SIDE = 320


def _segment_boxes(seg: np.ndarray) -> np.ndarray:
    """Boxes (xyxy, exclusive ends) of every segment of a label image, and of every adjacent pair's union."""
    n = int(seg.max()) + 1
    ys, xs = np.indices(seg.shape)
    flat = seg.ravel()
    x1, y1 = np.full(n, np.inf), np.full(n, np.inf)
    x2, y2 = np.zeros(n), np.zeros(n)
    np.minimum.at(x1, flat, xs.ravel())
    np.minimum.at(y1, flat, ys.ravel())
    np.maximum.at(x2, flat, xs.ravel() + 1)
    np.maximum.at(y2, flat, ys.ravel() + 1)
    boxes = np.stack([x1, y1, x2, y2], 1)
    pairs = np.concatenate([np.stack([seg[:, :-1].ravel(), seg[:, 1:].ravel()], 1),
                            np.stack([seg[:-1].ravel(), seg[1:].ravel()], 1)])
    pairs = np.unique(np.sort(pairs, 1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    unions = np.concatenate([np.minimum(boxes[pairs[:, 0], :2], boxes[pairs[:, 1], :2]),
                             np.maximum(boxes[pairs[:, 0], 2:], boxes[pairs[:, 1], 2:])], 1)
    return np.concatenate([boxes, unions])


class SegmentProposals:
    """The ``default`` source: ``SegmentProposals()(image)`` with ``image`` a path, PIL image, array or tensor."""

    def __call__(self, image) -> Proposals:
        try:
            from skimage.segmentation import felzenszwalb
        except ImportError:
            raise InputError("the default proposer needs scikit-image: pip install 'dynrefer[proposals]' (or give "
                             "--proposals file:PATH)") from None
        from torchvision.ops import box_iou

        from ..images import load_image

        pixels = load_image(image).permute(1, 2, 0).cpu().numpy()
        h, w = pixels.shape[:2]
        factor = min(1.0, MAX_SIDE / max(h, w))
        if factor < 1.0:
            from PIL import Image

            small = Image.fromarray(pixels).resize((max(1, round(w * factor)), max(1, round(h * factor))),
                                                   Image.Resampling.BILINEAR)
            pixels = np.asarray(small)
        boxes = np.concatenate([_segment_boxes(felzenszwalb(pixels, scale=k, sigma=0.8, min_size=20))
                                for k in SCALES])
        sh, sw = pixels.shape[:2]
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        boxes = np.unique(boxes[(area >= 16) & (area <= 0.9 * sh * sw)], axis=0)
        if len(boxes) == 0:
            return Proposals(np.zeros((0, 4)), np.zeros(0))
        b = torch.as_tensor(boxes, dtype=torch.float64)
        stable = (box_iou(b, b) >= 0.7).sum(1).double() / len(b)
        scores = (stable / stable.max()).numpy()
        return Proposals(boxes / factor, scores)
