"""``predict --proposals`` (issue #30): records without regions get a proposal source's regions; the
dense-captioning score is the objectness; the run resumes; file proposals equal to the ground truth
give the ground-truth run's predictions."""

from __future__ import annotations

import json

import pytest

from dynrefer.cli import main
from dynrefer.errors import InputError
from dynrefer.inference.predict import run_predict
from dynrefer.records import read_jsonl, write_jsonl


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Three generated scenes (seed 11) as PNG files with their ground-truth records."""
    from dynrefer_builtin.synthetic import generate_scene

    folder = tmp_path_factory.mktemp("scenes")
    truth = []
    for index in range(3):
        image, record = generate_scene(11, index)
        image.save(folder / f"s{index}.png")
        truth.append({"image": f"s{index}.png", "width": record["width"], "height": record["height"],
                      "regions": [{"id": r["id"], "box": r["box"]} for r in record["regions"]]})
    return folder, truth


def _write(path, records):
    write_jsonl(path, records)
    return path


def _strip(truth):
    return [{k: v for k, v in r.items() if k != "regions"} for r in truth]


def test_file_proposals_fill_records_without_regions(scenes, tmp_path):
    folder, truth = scenes
    proposals = [{"image": r["image"], "regions": [{"box": g["box"], "score": 0.5 + 0.1 * k}
                                                   for k, g in enumerate(r["regions"])]} for r in truth]
    write_jsonl(folder / "proposals.jsonl", proposals)
    given = [{"image": "s0.png", "regions": [{"id": "mine", "box": [10, 10, 60, 60]}]}]  # kept as given
    data = _write(folder / "input.jsonl", given + _strip(truth[1:]))
    out = tmp_path / "out.jsonl"
    summary = run_predict("builtin", data, out, num_workers=0, progress=False,
                          proposals=f"file:{folder / 'proposals.jsonl'}", nms_iou=1.0)
    assert summary["records_with_proposals"] == 2
    got = read_jsonl(out)
    assert [r["id"] for r in got[0]["regions"]] == ["mine"] and "objectness" not in got[0]["regions"][0]
    assert got[0]["regions"][0]["score"] == got[0]["regions"][0]["caption_score"]
    for record, want in zip(got[1:], truth[1:]):
        assert sorted(r["box"] for r in record["regions"]) == sorted(g["box"] for g in want["regions"])
        for r in record["regions"]:
            assert r["objectness"] in [pytest.approx(0.5 + 0.1 * k) for k in range(len(want["regions"]))]
            assert r["score"] == r["objectness"]
    # a rerun finds the same regions and has nothing left to do
    again = run_predict("builtin", data, out, num_workers=0, progress=False,
                        proposals=f"file:{folder / 'proposals.jsonl'}", nms_iou=1.0)
    assert again["skipped"] == again["regions"] == summary["regions"]
    rerun = read_jsonl(out)
    for a, b in zip(rerun, got):
        for ra, rb in zip(a["regions"], b["regions"]):
            assert ra == rb, (ra, rb)
    assert rerun == got


def test_file_proposals_equal_to_the_ground_truth_give_its_predictions(scenes, tmp_path):
    """Proposals without scores are the ground-truth boxes themselves: the same captions, and score = caption
    score, as when the boxes are given."""
    folder, truth = scenes
    write_jsonl(tmp_path / "boxes.jsonl", [{"image": str(folder / r["image"]), "regions": r["regions"]}
                                           for r in truth])
    gt_out, prop_out = tmp_path / "gt.jsonl", tmp_path / "prop.jsonl"
    run_predict("builtin", _write(folder / "gt_in.jsonl", truth), gt_out, num_workers=0, progress=False)
    run_predict("builtin", _write(folder / "empty_in.jsonl", _strip(truth)), prop_out, num_workers=0,
                progress=False, proposals=f"file:{tmp_path / 'boxes.jsonl'}", nms_iou=1.0)
    for a, b in zip(read_jsonl(gt_out), read_jsonl(prop_out)):
        assert len(a["regions"]) == len(b["regions"])
        for ra, rb in zip(a["regions"], b["regions"]):  # in the file's order, ids their positions
            assert rb["box"] == ra["box"] and rb["caption"] == ra["caption"] and rb["score"] == ra["score"]


def test_predict_with_the_default_proposer_on_the_command_line(scenes, tmp_path, capsys):
    folder, truth = scenes
    data = _write(folder / "one.jsonl", _strip(truth[:1]))
    out = tmp_path / "dense.jsonl"
    assert main(["predict", "--data", str(data), "--out", str(out), "--proposals", "default", "--max-regions", "12",
                 "--num-workers", "0", "--no-progress", "--tasks", "caption"]) == 0
    summary = json.loads(capsys.readouterr().out)
    regions = read_jsonl(out)[0]["regions"]
    assert summary["records_with_proposals"] == 1 and 0 < len(regions) == summary["regions"] <= 12
    assert all(0 <= r["objectness"] <= 1 and r["score"] == r["objectness"]
               for r in regions)
    # the same settings resume; other proposal settings are refused while parts of the first run remain
    assert main(["predict", "--data", str(data), "--out", str(out), "--proposals", "default", "--max-regions", "12",
                 "--num-workers", "0", "--no-progress", "--tasks", "caption"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == len(regions)


def test_proposal_options_are_checked(scenes, tmp_path, capsys):
    folder, truth = scenes
    data = _write(folder / "opts.jsonl", _strip(truth[:1]))
    assert main(["predict", "--data", str(data), "--out", str(tmp_path / "o.jsonl"), "--max-regions", "5"]) == 2
    assert "used with --proposals" in capsys.readouterr().err
    with pytest.raises(InputError, match="--nms-iou"):
        run_predict("builtin", data, tmp_path / "o.jsonl", proposals="default", nms_iou=0.0, progress=False)
    with pytest.raises(InputError, match="record 1 .*hold nothing for image"):
        (tmp_path / "none.jsonl").write_text(json.dumps({"image": "other.png", "regions": []}) + "\n")
        run_predict("builtin", data, tmp_path / "o.jsonl", proposals=f"file:{tmp_path / 'none.jsonl'}",
                    progress=False)
    with pytest.raises(InputError, match="unknown proposal source"):
        run_predict("builtin", data, tmp_path / "o.jsonl", proposals="magic", progress=False)


def test_a_rerun_with_other_proposals_predicts_them(scenes, tmp_path):
    """A finished output is reused only for the same regions: other proposals (other boxes, other objectness)
    are predicted again, not taken from the earlier run."""
    folder, truth = scenes
    data = _write(folder / "rerun.jsonl", _strip(truth[:1]))
    out = tmp_path / "out.jsonl"
    for box, objectness in (([0, 0, 50, 50], 0.4), ([100, 100, 200, 200], 0.4), ([100, 100, 200, 200], 0.9)):
        write_jsonl(tmp_path / "p.jsonl", [{"image": str(folder / "s0.png"), "regions": [
            {"box": box, "score": objectness}]}])
        summary = run_predict("builtin", data, out, num_workers=0, progress=False, tasks=("caption",),
                              proposals=f"file:{tmp_path / 'p.jsonl'}")
        region = read_jsonl(out)[0]["regions"][0]
        assert summary["skipped"] == 0 and region["box"] == [float(v) for v in box]
        assert region["objectness"] == region["score"] == objectness
    again = run_predict("builtin", data, out, num_workers=0, progress=False, tasks=("caption",),
                        proposals=f"file:{tmp_path / 'p.jsonl'}")
    assert again["skipped"] == 1  # unchanged: reused


def test_finished_regions_are_reused_only_as_given(scenes, tmp_path):
    """A finished region is reused when its input is the same, box format and shape included; a polygon is
    matched by its extent without drawing it."""
    folder, _ = scenes
    data = folder / "formats.jsonl"
    out = tmp_path / "f.jsonl"
    regions = [{"box": [10, 10, 40, 40], "box_format": "xywh"}, {"polygon": [5, 5, 60, 5, 30, 50]}]
    write_jsonl(data, [{"image": "s0.png", "regions": regions}])
    first = run_predict("builtin", data, out, num_workers=0, progress=False, tasks=("caption",))
    again = run_predict("builtin", data, out, num_workers=0, progress=False, tasks=("caption",))
    assert first["skipped"] == 0 and again["skipped"] == 2
    assert read_jsonl(out)[0]["regions"][0]["box"] == [10.0, 10.0, 50.0, 50.0]
    write_jsonl(data, [{"image": "s0.png", "regions": [{"box": [10, 10, 40, 40]}, regions[1]]}])  # now xyxy
    third = run_predict("builtin", data, out, num_workers=0, progress=False, tasks=("caption",))
    assert third["skipped"] == 1 and read_jsonl(out)[0]["regions"][0]["box"] == [10.0, 10.0, 40.0, 40.0]


def test_proposals_are_computed_once_across_reruns(scenes, tmp_path, monkeypatch):
    """OUT.proposals.jsonl keeps each image's proposals: a rerun with the same settings reads them back (the
    proposer is not called), other settings compute them again."""
    from dynrefer.proposals.segments import SegmentProposals

    folder, truth = scenes
    calls = []
    original = SegmentProposals.__call__

    def counting(self, image):
        calls.append(str(image))
        return original(self, image)

    monkeypatch.setattr(SegmentProposals, "__call__", counting)
    data = _write(folder / "cached.jsonl", _strip(truth[:2]))
    out = tmp_path / "dense.jsonl"
    options = dict(num_workers=0, progress=False, tasks=("caption",), proposals="default")
    first = run_predict("builtin", data, out, max_regions=5, **options)
    assert len(calls) == 2 and (tmp_path / "dense.jsonl.proposals.jsonl").is_file()
    again = run_predict("builtin", data, out, max_regions=5, **options)
    assert len(calls) == 2 and again["skipped"] == first["regions"]  # read back, nothing predicted again
    run_predict("builtin", data, out, max_regions=4, **options)
    assert len(calls) == 4 and all(len(r["regions"]) <= 4 for r in read_jsonl(out))


def test_the_other_processes_of_a_gpu_run_read_the_proposals_cache(scenes, tmp_path, monkeypatch):
    """Under a multi-GPU launcher every process runs the command; the first fills OUT.proposals.jsonl before the
    others start. They read it (no proposer made or called, the file unchanged) instead of computing every image's
    proposals again; an image missing from it is computed, and nothing is written."""
    import dynrefer.proposals as proposals
    from dynrefer.proposals.fill import fill_regions

    folder, truth = scenes
    data = _strip(truth[:2])
    cache = tmp_path / "out.jsonl.proposals.jsonl"
    first = [dict(r) for r in data]
    fill_regions(first, folder, "default", max_regions=5, cache=cache)
    written = cache.read_bytes()
    made = []
    original = proposals.proposal_source

    def counting(spec, device=None):
        made.append(spec)
        return original(spec, device=device)

    monkeypatch.setattr(proposals, "proposal_source", counting)
    other = [dict(r) for r in data]
    assert fill_regions(other, folder, "default", max_regions=5, cache=cache, write_cache=False) == 2
    assert other == first and not made and cache.read_bytes() == written
    more = [dict(r) for r in data] + [{"image": data[0]["image"], "regions": []}]  # a second occurrence: not cached
    fill_regions(more, folder, "default", max_regions=5, cache=cache, write_cache=False)
    assert made == ["default"] and more[2]["regions"] == first[0]["regions"] and cache.read_bytes() == written
