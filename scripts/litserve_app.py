"""The same describe service on LitServe (Lightning's server, batching built in), for ``bench_serve.py
--server litserve``: ``POST /predict`` with ``{"image": base64, "regions": [...]}`` returns the describe record.
Needs ``pip install litserve`` (not a project dependency). Usage: ``python scripts/litserve_app.py PORT``."""

from __future__ import annotations

import base64
import sys

import litserve as ls


class DescribeAPI(ls.LitAPI):
    def setup(self, device):
        from dynrefer.inference.predictor import Predictor

        self.predictor = Predictor("builtin")

    def decode_request(self, request):
        from dynrefer.images import load_image_bytes

        return load_image_bytes(base64.b64decode(request["image"]), "upload"), request["regions"]

    def predict(self, batch):
        images, regions = zip(*batch) if isinstance(batch, list) else ([batch[0]], [batch[1]])
        return self.predictor.describe_many(list(images), list(regions))

    def unbatch(self, output):
        return list(output)

    def batch(self, inputs):
        return list(inputs)

    def encode_response(self, output):
        return output


if __name__ == "__main__":
    api = DescribeAPI(max_batch_size=64, batch_timeout=0.01)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(
        host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", generate_client_file=False)
