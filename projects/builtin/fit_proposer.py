"""Fit the default proposer's logistic model (``dynrefer.proposals.segments``: MEAN, STD, WEIGHTS, BIAS) on
generated scenes of seed 7, which is neither a training nor a test seed, and print the constants and the
detection mAP (IoU 0.3-0.7, captions ignored) before and after, on those scenes and on seed 11 (the test seed of
``eval/scenes_densecap.py``).

A candidate is a positive when it overlaps an object at IoU >= 0.7. The fit is L2-regularised (1e-3) logistic
regression on the standardised cues, with L-BFGS.

Usage: ``python projects/builtin/fit_proposer.py [--scenes 60]``
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from dynrefer_builtin.synthetic import generate_scene
from skimage.segmentation import felzenszwalb
from torchvision.ops import batched_nms, box_iou

from dynrefer.metrics.densecap import evaluate_densecap
from dynrefer.proposals import segments


def scenes(seed: int, count: int) -> list:
    out = []
    for index in range(count):
        image, truth = generate_scene(seed, index)
        boxes, features = segments.candidate_features(np.asarray(image.convert("RGB")), felzenszwalb)
        gt = torch.tensor([r["box"] for r in truth["regions"]], dtype=torch.float32)
        iou = box_iou(torch.as_tensor(boxes, dtype=torch.float32), gt).max(1).values.numpy()
        out.append((boxes, features, iou, truth))
    return out


def detection_map(data, score) -> float:
    preds, gts = [], []
    for n, (boxes, features, _, truth) in enumerate(data):
        s = torch.as_tensor(score(features), dtype=torch.float64)
        keep = batched_nms(torch.as_tensor(boxes), s, torch.zeros(len(s), dtype=torch.int64), 0.5)[:100].numpy()
        preds.append({"image": str(n), "regions": [{"box": boxes[i].tolist(), "caption": "-", "score": float(s[i])}
                                                   for i in keep]})
        gts.append({"image": str(n), "regions": [{"box": r["box"], "captions": ["-"]} for r in truth["regions"]]})
    return round(evaluate_densecap(preds, gts, meteor=lambda pairs: [1.0] * len(pairs))["det_map"], 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=60)
    args = p.parse_args()
    train, test = scenes(7, args.scenes), scenes(11, 50)
    x = torch.tensor(np.concatenate([d[1] for d in train]), dtype=torch.float64)
    y = torch.tensor(np.concatenate([d[2] for d in train]) >= 0.7, dtype=torch.float64)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xn = (x - mean) / std
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xn @ w + b, y) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    fitted = {"MEAN": [round(v, 4) for v in mean.tolist()], "STD": [round(v, 4) for v in std.tolist()],
              "WEIGHTS": [round(v, 4) for v in w.detach().tolist()], "BIAS": round(float(b), 4)}
    print(json.dumps(fitted))

    def fitted_score(features):
        z = ((features - np.array(fitted["MEAN"])) / np.array(fitted["STD"])) @ np.array(fitted["WEIGHTS"])
        return z + fitted["BIAS"]

    product = len(segments.FEATURES) - 1  # the product of stability, contrast and scales (the first proposer)
    for name, data in (("seed 7 (fit)", train), ("seed 11 (test)", test)):
        print(json.dumps({"scenes": name, "det_map_product": detection_map(data, lambda f: f[:, product]),
                          "det_map_fitted": detection_map(data, fitted_score)}))


if __name__ == "__main__":
    main()
