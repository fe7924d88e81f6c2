"""Which caption parts can an MLP read from a model's region representation R (the Q-Former output)?

R of every region (the model's own view policy) for TRAIN_IMAGES train and TEST_IMAGES test scenes; a
one-hidden-layer MLP per part (pattern, shape, size, position). Prints JSON lines: [test accuracy %, majority %].

Usage: ``python projects/builtin/probes/probe_region.py SCENES.jsonl MODEL TRAIN_IMAGES TEST_IMAGES``
(README: ``runs/builtin4/scenes/scenes.jsonl builtin 1000 200``, ~4 min on 2 cores).
"""
import argparse  # noqa: E402
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dynrefer.images import load_image
from dynrefer.inference.predictor import Predictor
from dynrefer.records import read_jsonl
from dynrefer.regions import parse_region

_parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
_parser.add_argument("scenes", help="SCENES.jsonl of dynrefer synth")
_parser.add_argument("model", help="model folder or 'builtin'")
_parser.add_argument("train_images", type=int, help="train scenes to fit the probes on")
_parser.add_argument("test_images", type=int, help="test scenes to score them on")
_args = _parser.parse_args()
data, model = _args.scenes, _args.model
ntr, nte = _args.train_images, _args.test_images
recs = read_jsonl(data); root = Path(data).parent
train = [r for r in recs if r.get("split") == "train"][:ntr]
test = [r for r in recs if r.get("split") == "test"][:nte]
p = Predictor(model); m = p.model; eng = p.engine

@torch.inference_mode()
def feats(records):
    out, parts = [], []
    for rec in records:
        image = load_image(root / rec["image"]); wh = (int(image.shape[2]), int(image.shape[1]))
        regs = [parse_region(s, wh, index=j) for j, s in enumerate(rec["regions"])]
        plan = eng.plan([image], [[r.box for r in regs]])
        b = eng.batch([image], plan)
        out.append(m.encode_regions(b["pixels"], b["boxes_in_view"], b["view_index"]))
        parts += [s["parts"] for s in rec["regions"]]
    return torch.cat(out), parts

t0 = time.time(); xtr, ptr = feats(train); xte, pte = feats(test); print("features", round(time.time()-t0), xtr.shape, flush=True)
res = {}
for name in ("pattern", "shape", "size", "position"):
    names = sorted({q[name] for q in ptr + pte})
    ytr = torch.tensor([names.index(q[name]) for q in ptr]); yte = torch.tensor([names.index(q[name]) for q in pte])
    a, b = xtr.flatten(1), xte.flatten(1)
    mu, sd = a.mean(0), a.std(0) + 1e-6; a, b = (a - mu) / sd, (b - mu) / sd
    torch.manual_seed(0)
    net = nn.Sequential(nn.Dropout(0.2), nn.Linear(a.shape[1], 256), nn.ReLU(), nn.Linear(256, len(names)))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    for ep in range(30):
        net.train(); perm = torch.randperm(len(ytr))
        for i in range(0, len(ytr), 128):
            idx = perm[i:i+128]; opt.zero_grad(); F.cross_entropy(net(a[idx]), ytr[idx]).backward(); opt.step()
    net.eval()
    with torch.no_grad(): acc = float((net(b).argmax(1) == yte).float().mean() * 100)
    res[name] = [round(acc, 1), round(float((yte == torch.bincount(ytr).argmax()).float().mean() * 100), 1)]
    print(json.dumps(res), flush=True)
