"""The FastAPI application of ``dynrefer serve``: ``/v1/health``, ``/v1/describe``, ``/v1/views``, the OpenAPI
page ``/docs`` and the web page ``/``.

Bad requests get a 4xx JSON ``{"error": "<what and where>"}`` (400 malformed, 401 without the API key, 413 too
large, 415 not an image, 422 bad regions or options); the server keeps serving after each.
"""

from __future__ import annotations

import json
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InputError
from .batcher import Batcher
from .inputs import DescribeJob, Limits, RequestError, decode_base64, describe_job, parse_json
from .inputs import load_image as load_upload

STATIC = Path(__file__).resolve().parent / "static"
_OPTIONS = {
    "regions": {"description": "region specs as JSON: [x1, y1, x2, y2], {'bbox'}, {'polygon'}, {'mask': base64 PNG "
                               "or RLE}", "type": "string"},
    "tasks": {"type": "string", "description": "comma-separated: caption,tags,attributes,category"},
    "classes": {"type": "string"}, "attributes": {"type": "string"}, "num_views": {"type": "integer"},
    "all_scores": {"type": "boolean"}, "box_format": {"type": "string", "enum": ["xyxy", "xywh"]},
}
_JSON_OPTIONS = {**_OPTIONS, "regions": {"type": "array", "items": {}}}


def _body_schema(extra_json: dict) -> dict:
    multipart = {"type": "object", "required": ["image", "regions"],
                 "properties": {"image": {"type": "string", "format": "binary"}, **_OPTIONS}}
    plain = {"type": "object", "required": ["image", "regions"],
             "properties": {"image": {"type": "string", "description": "the image file, base64"}, **extra_json}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": multipart},
                                                          "application/json": {"schema": plain}}}}


