"""RefCOCOg converter (refs(umd).p + instances.json) and the restricted unpickler."""

from __future__ import annotations

import collections
import copy
import json
import os
import pickle

import numpy as np
import pytest
from prepare_fixtures import dump, read_jsonl, refcocog_instances, refcocog_refs, write_refcocog
from pycocotools import mask as mask_utils

from dynrefer.errors import InputError
from dynrefer.prepare import convert_refcocog, load_plain_pickle, loads_plain


class Custom:
    def __init__(self):
        self.x = 1


class Payload:
    """Runs os.mkdir while being unpickled by an unrestricted unpickler."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode on numpy 2
def test_refcocog_records(tmp_path):
    src = write_refcocog(tmp_path / "refcocog")
    out = tmp_path / "out" / "refcocog.jsonl"
    summary = convert_refcocog(src, out, tagger="simple")
    assert summary["images"] == {"train": 1, "val": 1, "test": 1, "total": 3}
    assert summary["regions"] == {"train": 2, "val": 1, "test": 1, "total": 4}
    assert summary["tagger"] == "simple" and summary["dropped"] == {}
    records = read_jsonl(out)
    assert [(r["image"], r["split"], r["width"], r["height"]) for r in records] == [
        ("COCO_train2014_000000581857.jpg", "train", 640, 427),
        ("COCO_train2014_000000000009.jpg", "val", 640, 480),
        ("COCO_train2014_000000000025.jpg", "test", 640, 426),
    ]
    r0, r1 = records[0]["regions"]
    assert r0["id"] == 0 and r0["box"] == [103.0, 300.0, 342.0, 378.0]
    assert r0["captions"] == ["the lady with the blue shirt", "a woman in blue smiling"]
    assert r0["tags"] == ["lady", "blue", "shirt", "woman", "smiling"]
    assert r0["category"] == "person"
    assert r1["id"] == 1 and r1["box"] == [10.5, 20.0, 60.5, 100.0]
    assert r1["captions"] == ["man left wearing a hat"]  # no 'sent': normalised 'raw'
    assert r1["tags"] == ["man", "left", "wearing", "hat"] and r1["category"] == "person"
    dog = records[1]["regions"][0]
    assert dog == {
        **dog,
        "id": 5,
        "box": [0.0, 0.0, 30.0, 40.0],
        "captions": ["the brown dog"],
        "tags": ["brown", "dog"],
        "category": "dog",
    }
    zero = records[2]["regions"][0]
    assert zero["id"] == 6 and zero["box"] == [5.25, 5.0, 5.25, 15.0]  # zero width kept
    # masks: the annotation polygons as compressed RLE of the image size
    m = mask_utils.decode({"size": r0["mask"]["size"], "counts": r0["mask"]["counts"].encode()})
    assert (
        m.shape == (427, 640)
        and m.sum()
        == mask_utils.area(
            mask_utils.frPyObjects(refcocog_instances()["annotations"][0]["segmentation"], 427, 640)
        ).sum()
    )
    ys, xs = np.nonzero(m)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (103, 342, 300, 378)


def test_refcocog_caption_normalisation_exact(tmp_path):
    # SPEC §1.5: lower case, .!"()*#:;~ -> space, whitespace collapsed
    refs = refcocog_refs()
    refs[1]["sentences"] = [{"raw": 'Man (LEFT) wearing a "hat"!  ;~ #1*', "sent_id": 2, "tokens": []}]
    src = write_refcocog(tmp_path / "r", refs=refs)
    convert_refcocog(src, tmp_path / "o.jsonl", tagger="simple", masks=False)
    region = read_jsonl(tmp_path / "o.jsonl")[0]["regions"][1]
    assert region["captions"] == ["man left wearing a hat 1"]
    assert region["tags"] == ["man", "left", "wearing", "hat"]
    assert "mask" not in region


def test_refcocog_prefix_and_google_refs(tmp_path):
    src = write_refcocog(tmp_path / "r")
    refs = refcocog_refs()[:1]
    with open(src / "refs(google).p", "wb") as fh:
        pickle.dump(refs, fh, protocol=4)
    summary = convert_refcocog(
        src, tmp_path / "o.jsonl", refs="refs(google).p", image_prefix="train2014", tagger="simple"
    )
    assert summary["regions"]["total"] == 1
    assert read_jsonl(tmp_path / "o.jsonl")[0]["image"] == "train2014/COCO_train2014_000000581857.jpg"


# ----------------------------------------------------------------------------- unpickler
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_unpickler_accepts_plain_data(protocol):
    data = [{"a": 1, "b": [1.5, -2, True, False, None], "c": ("x", "ü")}, [], {}, "str", 10**30]
    assert loads_plain(pickle.dumps(data, protocol=protocol)) == data


def test_plain_unpickler_sets_bytes_and_python2_strings():
    assert loads_plain(pickle.dumps({1, 2}, protocol=4)) == {1, 2}
    assert loads_plain(pickle.dumps(frozenset({3}), protocol=5)) == frozenset({3})
    assert loads_plain(pickle.dumps(b"\x00\xff", protocol=4)) == b"\x00\xff"
    # a Python 2 str (SHORT_BINSTRING) holding UTF-8 loads as str
    assert loads_plain(b"\x80\x02U\x06caf\xc3\xa9 q\x00.") == "café "


@pytest.mark.parametrize(
    "obj",
    [collections.OrderedDict(a=1), Custom(), [1, {"x": Custom()}], {1, 2}],
    ids=["OrderedDict", "custom-class", "nested-class", "set-protocol-2"],
)
def test_plain_unpickler_refuses_classes(tmp_path, obj):
    path = tmp_path / "refs(umd).p"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(InputError, match=r"refusing to load '.*refs\(umd\)\.p'.*references"):
        load_plain_pickle(path)


def test_plain_unpickler_never_calls_anything(tmp_path):
    target = tmp_path / "pwned"
    src = write_refcocog(tmp_path / "r")
    (src / "refs(umd).p").write_bytes(pickle.dumps([Payload(str(target))], protocol=2))
    with pytest.raises(
        InputError, match=r"refs\(umd\)\.p.*posix\.mkdir|refs\(umd\)\.p.*os\.mkdir|refs\(umd\)\.p.*nt\.mkdir"
    ):
        convert_refcocog(src, tmp_path / "o.jsonl", tagger="simple")
    assert not target.exists() and not (tmp_path / "o.jsonl").exists()


# ----------------------------------------------------------------------------- malformed input
def _nan_box():
    inst = refcocog_instances()
    inst["annotations"][2]["bbox"] = [0, 0, float("nan"), 4]
    return None, inst


def _neg_box():
    inst = refcocog_instances()
    inst["annotations"][2]["bbox"] = [0, 0, -3, 4]
    return None, inst


def _refs(mutate):
    refs = copy.deepcopy(refcocog_refs())
    mutate(refs)
    return refs, None


def _inst(mutate):
    inst = refcocog_instances()
    mutate(inst)
    return None, inst


BAD = {
    "unknown-ann": (_refs(lambda r: r[2].update(ann_id=424242)), r"refs\(umd\)\.p': ref 5 refers to annotation 424242"),
    "image-mismatch": (_refs(lambda r: r[2].update(image_id=25)), r"ref 5 is on image 25 but its annotation 7"),
    "unknown-split": (_refs(lambda r: r[0].update(split="testA")), r"ref 0: unknown split 'testA'"),
    "list-ref-id": (_refs(lambda r: r[1].update(ref_id=[1])), r"refs\[1\] 'ref_id' must be a number or a string"),
    "no-sentences": (_refs(lambda r: r[3].pop("sentences")), r"refs\[3\] has no 'sentences' key"),
    "sentence-without-text": (
        _refs(lambda r: r[3].update(sentences=[{"sent_id": 1}])),
        r"ref 6 sentences\[0\] has no 'sent' or 'raw'",
    ),
    "not-a-list": (({"refs": []}, None), r"expected a list of refs, got a dict"),
    "duplicate-ref": (
        _refs(lambda r: r.append(dict(r[0]))),
        r"region id 0 appears twice in image 'COCO_train2014_000000581857.jpg'",
    ),
    "nan-box": (_nan_box(), r"instances\.json': annotation 7: box has a NaN"),
    "negative-box": (_neg_box(), r"instances\.json': annotation 7: box has a negative width"),
    "ann-without-bbox": (
        _inst(lambda i: i["annotations"][0].pop("bbox")),
        r"instances\.json': 'annotations'\[0\] has no 'bbox' key",
    ),
    "ann-unknown-image": (
        _inst(lambda i: i["annotations"][3].update(image_id=5)),
        r"annotation 8 refers to image 5, which is not in 'images'",
    ),
    "no-images": (_inst(lambda i: i.pop("images")), r"instances\.json': the top level has no 'images' key"),
    "bad-size": (_inst(lambda i: i["images"][1].update(width=0)), r"image 9 'width' must be a positive whole number"),
    "bad-polygon": (
        _inst(lambda i: i["annotations"][2].update(segmentation=[[1, 2, 3]])),
        r"annotation 7: malformed segmentation",
    ),
    "unknown-category": (
        _inst(lambda i: i["annotations"][2].update(category_id=99)),
        r"annotation 7 has category_id 99",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_refcocog_malformed(tmp_path, case):
    (refs, instances), pattern = BAD[case]
    src = tmp_path / "r"
    if isinstance(refs, dict):
        write_refcocog(src)
        (src / "refs(umd).p").write_bytes(pickle.dumps(refs, protocol=2))
    else:
        write_refcocog(src, refs=refs, instances=instances)
    with pytest.raises(InputError, match=pattern):
        convert_refcocog(src, tmp_path / "o.jsonl", tagger="simple")
    assert not (tmp_path / "o.jsonl").exists()


def test_refcocog_bad_files(tmp_path):
    src = write_refcocog(tmp_path / "r")
    out = tmp_path / "o.jsonl"
    data = (src / "refs(umd).p").read_bytes()
    (src / "refs(umd).p").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cannot read '.*refs\(umd\)\.p'.*not a valid pickle"):
        convert_refcocog(src, out, tagger="simple")
    (src / "refs(umd).p").write_bytes(b"")
    with pytest.raises(InputError, match=r"refs\(umd\)\.p.*empty"):
        convert_refcocog(src, out, tagger="simple")
    (src / "refs(umd).p").unlink()
    with pytest.raises(InputError, match=r"cannot read '.*refs\(umd\)\.p' \(RefCOCOg refs pickle\): no such file"):
        convert_refcocog(src, out, tagger="simple")
    write_refcocog(src)
    text = json.dumps(refcocog_instances())
    (src / "instances.json").write_text(text[:-40])
    with pytest.raises(InputError, match=r"instances\.json' \(RefCOCOg instances\): truncated JSON"):
        convert_refcocog(src, out, tagger="simple")
    (src / "instances.json").write_text("{'images': []}")
    with pytest.raises(InputError, match=r"instances\.json' \(RefCOCOg instances\): not valid JSON"):
        convert_refcocog(src, out, tagger="simple")
    dump(src / "instances.json", [1, 2])
    with pytest.raises(InputError, match=r"instances\.json': the top level must be a JSON object, got array"):
        convert_refcocog(src, out, tagger="simple")
    with pytest.raises(InputError, match=r"not a directory"):
        convert_refcocog(src / "instances.json", out, tagger="simple")
    assert not out.exists()
