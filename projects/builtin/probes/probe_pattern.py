"""Is the pattern legible in the 64-px t = 0 views, and does the frozen stage-1 CLIP carry it?

Small CNN probes trained here on (a) the CLIP's 8x8x128 patch map of each region's t = 0 view (pattern,
shape), (b) the raw view pixels (pattern). Prints JSON lines: [test accuracy %, majority %].

Usage: ``python projects/builtin/probes/probe_pattern.py SCENES.jsonl CLIP.safetensors TRAIN_IMAGES TEST_IMAGES``
(README: ``runs/builtin4/scenes/scenes.jsonl runs/builtin/clip.safetensors 1000 200``, ~4 min on 2 cores).
"""
import argparse  # noqa: E402
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dynrefer.images import load_image
from dynrefer.model.config import BUILTIN_CLIP, EncoderConfig
from dynrefer.model.encoder import FrozenCLIP
from dynrefer.records import read_jsonl
from dynrefer.regions import parse_region
from dynrefer.views import render_crops, view_geometry

_parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
_parser.add_argument("scenes", help="SCENES.jsonl of dynrefer synth")
_parser.add_argument("clip", help="stage-1 CLIP weights (.safetensors)")
_parser.add_argument("train_images", type=int, help="train scenes to fit the probes on")
_parser.add_argument("test_images", type=int, help="test scenes to score them on")
_args = _parser.parse_args()
data, clip = _args.scenes, _args.clip
ntr, nte = _args.train_images, _args.test_images
torch.manual_seed(0)
recs = read_jsonl(data); root = Path(data).parent
train = [r for r in recs if r.get("split") == "train"][:ntr]
test = [r for r in recs if r.get("split") == "test"][:nte]
enc = FrozenCLIP(EncoderConfig(model=BUILTIN_CLIP, weights=clip)).eval()

@torch.inference_mode()
def feats(records):
    px, maps, parts = [], [], []
    for rec in records:
        image = load_image(root / rec["image"]); wh = (int(image.shape[2]), int(image.shape[1]))
        views = []
        for j, spec in enumerate(rec["regions"]):
            g = view_geometry(parse_region(spec, wh, index=j).box, wh, [0.0], 64)
            views.append(render_crops(image, g.crops, 64)); parts.append(spec["parts"])
        v = torch.cat(views); px.append(v); maps.append(enc(v)[1])
    return torch.cat(px), torch.cat(maps), parts

t0 = time.time()
ptr, mtr, parts_tr = feats(train); pte, mte, parts_te = feats(test)
print("features", round(time.time() - t0, 1), "s", ptr.shape, mtr.shape, flush=True)

def cnn(cin, pix):
    if pix:  # 64 px -> 32 (stride 2, 5x5 keeps the 3-5 px period) -> 16 -> 8
        layers = [nn.Conv2d(cin, 32, 5, padding=2, stride=2), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.ReLU(),
                  nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.ReLU()]
    else:
        layers = [nn.Conv2d(cin, 64, 3, padding=1), nn.ReLU()]
    layers += [nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)

def run(xtr, xte, name, pix, epochs=25):
    names = sorted({p[name] for p in parts_tr + parts_te})
    ytr = torch.tensor([names.index(p[name]) for p in parts_tr]); yte = torch.tensor([names.index(p[name]) for p in parts_te])
    mean, std = xtr.mean((0, 2, 3), keepdim=True), xtr.std((0, 2, 3), keepdim=True) + 1e-6
    xtr_n, xte_n = (xtr - mean) / std, (xte - mean) / std
    torch.manual_seed(0)
    net = nn.Sequential(cnn(xtr.shape[1], pix), nn.Linear(64, len(names)))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-3)
    for ep in range(epochs):
        perm = torch.randperm(len(ytr))
        for i in range(0, len(ytr), 128):
            idx = perm[i:i + 128]
            opt.zero_grad(); F.cross_entropy(net(xtr_n[idx]), ytr[idx]).backward(); opt.step()
    with torch.no_grad():
        acc = float((net(xte_n).argmax(1) == yte).float().mean() * 100)
    maj = float((yte == torch.bincount(ytr).argmax()).float().mean() * 100)
    return round(acc, 1), round(maj, 1)

out = {"train_regions": len(parts_tr), "test_regions": len(parts_te)}
for name in ("pattern", "shape"):
    out[f"{name}_clip_map"] = run(mtr, mte, name, False)
    print(json.dumps(out), flush=True)
for name in ("pattern",):
    out[f"{name}_pixels"] = run(ptr.float(), pte.float(), name, True, epochs=12)
    print(json.dumps(out), flush=True)
