"""``dynrefer serve``: an HTTP API (FastAPI) and a web page over one loaded model, with requests batched across
clients (:mod:`dynrefer.serve.batcher`). Needs the ``serve`` extra."""
