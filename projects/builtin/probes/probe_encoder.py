"""Linear probes of a frozen encoder on generated scenes: what do its features make readable?

For every region of ``--train-images`` train scenes and ``--test-images`` test scenes, the encoder
sees the region's close view (t = 0) and the whole image (t = 1); a multinomial logistic
regression per caption part is fitted on the train regions and scored on the test regions:

* detail parts (shape, colour, pattern) from the t = 0 view's CLS token + 2×2-pooled patch map;
* context parts (size word, position) from the t = 1 view's RoI-aligned patch tokens (2×2-pooled),
  the features DynRefer's heads get for the whole-image view.

Usage: ``python projects/builtin/probes/probe_encoder.py --data runs/builtin/scenes/scenes.jsonl
[--clip runs/builtin/clip.safetensors | --model builtin] [--random]``; prints one JSON line with
the accuracy (%) of each part and the majority-class baseline.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

DETAIL = ("shape", "color", "pattern")
CONTEXT = ("size", "position")


def load_encoder(args):
    from dynrefer.model.config import BUILTIN_CLIP, EncoderConfig
    from dynrefer.model.encoder import FrozenCLIP

    if args.model:
        from dynrefer.model.dynrefer import DynRefer

        return DynRefer.from_pretrained(args.model).encoder.float().eval()
    return FrozenCLIP(EncoderConfig(model=BUILTIN_CLIP, weights=None if args.random else args.clip)).eval()


@torch.no_grad()
def features(encoder, records, root: Path, size: int):
    from dynrefer.images import load_image
    from dynrefer.model.roi import ViewRoIAlign
    from dynrefer.regions import parse_region
    from dynrefer.views import render_crops, view_geometry

    roi = ViewRoIAlign(size // encoder.patch_size, encoder.patch_size)
    detail, context, parts = [], [], []
    for rec in records:
        image = load_image(root / rec["image"])
        wh = (int(image.shape[2]), int(image.shape[1]))
        views, boxes = [], []
        for j, spec in enumerate(rec["regions"]):
            region = parse_region(spec, wh, index=j)
            geom = view_geometry(region.box, wh, [0.0, 1.0], size)
            views.append(render_crops(image, geom.crops, size))
            boxes.append(torch.as_tensor(geom.box_in_view, dtype=torch.float32))
            parts.append(spec["parts"])
        pixels, boxes = torch.cat(views), torch.cat(boxes)
        cls, patches = encoder(pixels)
        close = torch.cat([cls[0::2], F.adaptive_avg_pool2d(patches[0::2], 2).flatten(1)], 1)
        tokens = roi(cls[1::2], patches[1::2], boxes[1::2])[:, 1:]  # (R, h*w, C)
        g = int(tokens.shape[1] ** 0.5)
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, g, g)
        detail.append(close)
        context.append(F.adaptive_avg_pool2d(grid, 2).flatten(1))
    return torch.cat(detail), torch.cat(context), parts


def probe(x_train, y_train, x_test, y_test, steps: int = 300) -> float:
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    k = int(max(y_train.max(), y_test.max())) + 1
    lin = torch.nn.Linear(x_train.shape[1], k)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(lin(x_train), y_train).backward()
        opt.step()
    with torch.no_grad():
        return float((lin(x_test).argmax(1) == y_test).float().mean() * 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--clip", help="stage-1 CLIP safetensors (the built-in encoder config)")
    parser.add_argument("--model", help="a model folder or 'builtin': probe its frozen encoder")
    parser.add_argument("--random", action="store_true", help="a randomly initialised encoder (baseline)")
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--test-images", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    if not (args.clip or args.model or args.random):
        parser.error("give --clip, --model or --random")
    from dynrefer.records import read_jsonl

    torch.manual_seed(0)
    records = read_jsonl(args.data)
    root = Path(args.data).parent
    train = [r for r in records if r.get("split") == "train"][: args.train_images]
    test = [r for r in records if r.get("split") == "test"][: args.test_images]
    encoder = load_encoder(args)
    dtr, ctr, ptr = features(encoder, train, root, args.size)
    dte, cte, pte = features(encoder, test, root, args.size)
    out = {"encoder": args.model or ("random" if args.random else args.clip), "train_regions": len(ptr),
           "test_regions": len(pte)}
    for name in DETAIL + CONTEXT:
        names = sorted({p[name] for p in ptr + pte})
        y_train = torch.tensor([names.index(p[name]) for p in ptr])
        y_test = torch.tensor([names.index(p[name]) for p in pte])
        xs = (dtr, dte) if name in DETAIL else (ctr, cte)
        out[name] = round(probe(xs[0], y_train, xs[1], y_test), 1)
        out[f"{name}_majority"] = round(float((y_test == torch.bincount(y_train).argmax()).float().mean() * 100), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
