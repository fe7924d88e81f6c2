"""Region search on generated scenes (issue #31; docs/search.md): text queries, absent targets, search by example,
few-shot categories.

Protocol: a collection of ``--images`` generated scenes of seed ``--seed`` (default 13; the built-in model was
trained on seed 42, the text threshold chosen on seed 17), every object a region (its ground-truth box), indexed
with ``dynrefer index``. Reported:

* **text queries** by kind (category "circle", colour "red", pattern "striped", "colour shape" pairs that
  occur): ``map`` (average precision of the whole ranking by the query's probability), ``p_at_10`` (the share of
  relevant regions among the hits ``search`` returns, at most 10, above ``--threshold``), ``hits`` (how many it
  returns on average, at most 10), ``p_at_10_ranking`` (the share among the 10 best-scored regions, no threshold);
* **calibration** of the text probabilities, per kind of query: a reliability table (mean probability against the
  share of relevant regions, per probability bin, over every query-region pair) and its expected calibration
  error (``ece``; :func:`dynrefer.metrics.calibration.reliability`);
* **rejection**: the share of queries with no hit, for absent targets ("pattern colour shape" triples that do not
  occur in the collection) and for words the model never learnt ("elephant", ...);
* **by example**: for ``--examples`` regions, the share of their 10 nearest other regions that show the same
  category (``p_at_10``; also for the examples among them that are neither small nor partly hidden), and two
  rankings by the model's own class probabilities, to place it: by the probability of the class the model gives
  the example (``by_example_model_class_p_at_10``) and of the example's *true* class
  (``by_example_true_class_ceiling_p_at_10``: what a ranking by the model's class beliefs reaches even when told
  the right class);
* **few-shot**: K = 1 and 5 labelled regions per category, taken from scenes of seed ``--seed + 1000``, each
  category renamed (``class-0`` ...: names the model's text vocabulary lacks); the accuracy of every region's
  class (none, when below the similarity floor, counts as wrong), against the accuracy of the model's own text
  prompts on the known names (``text_prompt_accuracy``); and the "none of these" rule, with classes for only the
  first ``OPEN_SET_KNOWN`` categories (K = 5): the share of regions of the other categories that get no class
  (``none_on_unknown``) and of those of the known ones (``none_on_known``), the accuracy on the known ones, and
  the open-set accuracy (a region of another category is right when it gets no class), at several floors.

    python eval/scenes_search.py --out-dir runs/eval_scenes_search [--images 300] [--seed 13] [--model builtin]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def write_collection(folder: Path, seed: int, images: int) -> list[dict]:
    from dynrefer_builtin.synthetic import generate_scene

    from dynrefer.records import write_jsonl

    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(images):
        image, truth = generate_scene(seed, i)
        image.save(folder / "images" / f"{i:04d}.png")
        records.append({"image": f"images/{i:04d}.png", "regions": [
            {"box": r["box"], "category": r["category"], "color": r["parts"]["color"],
             "pattern": r["parts"]["pattern"], "size": r["parts"]["size"], "visible": r["visible"]}
            for r in truth["regions"]]})
    write_jsonl(folder / "regions.jsonl", records)
    return records


#: The few-shot "none of these" measure defines classes for this many categories (in sorted order); regions of the
#: others should get none.
OPEN_SET_KNOWN = 8
#: The similarity floors the "none of these" measure is reported at (the classifier's default:
#: ``dynrefer.search.query.MIN_SIMILARITY``).
OPEN_SET_FLOORS = (0.5, 0.7, 0.8, 0.9)


def few_shot_examples(pool: list[dict], k: int, renamed: dict) -> list[dict]:
    """The first ``k`` regions of every category in ``renamed`` from ``pool`` (records of
    :func:`write_collection`), as SPEC §5 example records whose regions carry the new class name."""
    chosen, seen = [], {}
    for rec in pool:
        keep = []
        for r in rec["regions"]:
            if r["category"] in renamed and seen.get(r["category"], 0) < k:
                seen[r["category"]] = seen.get(r["category"], 0) + 1
                keep.append({"box": r["box"], "category": renamed[r["category"]]})
        if keep:
            chosen.append({"image": rec["image"], "regions": keep})
    return chosen


def p_at_10(scores: np.ndarray, chosen: np.ndarray, labels: np.ndarray) -> float:
    """The share of the 10 best-scored other regions (``scores``: one row per example ``chosen``) that show the
    example's label."""
    scores = np.array(scores, dtype=np.float64)
    scores[np.arange(len(chosen)), chosen] = -np.inf  # not the example itself
    nearest = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    return round(float(np.mean(labels[nearest] == labels[chosen][:, None])), 3)


