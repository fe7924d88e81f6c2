"""Zero-shot pattern / colour / category accuracy of a stage-1 CLIP on the test regions' close views.

For every test region with a colour and a pattern, its view at ``t`` (0, 0.1, 0.2 by default) is embedded
by the CLIP's image tower and compared with the region's detail description (``"the red striped circle"``,
:func:`dynrefer.train.clip_pretrain.detail_description`) with one part swapped for every value of its kind
(4 patterns, the colours, the categories); the argmax is the prediction. No training: this reads what
stage 1 itself learned, before stage 2 sees it. Prints one JSON line per ``t``: accuracies in percent, and
pattern accuracy per size class.

Usage: ``python projects/builtin/probes/probe_zeroshot.py SCENES.jsonl CLIP.safetensors|builtin [--images 40] [--ts 0,0.1,0.2]``
(``builtin``: the frozen CLIP inside the shipped model). README, "The built-in model": 40 images, ~1 min.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch


def load_clip(source: str):
    from dynrefer.model.config import BUILTIN_CLIP
    from dynrefer.model.encoder import build_open_clip, load_local_weights

    if source == "builtin":
        from dynrefer.inference.predictor import Predictor

        return Predictor("builtin").model.encoder.clip.float().eval()
    clip = build_open_clip(BUILTIN_CLIP)
    load_local_weights(clip, source)
    return clip.eval()


def main() -> None:
    import open_clip

    from dynrefer.images import load_image
    from dynrefer.records import read_jsonl
    from dynrefer.regions import parse_region
    from dynrefer.train.clip_pretrain import detail_description
    from dynrefer.views import render_crops, view_geometry

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("clip")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--ts", default="0,0.1,0.2")
    args = parser.parse_args()
    clip = load_clip(args.clip)
    root = Path(args.data).parent
    records = [r for r in read_jsonl(args.data) if r.get("split") == "test"][: args.images]
    vocab = json.loads((root / "vocab.json").read_text())
    values = {kind: [a.split(":", 1)[1] for a in vocab["attributes"] if a.startswith(kind + ":")]
              for kind in ("pattern", "color")}
    values["category"] = list(vocab["categories"])

    @functools.cache  # the same variant lists recur across regions and views
    @torch.no_grad()
    def texts_embedding(texts: tuple[str, ...]):
        return clip.encode_text(open_clip.tokenize(list(texts), context_length=40), normalize=True)

    def variants(spec: dict, kind: str) -> list[str]:
        if kind == "category":
            return [detail_description({**spec, "category": v}) for v in values[kind]]
        other = [a for a in spec["attributes"] if not a.startswith(kind + ":")]
        at = [a.split(":", 1)[0] for a in spec["attributes"]].index(kind)
        return [detail_description({**spec, "attributes": other[:at] + [f"{kind}:{v}"] + other[at:]}) for v in values[kind]]

    for t in [float(x) for x in args.ts.split(",")]:
        hits, count, by_size = {k: 0 for k in values}, 0, {}
        for record in records:
            image = load_image(root / record["image"])
            wh = (int(image.shape[2]), int(image.shape[1]))
            for j, spec in enumerate(record["regions"]):
                parts = dict(a.split(":", 1) for a in spec.get("attributes", []))
                if "pattern" not in parts or "color" not in parts or not spec.get("category"):
                    continue
                crops = view_geometry(parse_region(spec, wh, index=j).box, wh, [t], 64).crops
                with torch.no_grad():
                    emb = clip.encode_image(render_crops(image, crops, 64), normalize=True)[0]
                truth = {"pattern": parts["pattern"], "color": parts["color"], "category": spec["category"]}
                for kind in values:
                    ok = values[kind][int((texts_embedding(tuple(variants(spec, kind))) @ emb).argmax())] == truth[kind]
                    hits[kind] += ok
                    if kind == "pattern":
                        by_size.setdefault(parts.get("size", "?"), []).append(ok)
                count += 1
        row = {"t": t, "regions": count, **{k: round(100 * v / max(count, 1), 1) for k, v in hits.items()},
               **{f"pattern_{s}": round(100 * sum(v) / len(v), 1) for s, v in sorted(by_size.items())}}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
