"""Reading one API request: the image (size limits before decoding), the regions and the ``describe`` options.
Every problem is a :class:`RequestError` with the HTTP status it deserves and a message naming the input."""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass

from ..errors import InputError

BOX_FORMATS = ("xyxy", "xywh")
# the image formats a client may upload (PIL reads ~40, several rarely used and rarely fuzzed: a server opens
# only these; the command line, reading the user's own files, takes every format)
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "PPM")


class RequestError(InputError):
    """A bad request: ``status`` 400 (malformed), 413 (too large), 415 (not an image) or 422 (bad regions or
    options)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Limits:
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_regions: int = 1000  # per request: more would hold every other client's requests behind one call


@dataclass
class DescribeJob:
    """A parsed request: the decoded image, its label, the region specs and the options."""

    image: object
    label: str | None
    regions: list
    tasks: tuple
    classes: tuple | None
    attributes: tuple | None
    num_views: int | None
    all_scores: bool
    box_format: str

    def key(self) -> tuple:
        """Requests with equal keys can share an engine call."""
        return (self.tasks, self.classes, self.attributes, self.num_views, self.all_scores, self.box_format)


def decode_base64(value, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise RequestError(400, f"{what} must be a non-empty base64 string")
    if value.startswith("data:") and "," in value:  # a data URL, as a browser makes one
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{what} is not valid base64") from None


def load_image(data: bytes, label: str, limits: Limits):
    """The (3, H, W) uint8 image of an upload: its size checked from the header before decoding."""

    from ..errors import ImageLoadError
    from ..images import load_image_bytes

    if len(data) > limits.max_upload_bytes:
        raise RequestError(413, f"image '{label}' is {len(data)} bytes, over the {limits.max_upload_bytes}-byte limit")
    width, height = image_header(data, label, 415)
    if width * height > limits.max_pixels:
        raise RequestError(413, f"image '{label}' is {width}x{height} = {width * height} pixels, over the "
                                f"{limits.max_pixels}-pixel limit")
    try:
        return load_image_bytes(data, label, formats=UPLOAD_FORMATS)
    except ImageLoadError as exc:
        raise RequestError(415, str(exc)) from None


def image_header(data: bytes, label: str, status: int) -> tuple[int, int]:
    """``(width, height)`` from an encoded image's header, nothing decoded (``status``: the answer to data that
    is not an image); an image over PIL's decompression-bomb limit is 413."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limits here decide
            with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as header:
                return header.size
    except Image.DecompressionBombError:
        raise RequestError(413, f"image '{label}' is larger than PIL's decompression-bomb limit") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise RequestError(status, f"image '{label}' is not a recognised image file") from None


def parse_json(text, what: str):
    """JSON text → value; malformed (bad syntax, integers over Python's 4300 digits, nesting too deep) is 400."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise RequestError(400, f"{what} is not valid JSON ({getattr(exc, 'msg', type(exc).__name__)})") from None


def _json_field(value, what: str):
    return parse_json(value, what) if isinstance(value, str) else value


def _names(value, what: str) -> tuple | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError(422, f"{what} must be a list of names or a comma-separated string")
    return tuple(value)


def _flag(value, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no", ""):
        return value.lower() in ("true", "1", "yes")
    raise RequestError(422, f"{what} must be true or false, got {value!r}")


def _regions(value, image_size, max_regions: int = 1000) -> list:
    """Region specs as ``describe`` takes them; masks given as base64 PNGs are decoded here (a client never
    names a server-side file)."""
    from ..images import load_image_bytes

    value = _json_field(value, "regions")
    if not isinstance(value, list) or not value:
        raise RequestError(422, "regions must be a non-empty list of region specs (boxes, {'bbox'}, {'polygon'}, "
                                "{'mask': <base64 PNG or RLE>})")
    if len(value) > max_regions:
        raise RequestError(413, f"{len(value)} regions in one request, over the limit of {max_regions}")
    out = []
    for i, spec in enumerate(value):
        if isinstance(spec, dict) and isinstance(spec.get("mask"), str):
            data = decode_base64(spec["mask"], f"region {i}: mask")
            if image_header(data, f"region {i} mask", 422) != tuple(image_size):  # before decoding it
                raise RequestError(422, f"region {i}: the mask is not {image_size[0]}x{image_size[1]} (the image's "
                                        "size)")
            try:
                spec = {**spec, "mask": load_image_bytes(data, f"region {i} mask", mask=True, formats=UPLOAD_FORMATS)}
            except InputError as exc:
                raise RequestError(422, str(exc)) from None
        elif not isinstance(spec, (list, dict)):
            raise RequestError(422, f"region {i}: expected a box [x1, y1, x2, y2] or an object, got "
                                    f"{type(spec).__name__}")
        out.append(spec)
    return out


def describe_job(fields: dict, data: bytes, label: str | None, limits: Limits, model) -> DescribeJob:
    """Check a ``/v1/describe`` request (``fields``: the form fields or JSON keys but the image) against
    ``model``; raises :class:`RequestError`."""
    from ..inference.engine import check_tasks
    from ..regions import parse_regions

    unknown = sorted(set(fields) - {"regions", "tasks", "classes", "attributes", "num_views", "all_scores",
                                    "box_format"})
    if unknown:
        raise RequestError(422, f"unknown field(s) {', '.join(unknown)}")
    image = load_image(data, label or "upload", limits)
    size = (int(image.shape[2]), int(image.shape[1]))
    box_format = fields.get("box_format") or "xyxy"
    if box_format not in BOX_FORMATS:
        raise RequestError(422, f"box_format must be xyxy or xywh, got {box_format!r}")
    num_views = fields.get("num_views")
    if num_views not in (None, ""):
        try:
            num_views = int(num_views)
        except (TypeError, ValueError, OverflowError):
            raise RequestError(422, f"num_views must be an integer, got {num_views!r}") from None
        if num_views != model.config.views.num_views:
            raise RequestError(422, f"this model fuses {model.config.views.num_views} views; num_views={num_views} "
                                    "is not possible")
    try:
        regions = _regions(fields.get("regions"), size, limits.max_regions)
        parse_regions(regions, size, box_format=box_format)  # every region checked now: 422 naming it
        tasks = tuple(check_tasks(fields.get("tasks") or "caption,tags,attributes,category"))
    except RequestError:
        raise
    except InputError as exc:
        raise RequestError(422, str(exc)) from None
    classes, attributes = _names(fields.get("classes"), "classes"), _names(fields.get("attributes"), "attributes")
    for name, vocab in (("classes", classes), ("attributes", attributes)):
        if vocab is not None and not all(vocab):
            raise RequestError(422, f"{name} holds an empty name")
    return DescribeJob(image, label, regions, tasks, classes, attributes, num_views or None,
                       _flag(fields.get("all_scores", False), "all_scores"), box_format)
