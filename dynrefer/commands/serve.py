"""``dynrefer serve``: the HTTP API and the web page over one loaded model (needs the ``serve`` extra).

    dynrefer serve [--model builtin|DIR] [--host 127.0.0.1] [--port 8000] [--max-batch-regions N]
                   [--max-wait-ms M] [--max-upload-mb 20] [--max-pixels P] [--api-key KEY] [--device D]
"""

from __future__ import annotations

import os

from ..errors import InputError


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="an HTTP API and a web page (batched across requests)",
                              description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin", help="'builtin' (default) or a model folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-regions", type=int, default=64, help="regions per engine call (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long a request waits for others to share its engine call (default 10)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload (default 20 MB)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image (default 40 M pixels)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $DYNREFER_API_KEY, else none)")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N, mps or auto")
    p.add_argument("--dtype", default=None, choices=("auto", "bfloat16", "float16"), help="autocast precision")
    p.set_defaults(func=run)


def build(args):
    """The app for parsed ``args`` (the model loaded once)."""
    from ..inference.predictor import Predictor
    from ..serve.app import create_app
    from ..serve.inputs import Limits
    from .describe import resolve_device

    if not 1 <= args.port <= 65535:
        raise InputError(f"--port must be 1..65535, got {args.port}")
    for name in ("max_batch_regions", "max_pixels"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_upload_mb <= 0 or args.max_wait_ms < 0:
        raise InputError("--max-upload-mb must be positive and --max-wait-ms not negative")
    predictor = Predictor(args.model, device=resolve_device(args.device), dtype=args.dtype)
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels)
    return create_app(predictor, limits=limits, api_key=args.api_key or os.environ.get("DYNREFER_API_KEY") or None,
                      max_batch_regions=args.max_batch_regions, max_wait_ms=args.max_wait_ms,
                      examples=example_images())


def example_images() -> dict:
    """The web page's examples: the bundled generated scene, and scikit-image's photos when it is installed."""
    import io

    from ..demo import EXAMPLES

    out = {"scene": (EXAMPLES / "scene.png").read_bytes()}
    try:
        from PIL import Image
        from skimage import data
    except ImportError:
        return out
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        buf = io.BytesIO()
        Image.fromarray(getattr(data, name)()).save(buf, format="PNG")
        out[name] = buf.getvalue()
    return out


def run(args) -> int:
    import uvicorn

    app = build(args)
    print(f"dynrefer serve: http://{args.host}:{args.port}/ (API: /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
