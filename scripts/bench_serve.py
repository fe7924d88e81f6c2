"""Benchmark: ``dynrefer serve`` under bounded load, against the engine's own throughput.

A real server (``dynrefer serve``, the built-in model, a subprocess on 127.0.0.1) gets ``--requests`` requests at
each concurrency (one region per request, then 16 regions per request), from client threads that each keep one
connection open; every request carries a different image of 16 (the bundled photos and their flips and crops). The
engine's own regions/s for the same 16 images with one region each in one ``describe_many`` call is measured in
this process, before and after the load (the server idle then). Prints JSON rows:

* per setting: ``{"concurrency", "regions_per_request", "requests", "requests_per_s", "regions_per_s", "p50_ms",
  "p99_ms", "errors", "client_cpu_s", "batches"}`` (``client_cpu_s``: the load generator's own CPU time, which it
  takes from the server on a 2-core machine; ``batches``: requests per engine call, from the server's log);
* ``{"engine_regions_per_s", "engine_on_files_regions_per_s", "served_regions_per_s_c16", "ratio",
  "ratio_to_engine_on_files"}``: concurrency 16, one region per request, against the engine on decoded images
  and on the PNG files (decoding inside the call, as the server must).

``--server both`` runs the same service on LitServe too (``scripts/litserve_app.py``; ``pip install litserve``),
the two servers' runs interleaved.

Usage: ``python scripts/bench_serve.py [--requests 256] [--concurrency 1,4,16] [--max-wait-ms 10]
[--server dynrefer|litserve|both] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def images() -> list[bytes]:
    """16 different PNG images: four bundled photos, each as it is, mirrored, and two crops."""
    import numpy as np
    from PIL import Image
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        a = getattr(data, name)()
        for v in (a, a[:, ::-1], a[: a.shape[0] * 3 // 4], a[:, a.shape[1] // 4 :]):
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(v)).save(buf, format="PNG")
            out.append(buf.getvalue())
    return out


def region_boxes(k: int, width: int = 400, height: int = 300) -> list:
    return [[10 + 13 * i % 200, 15 + 7 * i % 150, 10 + 13 * i % 200 + 150, 15 + 7 * i % 150 + 120] for i in range(k)]


def start_server(max_wait_ms: float, server: str = "dynrefer") -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ([sys.executable, "-m", "dynrefer.cli", "serve", "--port", str(port), "--max-wait-ms", str(max_wait_ms)]
            if server == "dynrefer" else [sys.executable, str(ROOT / "scripts" / "litserve_app.py"), str(port)])
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
                            start_new_session=True)  # its own process group: LitServe's workers go with it
    for _ in range(240):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v1/health" if server == "dynrefer" else "/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.5)
    stop_server(proc)
    raise SystemExit("bench_serve.py: the server did not start")


@contextmanager
def paused(procs: list[subprocess.Popen]):
    """The other servers stopped (SIGSTOP to their process groups) while one is measured: an idle server's
    workers may poll (LitServe's took up to 40 % of a core), which would be charged to the one measured."""
    import signal

    for proc in procs:
        os.killpg(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGCONT)


def stop_server(proc: subprocess.Popen) -> None:
    """The server and every process it started (LitServe's inference workers outlive a plain terminate)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def load(port: int, bodies: list[bytes], requests: int, concurrency: int, path: str = "/v1/describe") -> dict:
    latencies, errors, lock, counter = [], [0], threading.Lock(), [0]

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = counter[0]
                counter[0] += 1
            if i >= requests:
                return
            start = time.perf_counter()
            try:
                conn.request("POST", path, body=bodies[i % len(bodies)],
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                ok = False
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            with lock:
                latencies.append(time.perf_counter() - start)
                errors[0] += not ok

    cpu, start = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies.sort()
    return {"requests": requests, "requests_per_s": round(requests / wall, 2), "p50_ms": round(
        1000 * latencies[len(latencies) // 2], 1), "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1),
        "errors": errors[0], "client_cpu_s": round(time.process_time() - cpu, 2), "wall_s": round(wall, 2)}


def engine_regions_per_s(pngs: list[bytes], repeats: int = 5) -> tuple[float, float]:
    """The engine's regions/s for the 16 images, one region each, in one ``describe_many`` call: on decoded
    images, and on the encoded files (decoding inside the call, as the server must)."""
    import tempfile

    from timing import median_seconds

    from dynrefer.images import load_image_bytes
    from dynrefer.inference.predictor import Predictor

    predictor = Predictor("builtin")
    pixels = [load_image_bytes(p, f"image {i}") for i, p in enumerate(pngs)]
    boxes = [region_boxes(1) for _ in pixels]
    decoded = len(pixels) / median_seconds(lambda: predictor.describe_many(pixels, boxes), repeats)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, png in enumerate(pngs):
            paths.append(Path(tmp) / f"{i}.png")
            paths[-1].write_bytes(png)
        encoded = len(paths) / median_seconds(lambda: predictor.describe_many(paths, boxes), repeats)
    return decoded, encoded


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2, help="runs of each setting (the best is kept)")
    p.add_argument("--server", choices=("dynrefer", "litserve", "both"), default="dynrefer",
                   help="dynrefer serve, or the same service on LitServe (scripts/litserve_app.py; needs litserve)")
    args = p.parse_args()
    pngs = images()
    before = engine_regions_per_s(pngs)
    servers = ["dynrefer", "litserve"] if args.server == "both" else [args.server]
    started = {name: start_server(args.max_wait_ms, name) for name in servers}
    paths = {"dynrefer": "/v1/describe", "litserve": "/predict"}
    rows = []
    try:
        for k in (1, 16):
            bodies = [json.dumps({"image": base64.b64encode(png).decode(), "regions": region_boxes(k)}).encode()
                      for png in pngs]
            for name, (_, port) in started.items():
                with paused([proc for other, (proc, _) in started.items() if other != name]):
                    load(port, bodies, 16, 4, paths[name])  # warm-up
            for c in (int(v) for v in args.concurrency.split(",")):
                runs = {name: [] for name in servers}
                for _ in range(args.rounds):  # servers interleaved: a change in the machine's speed hits all alike
                    for name, (_, port) in started.items():
                        with paused([proc for other, (proc, _) in started.items() if other != name]):
                            runs[name].append(load(port, bodies, args.requests, c, paths[name]))
                for name in servers:
                    best = max(runs[name], key=lambda r: r["requests_per_s"])
                    row = {"server": name, "concurrency": c, "regions_per_request": k, **best,
                           "regions_per_s": round(best["requests_per_s"] * k, 2),
                           "errors": sum(r["errors"] for r in runs[name])}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        for proc, _ in started.values():
            stop_server(proc)
    after = engine_regions_per_s(pngs)
    decoded, encoded = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    top = max(int(v) for v in args.concurrency.split(","))
    for name in servers:
        served = next(r["regions_per_s"] for r in rows
                      if r["server"] == name and r["concurrency"] == top and r["regions_per_request"] == 1)
        print(json.dumps({"server": name, "engine_regions_per_s": round(decoded, 2),
                          "engine_on_files_regions_per_s": round(encoded, 2),
                          f"served_regions_per_s_c{top}": served, "ratio": round(served / decoded, 3),
                          "ratio_to_engine_on_files": round(served / encoded, 3)}))


if __name__ == "__main__":
    from dynrefer.errors import run_script

    run_script(main, "bench_serve.py")
