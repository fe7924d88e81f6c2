"""dynrefer serve: the API returns exactly describe's record, batches concurrent requests into one engine call,
and answers every bad request with a 4xx JSON error naming the problem (the server keeps serving)."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra (make install puts it in .venv)")
from fastapi.testclient import TestClient  # noqa: E402

from dynrefer.cli import main  # noqa: E402
from dynrefer.inference.predictor import Predictor  # noqa: E402
from dynrefer.serve.app import create_app  # noqa: E402
from dynrefer.serve.batcher import Batcher  # noqa: E402
from dynrefer.serve.inputs import Limits  # noqa: E402

BOXES = [[10, 20, 200, 180], [300.5, 50, 550, 390]]


@pytest.fixture(scope="module")
def predictor():
    return Predictor("builtin")


@pytest.fixture(scope="module")
def client(predictor):
    app = create_app(predictor, limits=Limits(max_upload_bytes=2_000_000, max_pixels=1_000_000),
                     examples={"scene": b"\x89PNG-not-really"})
    with TestClient(app) as c:
        yield c


def _png(photo) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo.array).save(buf, format="PNG")
    return buf.getvalue()


def test_describe_is_the_records_describe_prints(client, photos, tmp_path, capsys):
    photo = photos["coffee"]
    data = _png(photo)
    path = tmp_path / "coffee.png"
    path.write_bytes(data)
    argv = ["describe", str(path), "--classes", "cup,table,plate"]
    for box in BOXES:
        argv += ["--box"] + [str(v) for v in box]
    assert main(argv) == 0
    want = json.loads(capsys.readouterr().out)
    want["image"] = "coffee.png"
    multipart = client.post("/v1/describe", files={"image": ("coffee.png", data, "image/png")},
                            data={"regions": json.dumps(BOXES), "classes": "cup,table,plate"})
    assert multipart.status_code == 200, multipart.text
    assert multipart.json() == want
    as_json = client.post("/v1/describe", json={"image": base64.b64encode(data).decode(), "filename": "coffee.png",
                                                "regions": BOXES, "classes": ["cup", "table", "plate"]})
    assert as_json.status_code == 200 and as_json.json() == want


def test_health_views_and_examples(client, photos):
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["device"] == "cpu" and health["model"]
    data = _png(photos["chelsea"])
    views = client.post("/v1/views", files={"image": ("cat.png", data, "image/png")},
                        data={"regions": json.dumps([[10, 10, 120, 90]])})
    assert views.status_code == 200, views.text
    region = views.json()["regions"][0]
    assert len(region["views"]) == 3 and len(region["candidates"]) == 10
    assert client.get("/v1/examples").json() == ["scene"]
    assert client.get("/v1/examples/scene").content.startswith(b"\x89PNG")
    assert client.get("/v1/examples/../../etc/passwd").status_code == 404
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/missing.js").status_code == 404
    assert client.get("/openapi.json").json()["paths"]["/v1/describe"]["post"]["requestBody"]


@pytest.mark.parametrize("request_kwargs, status, words", [
    ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
    ({"json": {"image": "%%%", "regions": [[1, 1, 5, 5]]}}, 400, "not valid base64"),
    ({"json": {"regions": [[1, 1, 5, 5]]}}, 400, "image must be a non-empty base64"),
    ({"json": {"image": base64.b64encode(b"plain text").decode(), "regions": [[1, 1, 5, 5]]}}, 415,
     "not a recognised image"),
    ({"content": b"x", "headers": {"Content-Type": "text/plain"}}, 415, "multipart/form-data or application/json"),
    ({"json": {"image": "IMAGE", "regions": [[5000, 5000, 6000, 6000]]}}, 422, "region 0"),
    ({"json": {"image": "IMAGE", "regions": []}}, 422, "non-empty list"),
    ({"json": {"image": "IMAGE", "regions": [[1, 1, 5, 5]], "tasks": "colour"}}, 422, "colour"),
    ({"json": {"image": "IMAGE", "regions": [[1, 1, 5, 5]], "num_views": 7}}, 422, "fuses 3 views"),
    ({"json": {"image": "IMAGE", "regions": [[1, 1, 5, 5]], "path": "/etc/passwd"}}, 422, "unknown field(s) path"),
    ({"json": {"image": "IMAGE", "regions": [{"mask": "/etc/passwd"}]}}, 400, "mask is not valid base64"),
    ({"json": {"image": "BIG", "regions": [[1, 1, 5, 5]]}}, 413, "pixel limit"),
])
def test_bad_requests_are_4xx_json_naming_the_problem(client, photos, request_kwargs, status, words):
    small = base64.b64encode(_png(photos["coffee"])).decode()
    big = io.BytesIO()
    Image.fromarray(np.zeros((1100, 1000, 3), np.uint8)).save(big, format="PNG")
    if "json" in request_kwargs:
        body = dict(request_kwargs["json"])
        body["image"] = {"IMAGE": small, "BIG": base64.b64encode(big.getvalue()).decode()}.get(body.get("image"),
                                                                                               body.get("image"))
        if body["image"] is None:
            del body["image"]
        request_kwargs = {"json": body}
    answer = client.post("/v1/describe", **request_kwargs)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]
    assert client.get("/v1/health").json()["status"] == "ok"  # still serving


def test_uploads_take_common_formats_only(client, photos):
    """A server opens PNG, JPEG, WebP, BMP, TIFF, GIF and PPM, not every format PIL knows (TGA, ICO, PCX...)."""
    for fmt, ok in (("JPEG", True), ("WEBP", True), ("BMP", True), ("TGA", False), ("ICO", False), ("PCX", False)):
        data = io.BytesIO()
        Image.fromarray(photos["coffee"].array[:64, :64]).save(data, format=fmt)
        answer = client.post("/v1/describe", files={"image": (f"x.{fmt.lower()}", data.getvalue(), "image/x")},
                             data={"regions": json.dumps([[1, 1, 30, 30]])})
        assert answer.status_code == (200 if ok else 415), (fmt, answer.text)
        if not ok:
            assert "not a recognised image" in answer.json()["error"]


def test_uploads_over_the_limit_are_refused_before_reading(client):
    answer = client.post("/v1/describe", content=b"x" * 3_200_000, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and "upload limit" in answer.json()["error"]


def test_the_api_key_guards_every_v1_call(predictor):
    with TestClient(create_app(predictor, api_key="s3cret")) as c:
        assert c.get("/v1/health").status_code == 401
        assert "API key" in c.get("/v1/health", headers={"Authorization": "Bearer wrong"}).json()["error"]
        assert c.get("/v1/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/").status_code == 200  # the page itself; its calls carry no key, the API refuses them


def test_concurrent_requests_share_one_engine_call():
    """Requests that arrive together (and have the same options) are merged up to max_batch_regions; other
    options form their own batch; a failing request fails alone."""
    calls = []

    def run_batch(key, items):
        calls.append((key, list(items)))
        if "bad" in items and len(items) > 1:
            raise ValueError("one bad item")
        if items == ["bad"]:
            raise ValueError("bad alone")
        return [f"{key}:{i}" for i in items]

    async def scenario():
        batcher = Batcher(run_batch, max_batch_regions=8, max_wait_ms=50)
        jobs = [batcher.submit(("a",), f"r{i}", 1) for i in range(6)] + [batcher.submit(("b",), "other", 1)]
        results = await asyncio.gather(*jobs)
        mixed = await asyncio.gather(batcher.submit(("a",), "ok", 1), batcher.submit(("a",), "bad", 1),
                                     return_exceptions=True)
        big = await asyncio.gather(*[batcher.submit(("a",), f"x{i}", 3) for i in range(4)])
        batcher.close()
        return results, mixed, big, list(batcher.batches)

    results, mixed, big, batches = asyncio.run(scenario())
    assert results == [f"('a',):r{i}" for i in range(6)] + ["('b',):other"]
    assert batches[:2] == [6, 1]  # six requests in one engine call, the other options in the next
    assert mixed[0] == "('a',):ok" and isinstance(mixed[1], ValueError) and str(mixed[1]) == "bad alone"
    assert big == [f"('a',):x{i}" for i in range(4)] and batches[-2:] == [2, 2]  # 3 + 3 regions <= 8


@pytest.mark.parametrize("body, status, words", [
    ('{"image": "IMAGE", "regions": [[1, 1, 5, 5]], "num_views": Infinity}', 422, "num_views"),
    ('{"image": "IMAGE", "regions": [[1, 1, 5, 5]], "tasks": 5}', 422, "tasks must be names"),
    ('{"image": "IMAGE", "regions": [[1, 1, 5, 5]], "all_scores": 1' + "0" * 5000 + "}", 400, "not valid JSON"),
    ('{"image": "IMAGE", "regions": ' + "[" * 100000 + "]" * 100000 + "}", 400, "not valid JSON"),
    ('{"image": "IMAGE", "regions": [{"rle": {"size": [400, 600], "counts": [18446744073709551616, 1]}}]}', 422,
     "malformed RLE"),
    ('{"image": "IMAGE", "regions": [{"mask": "MASK"}]}', 422, "the mask is not 600x400"),
    ('{"image": "IMAGE", "regions": ' + json.dumps([[1, 1, 5, 5]] * 1001) + "}", 413, "over the limit of 1000"),
    ('{"image": "BOMB", "regions": [[1, 1, 5, 5]]}', 413, "decompression-bomb"),
])
def test_odd_values_are_4xx_never_500(client, photos, body, status, words):
    """Found by a review: values of the right JSON shape but odd content (Infinity, huge integers, deep nesting,
    oversized RLE counts, a mask of another size, too many regions, a decompression bomb)."""
    small = base64.b64encode(_png(photos["coffee"])).decode()
    mask = io.BytesIO()
    Image.fromarray(np.zeros((12000, 12000), bool)).save(mask, format="PNG")  # 1-bit: small file, big image
    bomb = io.BytesIO()
    Image.new("1", (30000, 30000)).save(bomb, format="PNG")
    body = body.replace('"IMAGE"', json.dumps(small)).replace('"MASK"', json.dumps(
        base64.b64encode(mask.getvalue()).decode())).replace('"BOMB"', json.dumps(base64.b64encode(
            bomb.getvalue()).decode()))
    answer = client.post("/v1/describe", content=body.encode(), headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]


def test_the_app_serves_again_after_a_shutdown(predictor, photos):
    app = create_app(predictor)
    data = {"image": base64.b64encode(_png(photos["coffee"])).decode(), "regions": BOXES[:1]}
    for _ in range(2):  # a second lifespan (or event loop) starts the batcher again
        with TestClient(app) as c:
            assert c.post("/v1/describe", json=data).status_code == 200