_ERROR = {"description": "bad request", "content": {"application/json": {"schema": {
    "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}}
_RESPONSES = {code: _ERROR for code in (400, 401, 413, 415, 422)}


def create_app(predictor, *, limits: Limits | None = None, api_key: str | None = None, max_batch_regions: int = 64,
               max_wait_ms: float = 10.0, examples: dict | None = None) -> FastAPI:
    """The app over a loaded :class:`~dynrefer.inference.predictor.Predictor`. ``examples``: name → PNG bytes
    offered by the web page (``GET /v1/examples/{name}``)."""
    from ..model.io import model_identity

    limits = limits or Limits()
    examples = dict(examples or {})
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        app.state.batcher.close()

    app = FastAPI(title="dynrefer", version=_version(), lifespan=lifespan, description="Region captioning, tags, "
                  "attributes and categories (DynRefer). Bad requests get a 4xx JSON {\"error\": ...}.")
    identity = model_identity(predictor.model)

    def run_batch(key, jobs: list[DescribeJob]) -> list[dict]:
        first = jobs[0]
        return predictor.describe_many([j.image for j in jobs], [j.regions for j in jobs], tasks=first.tasks,
                                       classes=list(first.classes) if first.classes else None,
                                       attributes=list(first.attributes) if first.attributes else None,
                                       all_scores=first.all_scores, box_format=first.box_format,
                                       image_labels=[j.label for j in jobs])

    app.state.batcher = Batcher(run_batch, max_batch_regions=max_batch_regions, max_wait_ms=max_wait_ms)

    if api_key:  # a middleware only when there is a key to check (each one costs every request a little)

        @app.middleware("http")
        async def authorise(request: Request, call_next):
            if request.url.path.startswith("/v1/"):
                given = request.headers.get("authorization", "")
                if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                    return JSONResponse({"error": "missing or wrong API key: send 'Authorization: Bearer <key>'"},
                                        401)
            return await call_next(request)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        return JSONResponse({"error": str(exc)}, exc.status)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError):  # found while describing: bad regions or options
        return JSONResponse({"error": str(exc)}, 422)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": "; ".join(_where(e) for e in exc.errors()) or "invalid request"}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # a bug: one line, never a traceback
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, 500)

    @app.get("/v1/health", responses=_RESPONSES)
    async def health() -> dict:
        """The server's state, the model's identity and its device."""
        return {"status": "ok", "model": identity, "device": str(predictor.device)}

    @app.post("/v1/describe", responses=_RESPONSES, openapi_extra=_body_schema(_JSON_OPTIONS))
    async def describe(request: Request) -> dict:
        """Exactly the record ``dynrefer describe`` prints for the same image, regions and options."""
        batcher = app.state.batcher
        batcher.expect()  # a batch being gathered waits for this request while it is read and decoded
        try:
            fields, data, label = await _read_request(request, limits)
            job = await batcher.prepare(describe_job, fields, data, label, limits, predictor.model)
        except BaseException:
            batcher.unexpect()
            raise
        record = await batcher.submit(job.key(), job, len(job.regions), expected=True)
        return Response(json.dumps(record), media_type="application/json")  # as describe prints it

    @app.post("/v1/views", responses=_RESPONSES, openapi_extra=_body_schema({
        "regions": {"type": "array", "items": {}}, "box_format": _OPTIONS["box_format"],
        "num_views": {"type": "integer"}, "size": {"type": "integer"}}))
    async def views(request: Request) -> dict:
        """The ``dynrefer views`` record (the views of each region, the greedy search's candidates)."""
        fields, data, label = await _read_request(request, limits)
        return await run_in_threadpool(_views, fields, data, label, limits, predictor.model)

    @app.get("/v1/examples", responses=_RESPONSES)
    async def example_names() -> list:
        """The example images the web page offers."""
        return sorted(examples)

    @app.get("/v1/examples/{name}", responses={**_RESPONSES, 404: _ERROR}, response_class=Response)
    async def example(name: str):
        if name not in examples:
            return JSONResponse({"error": f"no example named {name!r}; see /v1/examples"}, 404)
        return Response(examples[name], media_type="image/png")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        path = STATIC / name
        if name not in {p.name for p in STATIC.iterdir()}:  # only the page's own files
            return JSONResponse({"error": f"no static file {name!r}"}, 404)
        return FileResponse(path)

    return app


def _version() -> str:
    from .. import __version__

    return __version__


def _where(error: dict) -> str:
    loc = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
    return f"{loc}: {error.get('msg', 'invalid')}" if loc else str(error.get("msg", "invalid"))


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes (a declared length first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request is {declared} bytes, over the {limit}-byte upload limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request is over the {limit}-byte upload limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_request(request: Request, limits: Limits) -> tuple[dict, bytes, str | None]:
    """``(fields, image bytes, image label)`` of a multipart or JSON request."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await _read_body(request, limits.max_upload_bytes + 1024 * 1024)
    if kind == "application/json":
        payload = parse_json(body, "the body")
        if not isinstance(payload, dict):
            raise RequestError(400, "the JSON body must be an object with 'image' and 'regions'")
        fields = dict(payload)
        data = decode_base64(fields.pop("image", None), "image")
        label = fields.pop("filename", None)
        return fields, data, label if isinstance(label, str) else None
    if kind == "multipart/form-data":
        request._body = body  # Starlette parses the form from the body read above
        try:
            form = await request.form()
        except Exception as exc:  # noqa: BLE001 - a malformed multipart body: the client's error
            raise RequestError(400, f"malformed multipart body ({type(exc).__name__})") from None
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise RequestError(400, "multipart field 'image' must be a file")
        data = await upload.read()
        fields = {k: v for k, v in form.items() if k != "image"}
        if any(not isinstance(v, str) for v in fields.values()):
            raise RequestError(400, "only the 'image' field may be a file")
        return fields, data, upload.filename
    raise RequestError(415, f"send multipart/form-data or application/json, not {kind or 'no content type'!r}")


def _views(fields: dict, data: bytes, label, limits: Limits, model) -> dict:
    from ..view_records import run_views
    from .inputs import _regions

    unknown = sorted(set(fields) - {"regions", "box_format", "num_views", "size"})
    if unknown:
        raise RequestError(422, f"unknown field(s) {', '.join(unknown)}")
    image = load_upload(data, label or "upload", limits)
    size = (int(image.shape[2]), int(image.shape[1]))
    regions = _regions(fields.get("regions"), size, limits.max_regions)
    if not all(isinstance(r, list) for r in regions):
        raise RequestError(422, "views takes boxes [x1, y1, x2, y2]")
    try:  # dynrefer views' defaults: greedy, 3 views of 224 pixels, the official pHash
        num_views, side = int(fields.get("num_views") or 3), int(fields.get("size") or 224)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(422, "num_views and size must be integers") from None
    if not (1 <= num_views <= 11 and 8 <= side <= 4096):
        raise RequestError(422, f"num_views must be 1..11 and size 8..4096, got {num_views} and {side}")
    try:
        record = run_views(image, regions, box_format=fields.get("box_format") or "xyxy", num_views=num_views,
                           size=side)
    except InputError as exc:
        raise RequestError(422, str(exc)) from None
    record["image"] = label
    return record