def text_queries(truth: list[dict], vocabulary: dict, rng) -> dict:
    cats = vocabulary["categories"]
    colours = sorted({a.split(":")[1] for a in vocabulary["attributes"] if a.startswith("color:")})
    patterns = sorted({a.split(":")[1] for a in vocabulary["attributes"] if a.startswith("pattern:")})
    pairs = sorted({(r["color"], r["category"]) for r in truth})
    triples = {(r["pattern"], r["color"], r["category"]) for r in truth}
    absent = [(p, c, s) for p in patterns for c in colours for s in cats if (p, c, s) not in triples]
    pick = rng.choice(len(pairs), min(30, len(pairs)), replace=False)
    gone = rng.choice(len(absent), min(30, len(absent)), replace=False) if absent else []
    return {
        "category": [(c, lambda r, c=c: r["category"] == c) for c in cats],
        "colour": [(c, lambda r, c=c: r["color"] == c) for c in colours],
        "pattern": [(p, lambda r, p=p: r["pattern"] == p) for p in patterns],
        "colour shape": [(f"{pairs[i][0]} {pairs[i][1]}",
                          lambda r, p=pairs[i]: (r["color"], r["category"]) == p) for i in pick],
        "absent": [(" ".join(absent[i]), None) for i in gone],
        "unknown words": [(w, None) for w in ("elephant", "car", "tree", "zebra", "guitar", "bicycle", "person",
                                              "dog")],
    }


