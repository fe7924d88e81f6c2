"""The batched engine: many images × many regions in one pass equal one region at a time;
identical crops are encoded once; encoder chunking and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

import dynrefer
from dynrefer.errors import InputError
from dynrefer.inference.engine import Engine, plan_views
from dynrefer.inference.predictor import Predictor
from dynrefer.model.config import tiny_config
from dynrefer.regions import parse_regions

CLASSES = ["circle", "square", "star"]
ATTRIBUTES = ["color:red", "color:blue/navy", "pattern:dotted"]


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return Predictor(tiny_model_dir)


@pytest.fixture(scope="module")
def images():
    return [data.coffee(), data.astronaut()[:300, :420], data.chelsea()]


def _close(a: dict, b: dict):
    assert a["views"] == b["views"] and a["box"] == b["box"]
    assert a["caption"] == b["caption"]
    assert abs(a["caption_score"] - b["caption_score"]) < 1e-4
    for key in ("attributes", "categories", "tags"):
        got = dict(a[key])
        assert set(got) == {n for n, _ in b[key]}
        assert max(abs(got[n] - s) for n, s in b[key]) < 1e-4


def test_many_images_in_one_pass_equal_one_region_at_a_time(predictor, images):
    rng = np.random.default_rng(3)
    regions = []
    for img in images:
        h, w = img.shape[:2]
        boxes = []
        for _ in range(5):
            x1, y1 = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
            boxes.append([float(x1), float(y1), float(rng.uniform(x1 + 2, w)), float(rng.uniform(y1 + 2, h))])
        boxes.append([0, 0, w, h])
        regions.append(boxes)
    together = predictor.describe_many(images, regions, all_scores=True)
    assert [len(r["regions"]) for r in together] == [6, 6, 6]
    for img, boxes, record in zip(images, regions, together):
        assert (record["width"], record["height"]) == (img.shape[1], img.shape[0])
        for box, mine in zip(boxes, record["regions"]):
            _close(mine, predictor.describe(img, [box], all_scores=True)["regions"][0])
    # the describe() function with several images is the same pass
    again = dynrefer.describe(images, regions, model=predictor.model, all_scores=True)
    assert [[r["caption"] for r in rec["regions"]] for rec in again] == [
        [r["caption"] for r in rec["regions"]] for rec in together]


def test_identical_crops_are_encoded_once(predictor, images):
    img = torch.from_numpy(images[0]).permute(2, 0, 1).contiguous()
    boxes = [[10, 20, 200, 180], [300, 100, 380, 160], [10, 20, 200, 180], [0, 0, 600, 400], [50, 60, 70, 90]]
    parsed = [parse_regions(boxes, (600, 400))]
    plan = plan_views([img], [[r.box for r in parsed[0]]], num_views=3, size=32, policy="fixed", ts=[0.0, 0.5, 1.0])
    assert plan.total_crops == 15
    # t = 1 (the whole image) is shared by all five regions, the repeated box adds nothing, and the
    # whole-image region's three views are all the full image: 3 distinct regions × 2 + 1
    assert plan.unique_crops == 3 * 2 + 1
    np.testing.assert_array_equal(plan.crops[plan.view_index].reshape(5, 3, 4)[:, 2], [[0, 0, 600, 400]] * 5)
    seen = []
    hook = predictor.model.encoder.register_forward_hook(lambda m, i, o: seen.append(int(i[0].shape[0])))
    try:
        predictor.describe(img, boxes, policy="fixed", ts=[0.0, 0.5, 1.0], tasks="category")
    finally:
        hook.remove()
    assert seen == [7]


def test_encoder_chunks_equal_one_call(images):
    torch.manual_seed(0)
    model = dynrefer.DynRefer(tiny_config(), tags=["red"], categories=CLASSES, attributes=ATTRIBUTES)
    boxes = [[[10, 20, 200, 180], [300, 100, 380, 160], [0, 0, 100, 100]], [[5, 5, 60, 60]]]
    one = Predictor(model, encoder_batch_size=256).describe_many(images[:2], boxes, tasks="category", all_scores=True)
    chunked = Predictor(model, encoder_batch_size=2).describe_many(images[:2], boxes, tasks="category",
                                                                   all_scores=True)
    for a, b in zip(one, chunked):
        for ra, rb in zip(a["regions"], b["regions"]):
            assert max(abs(x[1] - y[1]) for x, y in zip(ra["categories"], rb["categories"])) < 1e-5


def test_default_encoder_chunk_is_sized_for_the_device():
    from types import SimpleNamespace

    from dynrefer.inference.engine import CPU_ENCODER_BUDGET, auto_encoder_batch_size

    def fake(size, patch, width):
        return SimpleNamespace(config=SimpleNamespace(views=SimpleNamespace(size=size)),
                               encoder=SimpleNamespace(patch_size=patch, width=width))

    assert auto_encoder_batch_size(fake(224, 16, 768), "cpu") == 8  # ViT-B/16: 197 tokens x 768
    assert auto_encoder_batch_size(fake(64, 8, 128), "cpu") == 150  # built-in: 65 tokens x 128
    assert auto_encoder_batch_size(fake(16, 4, 16), "cpu") == 256  # capped
    assert auto_encoder_batch_size(fake(448, 14, 1408), "cpu") == 1  # EVA-g at 448 px: one view at a time
    assert auto_encoder_batch_size(fake(224, 16, 768), "cuda") == 256
    assert 8 * 197 * 768 <= CPU_ENCODER_BUDGET < 9 * 197 * 768
    torch.manual_seed(0)
    model = dynrefer.DynRefer(tiny_config(), tags=["red"], categories=CLASSES, attributes=ATTRIBUTES)
    assert Engine(model).encoder_batch_size == auto_encoder_batch_size(model, "cpu")
    assert Engine(model, encoder_batch_size=3).encoder_batch_size == 3


def test_empty_and_bad_input(predictor, images):
    records = predictor.describe_many(images[:2], [[], [[1, 1, 30, 30]]], tasks="category")
    assert records[0]["regions"] == [] and len(records[1]["regions"]) == 1
    with pytest.raises(InputError, match="2 images but 1 region lists"):
        predictor.describe_many(images[:2], [[[1, 1, 5, 5]]])
    with pytest.raises(InputError, match="autocast dtype"):
        Engine(predictor.model, dtype="float8")
    with pytest.raises(InputError, match="encoder_batch_size"):
        Engine(predictor.model, encoder_batch_size=0)
    with pytest.raises(InputError, match="classes is empty"):
        predictor.describe(images[0], [[1, 1, 30, 30]], tasks="category", classes=[])
    with pytest.raises(InputError, match="attributes is empty"):
        predictor.describe(images[0], [[1, 1, 30, 30]], tasks="caption,attributes", attributes=iter([]))
    # an empty vocabulary of a task not asked for is no error
    record = predictor.describe(images[0], [[1, 1, 30, 30]], tasks="category", attributes=[], classes=iter(CLASSES[:2]))
    assert record["regions"][0]["category"][0] in CLASSES[:2]


def test_bfloat16_autocast_close_to_float32(images):
    torch.manual_seed(0)
    model = dynrefer.DynRefer(tiny_config(), tags=["red"], categories=CLASSES, attributes=ATTRIBUTES)
    boxes = [[[10, 20, 200, 180], [300, 100, 380, 160]]]
    full = Predictor(model).describe_many(images[:1], boxes, tasks="category", all_scores=True)[0]
    half = Predictor(model, dtype="bfloat16").describe_many(images[:1], boxes, tasks="category", all_scores=True)[0]
    for a, b in zip(full["regions"], half["regions"]):
        assert max(abs(x[1] - y[1]) for x, y in zip(a["categories"], b["categories"])) < 0.05
