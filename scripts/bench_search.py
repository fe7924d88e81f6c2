"""Benchmark: region search at scale (``dynrefer index`` / ``dynrefer search``).

Prints JSON rows: ``{"build_regions_per_s", ...}`` for indexing the objects of ``--scenes`` generated scenes with
the built-in model (the engine pass dominates), then, for 1k / 10k / 100k regions (synthetic tokens and
embeddings above what this CPU embeds in minutes: the query cost depends on the count, not the content), each
vector index kind: ``text_query_ms`` (one text query: the contrastive head over every stored region, median of
``--repeats``), ``example_query_ms`` (one by-example query, k = 20), ``index_mb`` (the folder's size).

Usage: ``python scripts/bench_search.py [--sizes 1000,10000,100000] [--scenes 20] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def folder_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.iterdir()) / 2**20, 1)


def main() -> None:
    from dynrefer_builtin.synthetic import generate_scene
    from timing import median_seconds

    from dynrefer.inference.predictor import Predictor
    from dynrefer.records import write_jsonl
    from dynrefer.search import RegionIndex, build_index, embedding_dim, search_text, search_vector
    from dynrefer.search.store import model_fingerprint

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--scenes", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    predictor = Predictor("builtin")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        records = []
        for i in range(args.scenes):
            image, truth = generate_scene(13, i)
            image.save(tmp / f"{i}.png")
            records.append({"image": f"{i}.png", "regions": [{"box": r["box"]} for r in truth["regions"]]})
        write_jsonl(tmp / "regions.jsonl", records)
        start = time.perf_counter()
        summary = build_index(tmp / "real", regions_file=tmp / "regions.jsonl", predictor=predictor, progress=False)
        seconds = time.perf_counter() - start
        print(json.dumps({"build_regions_per_s": round(summary["regions"] / seconds, 1), "regions": summary["regions"],
                          "images": args.scenes, "seconds": round(seconds, 2)}), flush=True)
        real = RegionIndex(tmp / "real")
        shape, dim = real.shape, embedding_dim(predictor.model)
        sample_tokens = np.asarray(real.tokens(), np.float32)
        real.close()
        rng = np.random.default_rng(0)
        for size in (int(v) for v in args.sizes.split(",")):
            for kind in ("flat", "hnsw"):
                folder = tmp / f"{kind}{size}"
                index = RegionIndex.create(folder, model="builtin", fingerprint=model_fingerprint(predictor.model),
                                           tokens_shape=shape, dim=dim, kind=kind)
                for lo in range(0, size, 10000):
                    n = min(10000, size - lo)
                    picks = sample_tokens[rng.integers(0, len(sample_tokens), n)]
                    tokens = picks + rng.normal(0, 0.05, picks.shape).astype(np.float32)  # real tokens, jittered
                    vectors = rng.normal(size=(n, dim)).astype(np.float32)
                    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                    index.append([{"image": f"synthetic/{lo + i}.png", "box": [0, 0, 1, 1]} for i in range(n)],
                                 tokens, vectors)
                start = time.perf_counter()
                index.close()  # (writes the FAISS cache)
                close_s = time.perf_counter() - start
                index = RegionIndex(folder)
                query = index.vectors().reconstruct(0)
                text = median_seconds(lambda index=index: search_text(index, predictor.model, "red circle", k=20,
                                                                      threshold=0.0), args.repeats)
                example = median_seconds(lambda index=index, q=query: search_vector(index, q, k=20), args.repeats)
                print(json.dumps({"regions": size, "kind": kind, "text_query_ms": round(1000 * text, 1),
                                  "example_query_ms": round(1000 * example, 2), "index_mb": folder_mb(folder),
                                  "vector_index_build_s": round(close_s, 2)}),
                      flush=True)
                index.close()
                if kind == "flat":
                    (folder / "tokens.f16").unlink()  # disk: the hnsw copy of the same size is next


if __name__ == "__main__":
    from dynrefer.errors import run_script

    run_script(main, "bench_search.py")
