"""The web page in a real browser (headless Chromium, Debian's package, driven by Playwright): upload an image,
draw a box, read the caption, compare it with ``dynrefer describe`` on the same box; errors in words."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from dynrefer.cli import main

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dynrefer.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v1/health", timeout=2) as r:
                if json.load(r)["status"] == "ok":
                    break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"dynrefer serve exited: {proc.stdout.read()}")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("dynrefer serve did not answer /v1/health within 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_draw_a_box_and_read_its_caption(server, photos, tmp_path, capsys):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "the browser test needs Debian's chromium package: apt-get install -y chromium (make test does)"
    photo = photos["coffee"]
    image = tmp_path / "coffee.png"
    Image.fromarray(photo.array).save(image)
    start, end = (60, 40), (260, 230)  # canvas pixels = image pixels (the page shows the image at its size)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(server)
        page.click("#describe")
        assert page.text_content("#error") == "choose an image first"
        page.set_input_files("#file", str(image))
        page.wait_for_function("document.getElementById('canvas').width === 600")
        page.click("#describe")
        assert page.text_content("#error") == "draw at least one box on the image"
        box = page.locator("#canvas").bounding_box()
        page.mouse.move(box["x"] + start[0], box["y"] + start[1])
        page.mouse.down()
        page.mouse.move(box["x"] + (start[0] + end[0]) / 2, box["y"] + (start[1] + end[1]) / 2)
        page.mouse.move(box["x"] + end[0], box["y"] + end[1])
        page.mouse.up()
        page.click("#describe")
        page.wait_for_selector("body[data-described='1']", timeout=60_000)
        drawn = page.evaluate("window.dynreferState.boxes")
        caption = page.text_content(".region .caption")
        facts = page.text_content(".region div:nth-child(2)")
        assert len(page.query_selector_all(".views canvas")) == 3
        page.screenshot(path=str(tmp_path / "page.png"))
        # a bad vocabulary is reported on the page, in words
        page.fill("#classes", ",")
        page.click("#describe")
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        error = page.text_content("#error")
        browser.close()
    assert len(drawn) == 1 and all(abs(a - b) <= 2 for a, b in zip(drawn[0], start + end)), drawn
    assert main(["describe", str(image), "--box", *map(str, drawn[0])]) == 0
    want = json.loads(capsys.readouterr().out)["regions"][0]
    assert caption == f"1. {want['caption']}"
    assert f"category: {want['category'][0]}" in facts
    assert "Traceback" not in error and "empty" in error, error
    assert (tmp_path / "page.png").stat().st_size > 10_000
