"""The default proposal source: class-agnostic boxes from graph-based segmentation, no weights to download.

Felzenszwalb-Huttenlocher segmentation (scikit-image) at three scales; each segment's box and the union box of
every pair of adjacent segments (so an object split into parts, such as a striped or checkered one, is covered
whole) are candidates. A candidate's objectness is a logistic model (12 constants a cue, below) over cues of
objects:

* **stability**: the share of all candidates that overlap it at IoU >= 0.7 (an object's box comes back at several
  scales and from several merges; clutter does not);
* **colour contrast**: the chi-square distance between the colour histograms (4 levels a channel) of the box and
  of the ring around it (the box grown by a quarter, a half, its whole size each way; Alexe et al.'s objectness
  cue): an object differs from what surrounds it, a part of an object or a patch of background much less;
* **scales**: at which of the three segmentations a segment or pair has the same box (IoU >= 0.9): a whole object
  survives coarser segmentation, its parts merge;
* **parts and wholes**: the best product score (stability x contrast x scales) of a larger box that holds it (90 %
  of it inside, the other 1.5x its area), and of a smaller box it holds; its area share and its aspect.

Images are segmented at most 320 pixels on their longer side (boxes scaled back). The model was fitted on
generated scenes of seed 7, not a training or test seed (``projects/builtin/fit_proposer.py``): on 50 scenes of
seed 11 the detection mAP (IoU 0.3-0.7) is 74.2, against 53.5 for the product of the first three cues alone and
~36 for stability alone; measured in docs/proposals.md.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .base import Proposals

SCALES = (50, 150, 400)
MAX_SIDE = 320
RING_MARGIN = 0.5
COLOUR_LEVELS = 4
CHUNK = 512


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
        from ..images import load_image

        pixels = load_image(image).permute(1, 2, 0).cpu().numpy()
        h, w = pixels.shape[:2]
        factor = min(1.0, MAX_SIDE / max(h, w))
        if factor < 1.0:
            from PIL import Image

            small = Image.fromarray(pixels).resize((max(1, round(w * factor)), max(1, round(h * factor))),
                                                   Image.Resampling.BILINEAR)
            pixels = np.asarray(small)
        boxes, features = candidate_features(pixels, felzenszwalb)
        if len(boxes) == 0:
            return Proposals(np.zeros((0, 4)), np.zeros(0))
        sh, sw = pixels.shape[:2]
        scale = np.array([w / sw, h / sh, w / sw, h / sh])  # per axis: the rounded size of each side
        return Proposals(boxes * scale, objectness(features))


#: the cues of :func:`candidate_features`, in column order
FEATURES = ("log stability", "log contrast 0.5", "log contrast 0.25", "log contrast 1", "finest scale",
            "middle scale", "coarsest scale", "inside a better box", "holds a better box", "log area share",
            "abs log aspect", "log product score")
#: the logistic model over the standardised cues: fitted on 60 generated scenes of seed 7 (a candidate is positive
#: at IoU >= 0.7 with an object), ``python projects/builtin/fit_proposer.py``
MEAN = [-1.8523, -2.1028, -2.3258, -1.8256, 0.771, 0.3185, 0.1364, 0.31, 0.0954, -4.5658, 0.5115, -3.9183]
STD = [0.93, 1.76, 1.8349, 1.6321, 0.4202, 0.4659, 0.3432, 0.3099, 0.2058, 1.4647, 0.5418, 2.0848]
WEIGHTS = [0.8463, 0.5082, 1.6728, 0.2877, -0.2843, -0.0673, 0.1651, -1.3052, -0.0379, -0.6274, -1.478, 1.2655]
BIAS = -5.6357


def candidate_features(pixels: np.ndarray, felzenszwalb) -> tuple[np.ndarray, np.ndarray]:
    """The unique candidate boxes of an image (xyxy in ``pixels``' frame) and their cues (N, len(FEATURES)): see
    the module docstring."""
    from torchvision.ops import box_iou

    per_scale = [_segment_boxes(felzenszwalb(pixels, scale=k, sigma=0.8, min_size=20)) for k in SCALES]
    scale = np.concatenate([np.full(len(b), i) for i, b in enumerate(per_scale)])
    every = np.concatenate(per_scale)
    sh, sw = pixels.shape[:2]
    area = (every[:, 2] - every[:, 0]) * (every[:, 3] - every[:, 1])
    fits = (area >= 16) & (area <= 0.9 * sh * sw)
    every, scale = every[fits], scale[fits]
    boxes = np.unique(every, axis=0)
    if len(boxes) == 0:
        return boxes.reshape(0, 4), np.zeros((0, len(FEATURES)))
    b = torch.as_tensor(boxes, dtype=torch.float32)
    e = torch.as_tensor(every, dtype=torch.float32)
    rows = range(0, len(b), CHUNK)  # row blocks: the pairwise matrices stay CHUNK x N (N reaches thousands)
    stable = torch.cat([(box_iou(b[r:r + CHUNK], b) >= 0.7).sum(1) for r in rows]).double()
    stable = stable / stable.max()
    columns = [torch.as_tensor(scale == s) for s in range(len(SCALES))]
    levels = [torch.zeros(len(b), dtype=torch.float64) for _ in SCALES]  # the same box at each scale (IoU >= 0.9)
    for r in rows:
        near = box_iou(b[r:r + CHUNK], e) >= 0.9
        for s, cols in enumerate(columns):
            levels[s][r:r + CHUNK] = near[:, cols].any(1).double()
    contrast = colour_contrast(pixels, boxes, margins=(0.5, 0.25, 1.0))
    base = stable * torch.as_tensor(contrast[0]) * (1 + levels[1] + levels[2])
    top = float(base.max()) or 1.0
    a = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    host, guest = torch.zeros(len(b), dtype=torch.float64), torch.zeros(len(b), dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float32)
    for r in rows:
        part, pa = b[r:r + CHUNK], a[r:r + CHUNK]
        lt, rb = torch.max(part[:, None, :2], b[None, :, :2]), torch.min(part[:, None, 2:], b[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(2)  # (chunk, N)
        inside = (inter >= 0.9 * pa[:, None]) & (a[None, :] >= 1.5 * pa[:, None])  # row i lies in a larger j
        holds = (inter >= 0.9 * a[None, :]) & (pa[:, None] >= 1.5 * a[None, :])  # row i holds a smaller j
        host[r:r + CHUNK] = torch.where(inside, base[None, :].float(), zero).max(1).values.double() / top
        guest[r:r + CHUNK] = torch.where(holds, base[None, :].float(), zero).max(1).values.double() / top
    w, h = (b[:, 2] - b[:, 0]).double(), (b[:, 3] - b[:, 1]).double()
    eps = 1e-4
    features = np.stack([np.log(stable.numpy() + eps), *(np.log(c + eps) for c in contrast),
                         *(lv.numpy() for lv in levels), host.numpy(), guest.numpy(),
                         np.log(a.double().numpy() / (sh * sw)), np.abs(np.log((w / h).numpy())),
                         np.log(base.numpy() / top + eps)], 1)
    return boxes, features


def objectness(features: np.ndarray) -> np.ndarray:
    """The logistic model's probability that each candidate is an object (see :data:`WEIGHTS`)."""
    z = ((features - np.asarray(MEAN)) / np.asarray(STD)) @ np.asarray(WEIGHTS) + BIAS
    return 1.0 / (1.0 + np.exp(-z))


def colour_contrast(pixels: np.ndarray, boxes: np.ndarray, margins=(RING_MARGIN,),
                    levels: int = COLOUR_LEVELS) -> list[np.ndarray]:
    """For each ring margin, the chi-square distance between the colour histogram (``levels`` a channel) inside
    each box and in the ring around it (the box grown by ``margin`` x its size each way, clipped to the image,
    less the box); 0 where the ring is empty. Integral histograms: one pass over the image, four lookups a box."""
    h, w = pixels.shape[:2]
    q = (pixels.astype(np.int64) * levels) // 256
    code = (q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]
    bins = levels**3
    table = np.zeros((bins, h + 1, w + 1), np.int32)
    np.add.at(table, (code, *np.indices((h, w)) + 1), 1)
    table = table.cumsum(1, dtype=np.int32).cumsum(2, dtype=np.int32)

    def histogram(bx: np.ndarray) -> np.ndarray:  # outward to whole pixels: a margin is the same on both sides
        x1, x2 = np.clip(np.floor(bx[:, 0]), 0, w).astype(np.int64), np.clip(np.ceil(bx[:, 2]), 0, w).astype(np.int64)
        y1, y2 = np.clip(np.floor(bx[:, 1]), 0, h).astype(np.int64), np.clip(np.ceil(bx[:, 3]), 0, h).astype(np.int64)
        return (table[:, y2, x2] - table[:, y1, x2] - table[:, y2, x1] + table[:, y1, x1]).astype(np.float64)

    inner = histogram(boxes)
    p = inner / np.maximum(inner.sum(0), 1)
    out = []
    for margin in margins:
        grow = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, 1) * np.array([-margin, -margin, margin, margin])
        ring = histogram(boxes + grow) - inner
        r = ring / np.maximum(ring.sum(0), 1)
        chi = 0.5 * ((p - r) ** 2 / np.maximum(p + r, 1e-12)).sum(0)
        out.append(np.where(ring.sum(0) > 0, chi, 0.0))
    return out