def run(out_dir, *, model="builtin", images: int = 300, seed: int = 13, threshold: float = 0.7,
        examples: int = 300, progress: bool = False) -> dict:
    import torch
    from dynrefer_builtin.synthetic import vocabulary

    from dynrefer.inference.predictor import Predictor
    from dynrefer.metrics.calibration import reliability
    from dynrefer.metrics.ovad import binary_average_precision
    from dynrefer.model.vocab import category_prompts
    from dynrefer.search import (
        FewShotClassifier,
        RegionIndex,
        build_index,
        embed_examples,
        query_scores,
        search_text,
    )

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    records = write_collection(out / "collection", seed, images)
    truth = [r for rec in records for r in rec["regions"]]
    predictor = Predictor(model)
    index_dir = out / "index"
    if index_dir.exists():
        import shutil

        shutil.rmtree(index_dir)  # the collection was just written: an old index may be of other scenes
    build = build_index(index_dir, regions_file=out / "collection" / "regions.jsonl", model=model,
                        predictor=predictor, progress=progress)
    index = RegionIndex(index_dir)
    report = {"settings": {"model": str(model), "images": images, "seed": seed, "regions": index.count,
                           "threshold": threshold}, "index": build}
    tokens = index.tokens()
    report["calibration"] = {}
    for kind, queries in text_queries(truth, vocabulary(), rng).items():
        if kind in ("absent", "unknown words"):
            empty = [not search_text(index, predictor.model, q, k=10, threshold=threshold)["hits"] for q, _ in queries]
            report[f"rejected_{kind.replace(' ', '_')}"] = round(float(np.mean(empty)), 3) if empty else None
            continue
        probs = query_scores(predictor.model, tokens, [q for q, _ in queries])
        aps, precisions, counts, relevance, ranked = [], [], [], [], []
        for j, (query, relevant_to) in enumerate(queries):
            relevant = np.array([relevant_to(r) for r in truth])
            relevance.append(relevant)
            aps.append(binary_average_precision(relevant, probs[:, j]) if relevant.any() else 0.0)
            ranked.append(float(np.mean(relevant[np.argsort(-probs[:, j], kind="stable")[:10]])))
            hits = search_text(index, predictor.model, query, k=10, threshold=threshold)["hits"]
            counts.append(len(hits))
            if hits:
                precisions.append(float(np.mean([relevant[h["id"]] for h in hits])))
        report[f"text_{kind.replace(' ', '_')}"] = {
            "queries": len(queries), "map": round(float(np.mean(aps)), 3),
            "p_at_10_ranking": round(float(np.mean(ranked)), 3),
            "p_at_10": round(float(np.mean(precisions)), 3) if precisions else None,
            "hits": round(float(np.mean(counts)), 2), "queries_with_hits": len(precisions)}
        report["calibration"][kind.replace(" ", "_")] = reliability(probs, np.stack(relevance, 1))
    vectors = np.asarray(index.embeddings())
    labels = np.array([r["category"] for r in truth])
    chosen = rng.choice(index.count, min(examples, index.count), replace=False)
    report["by_example_p_at_10"] = p_at_10(vectors[chosen] @ vectors.T, chosen, labels)
    clear = np.array([r["size"] not in ("small", "smallest") and r["visible"] >= 0.9 for r in truth])[chosen]
    if clear.any():  # examples that are not small and not hidden (the neighbours: any region)
        report["by_example_p_at_10_clear_examples"] = p_at_10(
            vectors[chosen[clear]] @ vectors.T, chosen[clear], labels)
    cats = list(predictor.model.categories)
    with torch.inference_mode():
        logits = predictor.model.score_texts(torch.from_numpy(np.asarray(tokens, np.float32)),
                                             category_prompts(cats)).float()
    class_probs = torch.softmax(logits, 1).numpy()
    report["text_prompt_accuracy"] = round(float(np.mean(np.array(cats)[class_probs.argmax(1)] == labels)), 3)
    report["by_example_model_class_p_at_10"] = p_at_10(class_probs[:, class_probs[chosen].argmax(1)].T, chosen,
                                                       labels)
    if set(labels) <= set(cats):
        true_class = np.array([cats.index(c) for c in labels[chosen]])
        report["by_example_true_class_ceiling_p_at_10"] = p_at_10(class_probs[:, true_class].T, chosen, labels)
    pool = write_collection(out / "examples", seed + 1000, 60)
    renamed = {c: f"class-{i}" for i, c in enumerate(sorted(set(labels)))}
    for k in (1, 5):
        ex_vectors, ex_labels = embed_examples(predictor, few_shot_examples(pool, k, renamed), out / "examples")
        classifier = FewShotClassifier(ex_vectors, ex_labels)
        predicted = [c[0] if c else None for c in classifier.classify(vectors)]
        report[f"few_shot_{k}_accuracy"] = round(float(np.mean([p == renamed[t] for p, t in zip(predicted, labels)])),
                                                 3)
        report[f"few_shot_{k}_none"] = round(float(np.mean([p is None for p in predicted])), 3)
    known = dict(list(renamed.items())[:OPEN_SET_KNOWN])
    ex_vectors, ex_labels = embed_examples(predictor, few_shot_examples(pool, 5, known), out / "examples")
    classifier = FewShotClassifier(ex_vectors, ex_labels)
    sims = classifier.similarities(vectors)
    best, predicted = sims.max(1), np.array(classifier.names)[sims.argmax(1)]
    is_known = np.array([t in known for t in labels])
    right = predicted == np.array([known.get(t, "") for t in labels])
    if is_known.any() and not is_known.all():
        report["few_shot_5_open_set"] = {"known_classes": len(known), "unknown_classes": len(renamed) - len(known)}
        for floor in OPEN_SET_FLOORS:  # a region below the floor gets no class
            none = best < floor
            report["few_shot_5_open_set"][f"min_similarity_{floor}"] = {
                "none_on_unknown": round(float(np.mean(none[~is_known])), 3),
                "none_on_known": round(float(np.mean(none[is_known])), 3),
                "accuracy_known": round(float(np.mean(right[is_known] & ~none[is_known])), 3),
                "open_set_accuracy": round(float(np.mean(np.where(is_known, right & ~none, none))), 3)}
    index.close()
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv=None) -> dict:
    from dynrefer.errors import run_script

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--model", default="builtin")
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--threshold", type=float, default=0.7)
    p.add_argument("--examples", type=int, default=300, help="example regions for the by-example measure")
    args = p.parse_args(argv)
    report = run_script(lambda: run(args.out_dir, model=args.model, images=args.images, seed=args.seed,
                                    threshold=args.threshold, examples=args.examples,
                                    progress=sys.stderr.isatty()), p.prog)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
