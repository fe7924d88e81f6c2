"""Benchmark: the own T5 beam search (:mod:`dynrefer.model.heads.beam`) against transformers' ``generate``.

For each language model size, one caption call over ``--regions`` regions (random weights, the official beam
settings of the model's config) runs with ``search="auto"`` (the own beam search) and ``search="generate"``,
interleaved, ``--repeats`` times; the captions and scores must be the same. Sizes: ``builtin`` (the built-in
model's 2-layer T5), ``mid`` (a T5-base-sized LM) and ``large`` (Flan-T5-large's shape: d_model 1024, 24 + 24
layers, gated-GELU d_ff 2816; ~780 M parameters). Prints one JSON row per size:
``{"lm", "lm_params_m", "regions", "auto_s", "generate_s", "speedup", "same_captions"}``.

Usage: ``python scripts/bench_beam.py [--sizes builtin,mid,large] [--regions 4] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json

from timing import interleaved

LARGE = {"d_model": 1024, "d_kv": 64, "d_ff": 2816, "num_layers": 24, "num_decoder_layers": 24, "num_heads": 16,
         "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}


def lm_model(size: str):
    import torch

    import dynrefer
    from dynrefer.model.config import DynReferConfig

    torch.manual_seed(0)
    cfg = DynReferConfig.from_name("builtin" if size == "builtin" else "mid")
    if size == "large":
        cfg.language.model_config = {**cfg.language.model_config, **LARGE}
    return dynrefer.DynRefer(cfg, tags=["red", "circle"]).eval()


def measure(size: str, regions: int, repeats: int) -> dict:
    import torch

    model = lm_model(size)
    head = model.language_head
    g = torch.Generator().manual_seed(1)
    region = torch.randn(regions, model.config.qformer.num_query_tokens, model.config.qformer.hidden_size, generator=g)
    controls = ["red,circle|"] * regions
    with torch.inference_mode():
        runs = interleaved({search: lambda search=search: head.generate(region, controls, search=search)
                            for search in ("auto", "generate")}, repeats)
    med = {k: seconds for k, (seconds, _) in runs.items()}
    outs = {k: result for k, (_, result) in runs.items()}
    same = outs["auto"][0] == outs["generate"][0] and all(
        abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(outs["auto"][1], outs["generate"][1]))
    return {"lm": size, "lm_params_m": round(sum(p.numel() for p in head.lm.parameters()) / 1e6, 1),
            "regions": regions, "auto_s": round(med["auto"], 3), "generate_s": round(med["generate"], 3),
            "speedup": round(med["generate"] / med["auto"], 2), "same_captions": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="builtin,mid,large")
    p.add_argument("--regions", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    for size in args.sizes.split(","):
        print(json.dumps(measure(size, args.regions, args.repeats)), flush=True)


if __name__ == "__main__":
    from dynrefer.errors import run_script

    run_script(main, "bench_beam.py")
