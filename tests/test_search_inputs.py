"""Region search on inputs a new user gives (an independent battery's findings): queries in any spelling, damaged
or contested index folders, malformed example files, and API arguments of the wrong kind."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from conftest import scene_records

from dynrefer.cli import main
from dynrefer.errors import InputError
from dynrefer.inference.predictor import Predictor
from dynrefer.records import write_jsonl
from dynrefer.search import (
    RegionIndex,
    build_index,
    few_shot_classifier,
    query_parts,
    query_scores,
    search_text,
    search_vector,
    stored_vector,
)
from dynrefer.search.store import _writer_lock


@pytest.fixture(scope="module")
def predictor():
    return Predictor("builtin")


@pytest.fixture(scope="module")
def collection(tmp_path_factory, predictor):
    """Two generated scenes (seed 21) and an index of their objects."""
    folder = tmp_path_factory.mktemp("inputs")
    records = scene_records(folder, 21, 2)
    write_jsonl(folder / "regions.jsonl", records)
    build_index(folder / "index", regions_file=folder / "regions.jsonl", predictor=predictor, progress=False)
    return folder, records


def test_a_query_scores_the_same_in_any_spelling(collection, predictor):
    """Case, punctuation and plurals ("-s", "-es") are the model's own name: the same scores (the battery found
    "brown" 0 hits and "browns" 69; "dotted" 38 and "Dotted." 0)."""
    folder, _ = collection
    index = RegionIndex(folder / "index")
    model = predictor.model
    assert query_parts(model, "Crosses!") == (["cross"], []) and query_parts(model, "circles.") == (["circle"], [])
    assert query_parts(model, "the RED, dotted circles?") == (["red", "dotted", "circle"], [])
    pairs = [("brown", "browns"), ("dotted", "Dotted."), ("square", "squares"), ("cross", "crosses"),
             ("red circle", "Red, circles!"), ("medium dotted", "medium, dotted.")]
    scores = query_scores(model, index.tokens(), [t for pair in pairs for t in pair])
    for j, (plain, other) in enumerate(pairs):
        np.testing.assert_array_equal(scores[:, 2 * j], scores[:, 2 * j + 1], err_msg=f"{plain!r} vs {other!r}")
    low = search_text(index, model, "circle", threshold=0.0, k=5)["hits"]
    assert low == search_text(index, model, "CIRCLES", threshold=0.0, k=5)["hits"]
    with pytest.raises(InputError, match="only stop words"):
        search_text(index, model, "red", negatives=["the"])
    striped = search_text(index, model, "red", negatives="striped", threshold=0.0, k=50)  # one text, not letters
    assert striped == search_text(index, model, "red", negatives=["striped"], threshold=0.0, k=50)
    index.close()


def test_a_writer_refuses_an_index_without_its_database(collection, tmp_path):
    """regions.sqlite gone: appending said nothing and cut the stored tokens to 0 bytes; now the same 'damaged'
    error as a reader, and no file changes."""
    folder, _ = collection
    broken = tmp_path / "broken"
    shutil.copytree(folder / "index", broken)
    (broken / "regions.sqlite").unlink()
    sizes = {p.name: p.stat().st_size for p in broken.iterdir()}
    with pytest.raises(InputError, match="damaged: regions.sqlite is missing"):
        RegionIndex(broken, write=True)
    assert main(["index", str(folder / "0.png"), "--out", str(broken), "--max-regions", "2", "--no-progress"]) == 2
    assert {p.name: p.stat().st_size for p in broken.iterdir()} == sizes


def test_creating_an_index_waits_for_no_one(tmp_path):
    """Two runs creating one index: the one without the lock stops with one line and writes nothing."""
    folder = tmp_path / "new"
    folder.mkdir()
    held = _writer_lock(folder)
    try:
        with pytest.raises(InputError, match="another run is adding"):
            RegionIndex.create(folder, model="m", fingerprint="f", tokens_shape=(2, 3), dim=4)
        assert not (folder / "meta.json").exists() and not list(folder.glob("meta.json*"))
    finally:
        held.close()
    index = RegionIndex.create(folder, model="m", fingerprint="f", tokens_shape=(2, 3), dim=4)
    index.close()
    with pytest.raises(InputError, match="already holds an index"):
        RegionIndex.create(folder, model="m", fingerprint="f", tokens_shape=(2, 3), dim=4)


def test_hnsw_returns_k_neighbours_beyond_its_search_breadth(tmp_path):
    """HNSW answered at most efSearch (16) neighbours: --k 100 gave 88 of 120 regions."""
    rng = np.random.default_rng(0)
    index = RegionIndex.create(tmp_path / "h", model="m", fingerprint="f", tokens_shape=(1, 2), dim=8, kind="hnsw")
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index.append([{"image": f"{i}.png", "box": [0, 0, 1, 1]} for i in range(300)], np.zeros((300, 1, 2)), vectors)
    hits = search_vector(index, vectors[0], k=250, exclude=0)
    assert len(hits) == 250 and 0 not in [h["id"] for h in hits]
    assert index.vectors().hnsw.efSearch == 16  # that search's own breadth: the index (and its cache) keep theirs
    exact = np.argsort(-(vectors @ vectors[0]), kind="stable")[1:11]
    assert len(set(h["id"] for h in hits[:10]) & set(exact.tolist())) >= 9  # approximate, nearly exact here
    for k in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="k must be"):
            search_vector(index, vectors[0], k=k)
    with pytest.raises(InputError, match="must hold 8 finite numbers"):
        search_vector(index, vectors[0][:4])
    with pytest.raises(InputError, match="must hold 8 finite numbers"):
        search_vector(index, np.full(8, np.nan))
    with pytest.raises(InputError, match="whole number"):
        stored_vector(index, 1.5)
    index.close()
    empty = RegionIndex.create(tmp_path / "e", model="m", fingerprint="f", tokens_shape=(1, 2), dim=8)
    with pytest.raises(InputError, match="it is empty"):
        stored_vector(empty, 0)
    empty.close()


@pytest.mark.parametrize("record, pattern", [
    ({"regions": [{"box": [1, 1, 10, 10], "category": "a"}]}, r"record 1: 'image' must be a path"),
    ({"image": None, "regions": []}, r"record 1: 'image' must be a path"),
    ({"image": "0.png", "regions": {"id": 0}}, r"record 1 \(0.png\): 'regions' must be a list"),
    ({"image": "0.png", "regions": [{"box": [900, 900, 1000, 1000], "category": "a"}]},
     r"ex.jsonl' record 1 \(0.png\): region 0 .*outside the image"),
    ({"image": "0.png", "regions": [{"box": [1, 1, 10, 10]}]}, r"ex.jsonl' record 1 \(0.png\) region 0: needs a"),
    ({"image": "gone.png", "regions": [{"box": [1, 1, 10, 10], "category": "a"}]}, r"record 1 \(gone.png\)"),
])
def test_example_files_are_checked_and_named(collection, predictor, capsys, record, pattern):
    """A malformed --classes-from file: one error naming the file, the record and the image (internal
    KeyError / TypeError / AttributeError before, or a region error about an image the user did not give)."""
    folder, _ = collection
    examples = folder / "ex.jsonl"
    write_jsonl(examples, [record])
    with pytest.raises(InputError, match=pattern):
        few_shot_classifier(predictor, examples)
    assert main(["describe", str(folder / "1.png"), "--box", "1", "1", "20", "20", "--classes-from",
                 str(examples)]) == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err) and err.count("\n") == 1 and "internal error" not in err


def test_index_inputs_are_checked_before_anything_is_made(collection, predictor, tmp_path, capsys):
    """A bad region, image or option stops `index` before the folder exists, naming the file and record."""
    folder, records = collection
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"image": str(folder / "0.png"), "regions": [{"box": [1, 1, 20, 20]}]},
                      {"image": str(folder / "1.png"), "regions": [{"box": [900, 900, 950, 950]}]}])
    out = tmp_path / "idx"
    with pytest.raises(InputError, match=r"bad.jsonl' record 2 \(.*1.png\): region 0 .*outside"):
        build_index(out, regions_file=bad, predictor=predictor, progress=False)
    with pytest.raises(InputError, match="gone.png"):
        build_index(out, images=[folder / "0.png", tmp_path / "gone.png"], predictor=predictor, progress=False)
    with pytest.raises(InputError, match="nms-iou"):
        build_index(out, images=[folder / "0.png"], predictor=predictor, nms_iou=2.0, progress=False)
    assert not out.exists()
    one = build_index(out, images=str(folder / "0.png"), predictor=predictor, max_regions=2, progress=False)
    assert one["records_added"] == 1 and 1 <= one["regions"] <= 2  # a path, not its letters
    assert main(["index", str(folder / "1.png"), "--out", str(out), "--kind", "hnsw", "--no-progress"]) == 2
    assert "is flat: it keeps its kind" in capsys.readouterr().err
    assert RegionIndex(out).count == one["regions"]


@pytest.mark.parametrize("extra, message", [
    (["--example-region", "0", "--threshold", "0.5"], "used with --text"),
    (["--example-region", "0", "--allow-unknown-words"], "used with --text"),
    (["--text", "red", "--min-similarity", "0.5"], "used with --example"),
    (["--example-region", "0", "--min-similarity", "1.5"], "in [-1, 1]"),
])
def test_search_options_of_another_mode_are_refused(collection, capsys, extra, message):
    folder, _ = collection
    assert main(["search", str(folder / "index"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_the_command_reads_a_query_in_any_spelling(collection, capsys):
    folder, _ = collection
    answers = []
    for text in ("Circles!", "circle"):
        assert main(["search", str(folder / "index"), "--text", text, "--threshold", "0", "--k", "3"]) == 0
        answers.append(json.loads(capsys.readouterr().out)["hits"])
    assert len(answers[0]) == 3 and answers[0] == answers[1]


def test_plurals_prefer_the_plain_s():
    """"manes" is "mane" where a vocabulary has both "man" and "mane" (Visual Genome has such pairs); "-es" only
    after s, x, z, ch, sh; "-ies" is "-y"."""
    from types import SimpleNamespace

    model = SimpleNamespace(tag_names=["man", "mane", "cap", "cape", "box", "cross", "berry", "bus", "glass"],
                            categories=[], attributes=[])
    for word, name in [("manes", "mane"), ("mans", "man"), ("capes", "cape"), ("boxes", "box"),
                       ("crosses", "cross"), ("berries", "berry"), ("buses", "bus"), ("glasses", "glass"),
                       ("bus", "bus"), ("glass", "glass")]:
        assert query_parts(model, word) == ([name], []), word
    assert query_parts(model, "caps")[0] == ["cap"] and query_parts(model, "mens")[1] == ["mens"]


def test_resuming_needs_only_the_images_still_to_index(collection, predictor, tmp_path):
    """An image already indexed may be gone when more are added (the checks read only what is still to do); a
    record with "regions": null gets proposals, as one without the key."""
    folder, records = collection
    work = tmp_path / "w"
    work.mkdir()
    for i in range(2):
        shutil.copy(folder / f"{i}.png", work / f"{i}.png")
    write_jsonl(work / "a.jsonl", [records[0]])
    build_index(work / "index", regions_file=work / "a.jsonl", predictor=predictor, progress=False)
    (work / "0.png").unlink()
    write_jsonl(work / "b.jsonl", [records[0], {"image": "1.png", "regions": None}])
    more = build_index(work / "index", regions_file=work / "b.jsonl", predictor=predictor, proposals="default",
                       max_regions=2, progress=False)
    assert more["records_skipped"] == 1 and more["records_added"] == 1 and 1 <= more["regions_added"] <= 2
