"""``dynrefer predict``: batch prediction over JSONL with Trainer.predict — equal to describe,
resumable after an interruption, 2-process DDP, the CLI and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from dynrefer.cli import main
from dynrefer.errors import InputError
from dynrefer.inference import predict as predict_mod
from dynrefer.inference.engine import merge_prepared
from dynrefer.inference.predict import parts_dir, run_predict
from dynrefer.inference.predictor import Predictor


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    records = []
    photos = [data.coffee(), data.astronaut(), data.chelsea(), data.rocket()]
    for i, photo in enumerate(photos):
        photo = photo[::2, ::2]
        Image.fromarray(photo).save(root / "img" / f"{i}.png")
        h, w = photo.shape[:2]
        regions = []
        for j in range(2 + i):
            x1, y1 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            box = [round(float(x1), 2), round(float(y1), 2), round(float(x1 + rng.uniform(8, w / 2)), 2),
                   round(float(y1 + rng.uniform(8, h / 2)), 2)]
            regions.append({"id": f"r{j}", "box": box, "captions": ["unused"], "score": 0.5 + j / 10})
        records.append({"image": f"img/{i}.png", "width": w, "height": h, "split": "test", "regions": regions})
    (root / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root, records


def _regions(path):
    return {(rec["image"], reg["id"]): reg for rec in map(json.loads, path.read_text().splitlines())
            for reg in rec["regions"]}


def _assert_close(a: dict, b: dict):
    assert set(a) == set(b)
    for key, ra in a.items():
        rb = b[key]
        assert ra["views"] == rb["views"] and ra["caption"] == rb["caption"] and ra["box"] == rb["box"]
        assert abs(ra["caption_score"] - rb["caption_score"]) < 1e-4 and ra["score"] == rb["score"]
        for name in ("attributes", "tags"):
            got = dict(ra[name])
            assert max((abs(got[n] - s) for n, s in rb[name]), default=0.0) < 1e-4


def test_predict_equals_describe_and_keeps_input_order(model_dir, dataset, tmp_path):
    root, records = dataset
    out = tmp_path / "pred.jsonl"
    summary = run_predict(model_dir, root / "in.jsonl", out, batch_size=3, num_workers=0, progress=False)
    assert summary == {"out": str(out), "images": 4, "regions": 14, "skipped": 0, "predicted": 14}
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in got] == [r["image"] for r in records]
    assert [[g["id"] for g in r["regions"]] for r in got] == [[g["id"] for g in r["regions"]] for r in records]
    assert all(r["split"] == "test" for r in got)
    assert not parts_dir(out).exists()
    predictor = Predictor(model_dir)
    for rec, pred in zip(records, got):
        ref = predictor.describe(root / rec["image"], [{"box": r["box"], "id": r["id"], "score": r["score"]}
                                                       for r in rec["regions"]])
        _assert_close({r["id"]: r for r in pred["regions"]}, {r["id"]: r for r in ref["regions"]})


def _crash_at_third_image(model_dir, data, out, monkeypatch):
    """A run (one image a batch) that crashes on the third image, leaving the first two in the parts."""
    original = predict_mod.PredictModule.predict_step

    def failing(self, batch, batch_idx=0):
        if batch_idx == 2:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    with monkeypatch.context() as patch:
        patch.setattr(predict_mod.PredictModule, "predict_step", failing)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_predict(model_dir, data, out, batch_size=1, num_workers=0, progress=False)


def test_resume_after_interruption_gives_the_same_file(model_dir, dataset, tmp_path, monkeypatch):
    root, _ = dataset
    clean = tmp_path / "clean.jsonl"
    run_predict(model_dir, root / "in.jsonl", clean, batch_size=1, num_workers=0, progress=False)
    out = tmp_path / "pred.jsonl"
    _crash_at_third_image(model_dir, root / "in.jsonl", out, monkeypatch)
    assert not out.exists()  # never a partial output file
    part = parts_dir(out) / "rank0.jsonl"
    assert len(part.read_text().splitlines()) == 2 + 3  # the first two images' regions
    with part.open("a") as fh:
        fh.write('{"record": 3, "region": 0, "predic')  # a write cut short
    summary = run_predict(model_dir, root / "in.jsonl", out, batch_size=1, num_workers=0, progress=False)
    assert (summary["skipped"], summary["predicted"]) == (5, 9)
    assert out.read_bytes() == clean.read_bytes()
    again = run_predict(model_dir, root / "in.jsonl", out, batch_size=1, num_workers=0, progress=False)
    assert (again["skipped"], again["predicted"]) == (14, 0)
    assert out.read_bytes() == clean.read_bytes()


@pytest.mark.slow
def test_ddp_two_processes_equal_one(model_dir, dataset, tmp_path):
    root, _ = dataset
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    run_predict(model_dir, root / "in.jsonl", one, batch_size=1, num_workers=0, progress=False)
    summary = run_predict(model_dir, root / "in.jsonl", two, batch_size=1, num_workers=0, devices=2, progress=False)
    assert summary["predicted"] == 14
    _assert_close(_regions(two), _regions(one))


def test_cli_predict_with_config_and_errors(model_dir, dataset, tmp_path, capsys):
    root, _ = dataset
    (tmp_path / "classes.txt").write_text("circle\nstar\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"predict:\n  model: {model_dir}\n  tasks: category\n  all_scores: true\n"
                   "  classes_file: classes.txt\n  num_workers: 0\n")
    out = tmp_path / "p.jsonl"
    code = main(["predict", "--config", str(cfg), "--data", str(root / "in.jsonl"), "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["predicted"] == 14  # stdout is the summary alone (no bar: stderr is no terminal)
    assert "Predicting" not in captured.err
    code = main(["predict", "--config", str(cfg), "--data", str(root / "in.jsonl"), "--out", str(tmp_path / "q.jsonl"),
                 "--progress"])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["predicted"] == 14 and "regions_per_s" in captured.err
    import logging

    from dynrefer.cli import LIGHTNING_NOTICE_LOGGERS

    for name in LIGHTNING_NOTICE_LOGGERS:  # no start-up tips (tests/test_battery.py checks stderr itself)
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING
    for region in _regions(out).values():
        assert set(region) == {"id", "box", "views", "score", "category", "categories"}
        assert sorted(c for c, _ in region["categories"]) == ["circle", "star"]
    for argv, reason in [
        (["predict", "--data", str(root / "in.jsonl")], "--out is required"),
        (["predict", "--data", str(tmp_path / "nope.jsonl"), "--out", str(out)], "nope.jsonl"),
        (["predict", "--data", str(root / "in.jsonl"), "--out", str(root / "in.jsonl")], "overwrite"),
        (["predict", "--config", str(tmp_path / "none.yaml"), "--out", str(out)], "none.yaml"),
        (["predict", "--data", str(root / "in.jsonl"), "--out", str(out), "--tasks", "poem"], "poem"),
        (["predict", "--data", str(root / "in.jsonl"), "--out", str(out), "--batch-size", "0"], "--batch-size"),
        (["predict", "--data", str(root / "in.jsonl"), "--out", str(out), "--accelerator", "tpu"], "--accelerator"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("dynrefer: error: ") and reason in err, (argv, err)
    bad = tmp_path / "bad.yaml"
    bad.write_text("predict:\n  colour: red\n")
    assert main(["predict", "--config", str(bad), "--data", str(root / "in.jsonl"), "--out", str(out)]) == 2
    assert "unknown option(s) colour" in capsys.readouterr().err


def test_prepared_views_equal_planning_in_the_engine(model_dir, dataset):
    from dynrefer.inference.predictor import prepare_image

    root, records = dataset
    predictor = Predictor(model_dir)
    settings = predictor.engine.view_settings()
    specs = [[{"box": r["box"], "id": r["id"], "score": r["score"]} for r in rec["regions"]] for rec in records]
    specs[1] = []  # an image without regions in the middle of the batch
    paths = [root / rec["image"] for rec in records]
    items = [prepare_image(p, s, settings, label=rec["image"]) for p, s, rec in zip(paths, specs, records)]
    assert items[0].pixels.dtype == torch.uint8 and items[1].plan.unique_crops == 0
    got = predictor.describe_prepared(items)
    ref = predictor.describe_many(paths, specs, image_labels=[rec["image"] for rec in records])
    assert [(g["image"], g["width"], g["height"]) for g in got] == [(r["image"], r["width"], r["height"]) for r in ref]
    for g, r in zip(got, ref):
        assert [x["id"] for x in g["regions"]] == [x["id"] for x in r["regions"]]
        _assert_close({x["id"]: x for x in g["regions"]}, {x["id"]: x for x in r["regions"]})
    with pytest.raises(InputError, match=r"prepared views are for \[2, 0, 4, 5\] regions per image, got \[2, 0, 4\]"):
        predictor.engine.run(None, [i.regions for i in items[:3]], prepared=merge_prepared(
            [(i.plan, i.pixels) for i in items]))


def test_workers_prepare_the_views(model_dir, dataset, tmp_path, capsys):
    root, records = dataset
    main_process, workers = tmp_path / "main.jsonl", tmp_path / "workers.jsonl"
    run_predict(model_dir, root / "in.jsonl", main_process, batch_size=2, num_workers=0, progress=False)
    seen = []
    original = predict_mod.PredictModule.predict_step

    def spy(self, batch, batch_idx=0):
        seen.append(all("prepared" in b and "image" not in b for b in batch))
        return original(self, batch, batch_idx)

    predict_mod.PredictModule.predict_step = spy
    try:
        run_predict(model_dir, root / "in.jsonl", workers, batch_size=2, num_workers=1, progress=False)
    finally:
        predict_mod.PredictModule.predict_step = original
    assert seen == [True, True]
    _assert_close(_regions(workers), _regions(main_process))
    # a bad region found in a worker: the CLI's one-line error, naming the image
    bad = [dict(records[0], regions=[{"id": "x", "box": [50, 40, 10, 60]}])]
    (tmp_path / "img").symlink_to(root / "img")
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad[0]) + "\n")
    code = main(["predict", "--model", str(model_dir), "--data", str(tmp_path / "bad.jsonl"), "--out",
                 str(tmp_path / "bad_out.jsonl"), "--num-workers", "1"])
    err = capsys.readouterr().err
    assert (code == 2 and err.count("\n") == 1 and err.startswith("dynrefer: error: record 1 (img/0.png): ")
            and "x2" in err), err


@pytest.mark.parametrize("views", [True, False])
def test_dataset_names_the_record_of_a_bad_image_size_or_region(dataset, views):
    """A record whose width / height disagree with its image, or with a bad region, gives an item whose
    error names the record (1-based) and image, whether views are prepared in the dataset or not."""
    from dynrefer.inference.predict import RecordDataset

    root, records = dataset
    settings = dict(num_views=3, size=32, policy="greedy", ts=None, hash_flavour="official", base_t=0.0)
    wrong = [dict(records[0]), dict(records[1], width=records[1]["width"] + 1)]
    ds = RecordDataset(wrong, root, views=settings if views else None)
    assert "error" not in ds[0]
    err = ds[1]["error"]
    assert err.startswith("record 2 (img/1.png): the record says ") and f"{records[1]['width'] + 1}x" in err, err
    inverted = [dict(records[0], regions=[{"id": "a", "box": [50, 40, 10, 60]}])]
    err = RecordDataset(inverted, root, views=settings if views else None)[0]["error"]
    assert err.startswith("record 1 (img/0.png): region 0 (id 'a'): inverted box"), err
    unsized = [{k: v for k, v in records[0].items() if k not in ("width", "height")}]
    assert "error" not in RecordDataset(unsized, root, views=settings if views else None)[0]


def test_resume_after_the_input_changed_never_mixes_images(model_dir, dataset, tmp_path, monkeypatch):
    """Parts of an interrupted run count only where their image and region id are the input's at that
    position: with the first record dropped from the input, nothing of image 0 lands on image 1."""
    import os

    root, records = dataset
    out = tmp_path / "pred.jsonl"
    _crash_at_third_image(model_dir, root / "in.jsonl", out, monkeypatch)
    dropped = root / "dropped.jsonl"
    unsized = [{k: v for k, v in json.loads(json.dumps(r)).items() if k not in ("width", "height")}
               for r in records[1:]]
    unsized[0]["regions"][0]["box"] = [5, 5, 60, 50]  # a region of image 1 edited since: predicted again
    dropped.write_text("".join(json.dumps(r) + "\n" for r in unsized))
    summary = run_predict(model_dir, dropped, out, batch_size=1, num_workers=0, progress=False)
    # image 1's regions were done before the crash (at position 1; now 0): 2 of its 3 still as they were
    assert (summary["skipped"], summary["predicted"]) == (2, 10)
    clean = tmp_path / "clean.jsonl"
    run_predict(model_dir, dropped, clean, batch_size=1, num_workers=0, progress=False)
    _assert_close(_regions(out), _regions(clean))
    written = [json.loads(line) for line in out.read_text().splitlines()]
    # no width / height in the input: the output records carry the image's own size (SPEC §5)
    assert [(r["width"], r["height"]) for r in written] == [(r["width"], r["height"]) for r in records[1:]]
    mask = os.umask(0o022)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    # a rerun into a finished file with other tasks is an error, not the old predictions returned
    with pytest.raises(InputError, match="written with other settings .* no categories"):
        run_predict(model_dir, dropped, out, tasks=("category",), all_scores=True, num_workers=0, progress=False)


@pytest.mark.parametrize("record, pattern", [
    ({"image": 5, "regions": []}, "'image' must be a path"),
    ({"image": "img/0.png", "regions": {"box": [1, 2, 3, 4]}}, "'regions' must be a list of region objects"),
    ({"image": "img/0.png", "regions": ["abc"]}, "'regions' must be a list of region objects"),
])
def test_bad_input_records_are_named(model_dir, dataset, tmp_path, record, pattern):
    root, _ = dataset
    data = root / f"bad_{abs(hash(pattern))}.jsonl"
    data.write_text(json.dumps(record) + "\n")
    with pytest.raises(InputError, match=rf"record 1.*{pattern}"):
        run_predict(model_dir, data, tmp_path / "o.jsonl", num_workers=0, progress=False)


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_at_the_batch_end_and_a_rerun_resumes(model_dir, dataset, tmp_path, monkeypatch, capsys, signum):
    """SIGTERM / SIGINT during a run: the batch in progress is written, the command stops with one line and
    exit 128 + the signal (Lightning alone ran SIGTERM to the end); a rerun finishes the same file."""
    import os
    import signal

    root, _ = dataset
    clean = tmp_path / "clean.jsonl"
    run_predict(model_dir, root / "in.jsonl", clean, batch_size=1, num_workers=0, progress=False)
    original = predict_mod.PredictModule.predict_step
    sig = getattr(signal, signum)

    def signalled(self, batch, batch_idx=0):
        if batch_idx == 1:
            os.kill(os.getpid(), sig)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(predict_mod.PredictModule, "predict_step", signalled)
    out = tmp_path / "pred.jsonl"
    argv = ["predict", "--model", str(model_dir), "--data", str(root / "in.jsonl"), "--out", str(out),
            "--batch-size", "1", "--num-workers", "0"]
    assert main(argv) == 128 + int(sig)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"stopped by {signum}" in err and "rerun" in err
    assert not out.exists() and len((parts_dir(out) / "rank0.jsonl").read_text().splitlines()) == 2 + 3
    assert signal.getsignal(sig) is not None and "StopOnSignal" not in repr(signal.getsignal(sig))  # restored
    monkeypatch.setattr(predict_mod.PredictModule, "predict_step", original)
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 5
    assert out.read_bytes() == clean.read_bytes()


def test_an_interrupted_run_resumes_only_with_its_settings(model_dir, dataset, tmp_path, monkeypatch):
    """The parts of an interrupted run are not completed with another vocabulary or tasks (the file would
    mix two runs); with the same settings it resumes, and a run that failed before any batch leaves no trap."""
    root, _ = dataset
    out = tmp_path / "pred.jsonl"
    with pytest.raises(InputError):
        run_predict(tmp_path / "no_model", root / "in.jsonl", out, num_workers=0, progress=False)
    _crash_at_third_image(model_dir, root / "in.jsonl", out, monkeypatch)
    with pytest.raises(InputError, match=r"made with other settings \(classes: null -> \[\"cup\", \"table\"\]\)"):
        run_predict(model_dir, root / "in.jsonl", out, classes=["cup", "table"], num_workers=0, progress=False)
    with pytest.raises(InputError, match=r"\(all_scores: false -> true; tasks: \[.*\] -> \[\"category\"\]\)"):
        run_predict(model_dir, root / "in.jsonl", out, tasks=("category",), all_scores=True, num_workers=0,
                    progress=False)
    summary = run_predict(model_dir, root / "in.jsonl", out, batch_size=1, num_workers=0, progress=False)
    assert summary["skipped"] == 5 and not parts_dir(out).exists()


def test_a_finished_output_is_kept_only_under_its_settings(model_dir, dataset, tmp_path):
    """A finished OUT keeps its run's settings in OUT.settings.json: a rerun with the same ones reuses every region,
    one with another vocabulary or model is refused instead of returning the old regions (reviewer's case: a
    changed few-shot floor); an output written before the settings were kept is completed as before."""
    root, _ = dataset
    out = tmp_path / "pred.jsonl"
    first = run_predict(model_dir, root / "in.jsonl", out, num_workers=0, progress=False)
    sidecar = tmp_path / "pred.jsonl.settings.json"
    assert sidecar.is_file() and not parts_dir(out).exists() and first["predicted"] == first["regions"] > 0
    assert json.loads(sidecar.read_text())["tasks"] == ["attributes", "caption", "category", "tags"]
    written = out.read_bytes()
    again = run_predict(model_dir, root / "in.jsonl", out, num_workers=0, progress=False)
    assert again["skipped"] == first["regions"] and again["predicted"] == 0 and out.read_bytes() == written
    with pytest.raises(InputError, match=r"written with other settings \(classes: null -> \[\"cup\", \"table\"\]\)"):
        run_predict(model_dir, root / "in.jsonl", out, classes=["cup", "table"], num_workers=0, progress=False)
    with pytest.raises(InputError, match=r"other settings \(model: .* -> \"builtin\"\)"):
        run_predict("builtin", root / "in.jsonl", out, num_workers=0, progress=False)
    assert out.read_bytes() == written and sidecar.is_file()
    failing = tmp_path / "other.jsonl"  # reuses nothing and fails before any work: the old output stays checked
    failing.write_text(json.dumps({"image": "missing.png", "regions": [{"box": [1, 1, 5, 5]}]}) + "\n")
    with pytest.raises(InputError, match="missing.png"):
        run_predict(model_dir, failing, out, num_workers=0, progress=False)
    assert sidecar.is_file()
    with pytest.raises(InputError, match="classes"):
        run_predict(model_dir, root / "in.jsonl", out, classes=["cup", "table"], num_workers=0, progress=False)
    sidecar.unlink()  # an older output: no settings kept, its regions reused as before, and it stays unchecked
    legacy = run_predict(model_dir, root / "in.jsonl", out, classes=["cup", "table"], num_workers=0, progress=False)
    assert legacy["skipped"] == first["regions"] and not sidecar.exists() and out.read_bytes() == written
    assert run_predict(model_dir, root / "in.jsonl", out, num_workers=0, progress=False)["skipped"] == first["regions"]
    assert not sidecar.exists()
    run_predict(model_dir, root / "in.jsonl", out, classes=["cup", "table"], num_workers=0, progress=False)
    out.unlink()  # the user removed the output: an old settings file does not outlive it
    fresh = tmp_path / "pred.jsonl.settings.json"
    fresh.write_text(json.dumps({"model": "another"}))
    again = run_predict(model_dir, root / "in.jsonl", out, num_workers=0, progress=False)
    assert again["predicted"] == first["regions"] and json.loads(fresh.read_text())["classes"] is None
    assert out.read_bytes() == written


def test_more_devices_than_images_runs_one_process_per_image(model_dir, dataset, tmp_path):
    """--devices 2 over one image: Lightning's distributed sampler needs an image per process (it asserted)."""
    root, records = dataset
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps(dict(records[0], image=str(root / records[0]["image"]))) + "\n")
    summary = run_predict(model_dir, data, tmp_path / "o.jsonl", devices=2, num_workers=0, progress=False)
    assert summary["predicted"] == len(records[0]["regions"])
