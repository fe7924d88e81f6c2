"""Region search (issue #31): the index folder (append, resume, repair, model check), text queries against a slow
per-region reference, absent targets and unknown words, search by example against brute force, few-shot classes,
and the two commands."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest
import torch
from conftest import scene_records

from dynrefer.cli import main
from dynrefer.errors import InputError
from dynrefer.inference.predictor import Predictor
from dynrefer.records import read_jsonl, write_jsonl
from dynrefer.search import (
    FewShotClassifier,
    RegionIndex,
    build_index,
    embed_regions,
    query_prompt,
    search_text,
    search_vector,
    stored_vector,
    unknown_words,
)
from dynrefer.search.query import MIN_SIMILARITY


@pytest.fixture(scope="module")
def predictor():
    return Predictor("builtin")


@pytest.fixture(scope="module")
def collection(tmp_path_factory, predictor):
    """Four generated scenes (seed 13) with their objects as regions, and an index of the first three."""
    folder = tmp_path_factory.mktemp("collection")
    records = scene_records(folder, 13, 4)
    write_jsonl(folder / "first.jsonl", records[:3])
    write_jsonl(folder / "all.jsonl", records)
    summary = build_index(folder / "index", regions_file=folder / "first.jsonl", predictor=predictor, batch_size=2,
                          progress=False)
    return folder, records, summary


def test_the_index_holds_every_region_and_appends(collection, predictor, tmp_path):
    folder, records, summary = collection
    first = sum(len(r["regions"]) for r in records[:3])
    assert summary == {"index": str(folder / "index"), "records_added": 3, "records_skipped": 0,
                       "regions_added": first, "regions": first}
    copy = tmp_path / "index"
    shutil.copytree(folder / "index", copy)
    again = build_index(copy, regions_file=folder / "all.jsonl", predictor=predictor, progress=False)
    assert again["records_skipped"] == 3 and again["records_added"] == 1
    index = RegionIndex(copy)
    assert index.count == first + len(records[3]["regions"]) and index.vectors().ntotal == index.count
    assert index.tokens().shape == (index.count, 16, 128) and index.rows([index.count - 1])[0]["image"] == "3.png"
    assert [r["id"] for r in index.all_rows()] == list(range(index.count))
    index.check_model(predictor.model)
    other = Predictor("builtin")
    with torch.no_grad():
        other.model.contrastive_head.logit_bias.add_(1.0)  # the same name, other weights
    with pytest.raises(InputError, match="built with another model"):
        index.check_model(other.model)
    count = index.count
    index.close()
    # an interrupted batch (bytes written, nothing committed) is cut by the next writer; readers never change files
    for name in ("tokens.f16", "vectors.f32"):
        with (copy / name).open("ab") as fh:
            fh.write(b"\0" * 1000)
    with sqlite3.connect(copy / "regions.sqlite") as db:  # (a row past the count: not seen by anyone)
        db.execute("INSERT INTO regions (id, image, path, box, caption, tags) VALUES (?, 'x', '', '[]', '', '[]')",
                   (count,))
    reader = RegionIndex(copy)
    assert reader.count == count and reader.tokens().shape[0] == count and len(reader.all_rows()) == count
    assert (copy / "tokens.f16").stat().st_size == count * 16 * 128 * 2 + 1000  # untouched by a reader
    writer = RegionIndex(copy, write=True)
    with pytest.raises(InputError, match="another run is adding"):
        RegionIndex(copy, write=True)
    writer.close()
    reader.close()
    assert (copy / "tokens.f16").stat().st_size == count * 16 * 128 * 2
    assert (copy / "vectors.f32").stat().st_size == count * reader.dim * 4
    (copy / "vectors.faiss").unlink()  # the FAISS file is a cache: rebuilt from vectors.f32
    rebuilt = RegionIndex(copy)
    assert rebuilt.vectors().ntotal == count
    rebuilt.close()
    with (copy / "tokens.f16").open("r+b") as fh:
        fh.truncate(100)
    with pytest.raises(InputError, match="damaged"):
        RegionIndex(copy)


def test_records_are_known_by_their_file_and_place(collection, predictor, tmp_path):
    """The same image listed twice is indexed twice (two records); named by another path, it is the same file:
    resumed, not added again."""
    folder, records, _ = collection
    twice = tmp_path / "twice.jsonl"
    write_jsonl(twice, [{"image": str(folder / "0.png"), "regions": records[0]["regions"][:1]},
                        {"image": str(folder / "0.png"), "regions": records[0]["regions"][1:2]}])
    summary = build_index(tmp_path / "i", regions_file=twice, predictor=predictor, progress=False)
    assert summary["records_added"] == 2 and summary["regions"] == 2
    relative = tmp_path / "rel.jsonl"
    write_jsonl(relative, [{"image": "0.png", "regions": records[0]["regions"][:1]}])
    again = build_index(tmp_path / "i", regions_file=relative, image_root=folder, predictor=predictor,
                        progress=False)
    assert again["records_skipped"] == 1 and again["regions"] == 2


def test_text_scores_match_a_per_region_reference(collection, predictor):
    """The probabilities behind a text search equal the head's on each region's tokens computed afresh, image by
    image (the index stores them as float16)."""
    folder, records, _ = collection
    index = RegionIndex(folder / "index")
    answer = search_text(index, predictor.model, "striped circle", k=100, threshold=0.0)
    got = {h["id"]: h["score"] for h in answer["hits"]}
    assert len(got) == index.count and "unknown_words" not in answer
    want, k = {}, 0
    for rec in records[:3]:
        _, tokens = predictor.describe_many([folder / rec["image"]], [rec["regions"]], tasks=("tags",),
                                            return_tokens=True)
        with torch.inference_mode():
            prompts = ["the striped circle", "the striped", "the circle"]  # the phrase and each word: the least
            probs = torch.sigmoid(predictor.model.score_texts(tokens, prompts)).min(1).values.tolist()
        for p in probs:
            want[k] = p
            k += 1
    assert sorted(got) == sorted(want)
    assert max(abs(got[i] - want[i]) for i in got) < 5e-3
    ranked = [h["score"] for h in answer["hits"]]
    assert ranked == sorted(ranked, reverse=True)
    # the threshold and the negatives filter; an identical negative leaves nothing
    top = search_text(index, predictor.model, "striped circle", k=3, threshold=0.0)["hits"]
    assert [h["id"] for h in top] == [h["id"] for h in answer["hits"][:3]]
    high = search_text(index, predictor.model, "striped circle", threshold=0.6)["hits"]
    assert [h["id"] for h in high] == [i for i in sorted(got, key=lambda i: -got[i]) if got[i] >= 0.6][:20]
    assert search_text(index, predictor.model, "circle", negatives=["circle"], threshold=0.0)["hits"] == []
    index.close()


def test_unknown_words_find_nothing_unless_allowed(collection, predictor):
    folder, _, _ = collection
    index = RegionIndex(folder / "index")
    assert unknown_words(predictor.model, "the red elephant, on a bicycle") == ["elephant", "bicycle"]
    assert unknown_words(predictor.model, "a large striped circle at the top left") == []
    assert query_prompt("red circle") == "the red circle" and query_prompt("A red circle") == "A red circle"
    answer = search_text(index, predictor.model, "elephant", threshold=0.0)
    assert answer == {"hits": [], "unknown_words": ["elephant"]}
    allowed = search_text(index, predictor.model, "elephant", threshold=0.0, allow_unknown=True)
    assert len(allowed["hits"]) == min(20, index.count) and allowed["unknown_words"] == ["elephant"]
    with pytest.raises(InputError, match="has no word"):
        search_text(index, predictor.model, "  ")
    index.close()


def test_search_by_example_is_the_brute_force_nearest(collection, predictor):
    folder, records, _ = collection
    index = RegionIndex(folder / "index")
    vectors = np.asarray(index.embeddings())
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for rid in range(index.count):
        hits = search_vector(index, stored_vector(index, rid), k=4, exclude=rid)
        sims = vectors @ vectors[rid]
        sims[rid] = -np.inf
        assert [h["id"] for h in hits] == list(np.argsort(-sims, kind="stable")[:4])
        assert [h["score"] for h in hits] == pytest.approx(list(np.sort(sims)[::-1][:4]), abs=1e-5)
    # an example given as an image and a box embeds as the same region in the index
    box = records[0]["regions"][0]["box"]
    fresh = embed_regions(predictor, folder / "0.png", [box])[0]
    assert float(fresh @ vectors[0]) > 0.999
    assert search_vector(index, fresh, k=1)[0]["id"] == 0
    assert search_vector(index, fresh, k=5, min_similarity=1.01) == []
    with pytest.raises(InputError, match="not in the index"):
        stored_vector(index, index.count)
    index.close()


def test_few_shot_classes_and_the_none_rule(collection, predictor):
    folder, records, _ = collection
    index = RegionIndex(folder / "index")
    vectors = np.asarray(index.embeddings())
    labels = [f"new-{r['category']}" for rec in records[:3] for r in rec["regions"]]
    classifier = FewShotClassifier(vectors, labels, min_similarity=0.0)
    sims = classifier.similarities(vectors)
    assert sims.shape == (len(labels), len(set(labels)))
    for row, c in zip(sims, classifier.classify(vectors)):
        assert c == [classifier.names[int(np.argmax(row))], pytest.approx(float(row.max()))]
    unique = [i for i, n in enumerate(labels) if labels.count(n) == 1]  # one example: its own prototype
    assert all(classifier.classify(vectors[unique])[k][0] == labels[i] for k, i in enumerate(unique))
    assert FewShotClassifier(vectors, labels, min_similarity=1.01).classify(vectors) == [None] * len(labels)
    assert FewShotClassifier(vectors, labels).min_similarity == MIN_SIMILARITY == 0.7  # docs/search.md
    with pytest.raises(InputError):
        FewShotClassifier(vectors[:0], [])
    index.close()


def test_index_and_search_commands(collection, tmp_path, capsys):
    folder, records, _ = collection
    out = tmp_path / "idx"
    assert main(["index", str(folder / "0.png"), str(folder / "1.png"), "--out", str(out), "--max-regions", "8",
                 "--kind", "hnsw", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records_added"] == 2 and 2 <= summary["regions"] <= 16  # proposals: at most 8 an image
    assert main(["search", str(out), "--text", "circle", "--threshold", "0", "--k", "3",
                 "--sheet", str(tmp_path / "hits.png")]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 3 and (tmp_path / "hits.png").is_file()
    assert set(hits[0]) == {"id", "image", "path", "box", "caption", "tags", "score"}
    assert main(["search", str(out), "--example-region", "0", "--k", "2"]) == 0
    near = json.loads(capsys.readouterr().out)["hits"]
    assert len(near) == 2 and 0 not in [h["id"] for h in near] and near[0]["score"] >= near[1]["score"]
    box = [str(v) for v in records[0]["regions"][0]["box"]]
    assert main(["search", str(out), "--example", str(folder / "0.png"), "--box", *box, "--k", "1"]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 1
    examples = tmp_path / "examples.jsonl"
    first = read_jsonl(folder / "all.jsonl")[0]["regions"]
    write_jsonl(examples, [{"image": str(folder / "0.png"), "regions": [  # two classes: two regions of image 0
        {"box": first[0]["box"], "category": "one"}, {"box": first[1]["box"], "category": "two"}]}])
    assert main(["search", str(out), "--classes-from", str(examples), "--min-similarity", "-1"]) == 0
    regions = json.loads(capsys.readouterr().out)["regions"]
    index = RegionIndex(out)
    from dynrefer.search import FewShotClassifier, embed_examples

    vectors, labels = embed_examples(Predictor("builtin"), read_jsonl(examples), tmp_path)
    want = FewShotClassifier(vectors, labels, min_similarity=-1).classify(index.embeddings())
    index.close()
    assert len(regions) == summary["regions"] and [r["category"] for r in regions] == want
    assert {r["category"][0] for r in regions} == {"one", "two"}
    assert main(["search", str(out), "--classes-from", str(examples)]) == 0  # the default floor, 0.7
    floored = [r["category"] for r in json.loads(capsys.readouterr().out)["regions"]]
    assert floored == [c if c[1] >= 0.7 else None for c in want]
    assert main(["search", str(out), "--text", "elephant"]) == 0
    assert json.loads(capsys.readouterr().out) == {"hits": [], "unknown_words": ["elephant"]}
    assert main(["search", str(tmp_path / "nothing"), "--text", "circle"]) == 2
    assert "not a region index" in capsys.readouterr().err
    assert main(["search", str(out), "--example", str(folder / "0.png"), "--k", "1"]) == 2
    assert "go together" in capsys.readouterr().err
    assert main(["search", str(out), "--text", "circle", "--negative", " "]) == 2
    assert "has no word" in capsys.readouterr().err
    assert main(["search", str(out), "--text", "circle", "--sheet", str(tmp_path / "hits")]) == 2
    # the answer comes first; an image gone since indexing is a tile that says so
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    with sqlite3.connect(moved / "regions.sqlite") as db:
        db.execute("UPDATE regions SET path = '/nonexistent/x.png'")
    assert main(["search", str(moved), "--text", "circle", "--threshold", "0", "--k", "2",
                 "--sheet", str(tmp_path / "gone.png")]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 2 and (tmp_path / "gone.png").is_file()


def test_describe_with_few_shot_classes(collection, capsys, tmp_path):
    """describe --classes-from: a region that is one of the examples gets its class at similarity ~1."""
    folder, records, _ = collection
    regions = records[1]["regions"]
    examples = tmp_path / "ex.jsonl"
    write_jsonl(examples, [{"image": str(folder / "1.png"), "regions": [
        {"box": r["box"], "category": f"kind-{k}"} for k, r in enumerate(regions[:2])]}])
    box = [str(v) for v in regions[0]["box"]]
    assert main(["describe", str(folder / "1.png"), "--box", *box, "--classes-from", str(examples),
                 "--tasks", "caption"]) == 0
    region = json.loads(capsys.readouterr().out)["regions"][0]
    assert region["category"][0] == "kind-0" and region["category"][1] == pytest.approx(1.0, abs=1e-3)
    assert [c[0] for c in region["categories"]] == ["kind-0", "kind-1"] and "caption" in region
    other = [str(v) for v in regions[2]["box"]]  # not an example: below a floor of 1
    assert main(["describe", str(folder / "1.png"), "--box", *other, "--classes-from", str(examples),
                 "--min-similarity", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["regions"][0]["category"] is None
    for bad in (["--min-similarity", "1.5"], ["--min-similarity", "-2"]):
        assert main(["describe", str(folder / "1.png"), "--box", *box, "--classes-from", str(examples), *bad]) == 2
        assert "cosine similarity in [-1, 1]" in capsys.readouterr().err
    assert main(["describe", str(folder / "1.png"), "--box", *box, "--min-similarity", "0.5"]) == 2
    assert "used with --classes-from" in capsys.readouterr().err
    assert main(["describe", str(folder / "1.png"), "--box", *box, "--classes-from", str(examples),
                 "--classes", "a,b"]) == 2
    assert "not both" in capsys.readouterr().err


def test_predict_with_few_shot_classes(collection, tmp_path):
    """predict --classes-from: every region's category is its few-shot class, the same as describe gives; a
    resumed run with other few-shot settings is refused."""
    from dynrefer.inference.predict import run_predict

    folder, records, _ = collection
    examples = tmp_path / "ex.jsonl"
    write_jsonl(examples, [{"image": str(folder / "0.png"), "regions": [
        {"box": r["box"], "category": f"kind-{k}"} for k, r in enumerate(records[0]["regions"][:3])]}])
    data = tmp_path / "in.jsonl"
    write_jsonl(data, [{"image": str(folder / rec["image"]), "regions": [{"box": r["box"]} for r in rec["regions"]]}
                       for rec in records[:2]])
    out = tmp_path / "out.jsonl"
    for workers in (0, 1):  # decoded in the main process, or prepared in a DataLoader worker
        out.unlink(missing_ok=True)
        run_predict("builtin", data, out, num_workers=workers, progress=False, tasks=("caption",),
                    classes_from=examples, min_similarity=0.0)
        got = read_jsonl(out)
        assert got[0]["regions"][0]["category"][0] == "kind-0"
        assert got[0]["regions"][0]["category"][1] == pytest.approx(1.0, abs=1e-3)
        for rec in got:
            for r in rec["regions"]:
                assert r["category"][0] in {"kind-0", "kind-1", "kind-2"} and len(r["categories"]) == 3
    capsys_free = main(["describe", str(folder / "1.png"), "--box", *map(str, records[1]["regions"][1]["box"]),
                        "--classes-from", str(examples), "--min-similarity", "0", "--out", str(tmp_path / "d.json")])
    assert capsys_free == 0
    described = json.loads((tmp_path / "d.json").read_text())["regions"][0]["category"]
    assert described[0] == got[1]["regions"][1]["category"][0]
    assert described[1] == pytest.approx(got[1]["regions"][1]["category"][1], abs=1e-4)
    with pytest.raises(InputError, match="no such file"):
        run_predict("builtin", data, tmp_path / "o2.jsonl", classes_from=tmp_path / "missing.jsonl", progress=False)
    third = tmp_path / "o3.jsonl"  # the default floor is 0.7: a rerun that names it resumes, another is refused
    run_predict("builtin", data, third, num_workers=0, progress=False, tasks=("caption",), classes_from=examples)
    again = run_predict("builtin", data, third, num_workers=0, progress=False, tasks=("caption",),
                        classes_from=examples, min_similarity=0.7)
    assert again["skipped"] == again["regions"] and read_jsonl(third)
    assert all(r["category"] is None or r["category"][1] >= 0.7 for rec in read_jsonl(third) for r in rec["regions"])
    with pytest.raises(InputError, match=r"\(classes_from\[2\]: 0\.7 -> 0\.0\)"):
        run_predict("builtin", data, third, num_workers=0, progress=False, tasks=("caption",), classes_from=examples,
                    min_similarity=0.0)
    write_jsonl(examples, [{"image": str(folder / "0.png"), "regions": [  # edited in place: other classes
        {"box": r["box"], "category": f"sort-{k}"} for k, r in enumerate(records[0]["regions"][:3])]}])
    with pytest.raises(InputError, match=r"\(classes_from\[1\]: \"[0-9a-f]{64}\" -> \"[0-9a-f]{64}\"\)"):
        run_predict("builtin", data, third, num_workers=0, progress=False, tasks=("caption",), classes_from=examples)


def test_queries_are_split_into_the_models_names():
    """One tokeniser for queries and names: multi-word names stay whole, hyphens and case do not matter, attribute
    types are not words of the vocabulary."""
    from types import SimpleNamespace

    from dynrefer.search import query_parts

    model = SimpleNamespace(tag_names=["traffic light", "t-shirt", "red"], categories=["Dog", "light"],
                            attributes=["color:dark blue", {"name": "size:big"}])
    assert query_parts(model, "the red traffic light") == (["red", "traffic light"], [])
    assert query_parts(model, "a T-Shirt, dark-blue") == (["t-shirt", "dark blue"], [])  # the model's spelling
    assert query_parts(model, "big dog with a color") == (["big", "Dog", "color"], ["color"])
    assert query_parts(model, "red lights") == (["red", "light"], [])  # a plural is its name
    assert query_parts(model, "the of a") == ([], [])


def test_the_fingerprint_follows_the_weights_not_the_folder(tmp_path, predictor):
    from dynrefer.model.dynrefer import DynRefer
    from dynrefer.search.store import model_fingerprint

    predictor.model.save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a, b = DynRefer.from_pretrained(tmp_path / "a"), DynRefer.from_pretrained(tmp_path / "b")
    assert model_fingerprint(a) == model_fingerprint(b) == model_fingerprint(predictor.model)
    with torch.no_grad():
        next(b.fusion.parameters()).mul_(1.01)  # a weight the contrastive head does not hold
    assert model_fingerprint(b) != model_fingerprint(a)


def test_a_failed_append_leaves_nothing_behind(collection, tmp_path):
    folder, _, _ = collection
    shutil.copytree(folder / "index", tmp_path / "i")
    index = RegionIndex(tmp_path / "i", write=True)
    count, dim = index.count, index.dim
    tokens, vectors = np.ones((1, *index.shape), np.float32), np.ones((1, dim), np.float32) / np.sqrt(dim)
    with pytest.raises(KeyError):
        index.append([{"image": "x"}], tokens, vectors)  # no box: fails after the bytes were written
    assert index.count == count
    index.append([{"image": "y", "box": [1, 2, 3, 4]}], tokens * 2, vectors)
    assert index.count == count + 1 and float(index.tokens()[count].max()) == 2.0
    assert index.rows([count])[0]["image"] == "y" and index.vectors().ntotal == count + 1
    with pytest.raises(InputError, match="overflow"):
        index.append([{"image": "z", "box": [1, 2, 3, 4]}], tokens * 1e6, vectors)
    index.close()
