"""Backgrounds and photometric nuisances of the synthetic scenes (see :mod:`dynrefer_builtin.synthetic`).

A background is a muted base (flat, linear gradient or radial gradient) plus one or two
clutter layers: low-frequency "clouds", faint blobs, faint antialiased lines, or a faint
fine "weave" texture whose period is close to the objects' patterns (so a pattern must be
read on the object, not anywhere in its box). After the objects are composited, each image
gets a global brightness / contrast / hue shift and sensor grain, limited so that the colour
names stay right.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

BASES = ("flat", "gradient", "radial")
CLUTTER = ("clouds", "blobs", "lines", "weave")

#: Limits of the per-image photometric jitter.
BRIGHTNESS = (0.88, 1.12)
CONTRAST = (0.85, 1.12)
HUE_DEGREES = 6.0
GRAIN_SIGMA = (0.5, 3.0)


def _muted(rng: np.random.Generator, sat=(0.04, 0.3), val=(0.33, 0.72)) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val))
    return np.array(rgb, dtype=np.float32) * 255


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    g = (np.arange(size, dtype=np.float32) + 0.5) / size
    return g[None, :], g[:, None]


def _base(rng, size: int, kind: str) -> np.ndarray:
    c1 = _muted(rng)
    if kind == "flat":
        out = np.empty((3, size, size), np.float32)
        for c in range(3):
            out[c] = c1[c]
        return out
    c2 = _muted(rng)
    x, y = _coords(size)
    if kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        t = (x - 0.5) * math.cos(a) + (y - 0.5) * math.sin(a)
        t = np.clip(t / 1.42 + 0.5, 0, 1)
    else:
        cx, cy = rng.uniform(0.2, 0.8, size=2)
        t = np.minimum(np.sqrt((x - np.float32(cx)) ** 2 + (y - np.float32(cy)) ** 2) / np.float32(0.9), 1)
    return c1[:, None, None] + (c2 - c1)[:, None, None] * t[None]


def _clouds(rng, img: np.ndarray) -> None:
    size = img.shape[1]
    grid = int(rng.choice([3, 5, 8]))
    amp = rng.uniform(8, 24)
    noise = rng.standard_normal((grid, grid), dtype=np.float32)
    field = np.asarray(Image.fromarray(noise, "F").resize((size, size), Image.Resampling.BICUBIC))
    tint = 1 + rng.uniform(-0.25, 0.25, size=3).astype(np.float32)
    img += (amp * tint)[:, None, None] * field[None]


def _blobs(rng, img: np.ndarray) -> None:
    size = img.shape[1]
    half = size // 2
    layer = Image.new("RGB", (half, half))
    mask = Image.new("L", (half, half), 0)
    dl, dm = ImageDraw.Draw(layer), ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(4, 13))):
        cx, cy = rng.uniform(0, half, size=2)
        rx, ry = rng.uniform(0.03, 0.18, size=2) * half
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        col = tuple(int(v) for v in _muted(rng, sat=(0.1, 0.5), val=(0.2, 0.9)))
        dl.ellipse(box, fill=col)
        dm.ellipse(box, fill=int(rng.integers(40, 90)))
    layer = layer.resize((size, size), Image.Resampling.BILINEAR)
    a = np.asarray(mask.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) * np.float32(1 / 255)
    img *= 1 - a[None]
    for c, band in enumerate(layer.split()):
        img[c] += np.asarray(band, dtype=np.float32) * a


def _lines(rng, img: np.ndarray) -> None:
    size = img.shape[1]
    big = size * 2
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(4, 16))):
        x1, y1, x2, y2 = rng.uniform(-0.1, 1.1, size=4) * big
        draw.line((x1, y1, x2, y2), fill=int(rng.integers(50, 120)), width=int(rng.integers(2, 6)))
    col = _muted(rng, sat=(0.0, 0.5), val=(0.1, 0.95))
    a = np.asarray(mask.reduce(2), dtype=np.float32) * np.float32(1 / 255)
    img *= 1 - a[None]
    img += col[:, None, None] * a[None]


def _weave(rng, img: np.ndarray) -> None:
    size = img.shape[1]
    x, y = _coords(size)
    x, y = x * size, y * size
    period = rng.uniform(3.0, 6.0)
    a = rng.uniform(0, math.pi)
    u = (x * math.cos(a) + y * math.sin(a)) / period
    wave = np.sin(2 * math.pi * u)
    if rng.uniform() < 0.5:  # a grid rather than stripes
        v = (y * math.cos(a) - x * math.sin(a)) / period
        wave = 0.5 * (wave + np.sin(2 * math.pi * v))
    img += (np.float32(rng.uniform(3, 8)) * wave.astype(np.float32))[None]


_CLUTTER_FN = {"clouds": _clouds, "blobs": _blobs, "lines": _lines, "weave": _weave}


def make_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """A channel-first ``3×size×size`` float32 background and its style name (e.g. ``"gradient+lines+weave"``)."""
    base = BASES[int(rng.integers(len(BASES)))]
    img = _base(rng, size, base)
    k = 1 + int(rng.uniform() < 0.5)
    layers = sorted(rng.choice(len(CLUTTER), size=k, replace=False).tolist())
    for i in layers:
        _CLUTTER_FN[CLUTTER[i]](rng, img)
    return img, "+".join([base] + [CLUTTER[i] for i in layers])


def _hue_matrix(degrees: float) -> np.ndarray:
    """Rotation of RGB about the grey axis by ``degrees`` (a hue shift that keeps grey grey)."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    k = 1 / 3
    r = math.sqrt(k)
    return np.array(
        [
            [c + (1 - c) * k, k * (1 - c) - r * s, k * (1 - c) + r * s],
            [k * (1 - c) + r * s, c + k * (1 - c), k * (1 - c) - r * s],
            [k * (1 - c) - r * s, k * (1 - c) + r * s, c + k * (1 - c)],
        ],
        dtype=np.float32,
    )


def photometric(rng: np.random.Generator, img: np.ndarray) -> tuple[Image.Image, dict]:
    """Sensor grain, then a global lighting / colour shift (brightness, contrast about the image
    mean, hue rotation); returns the RGB image and the parameters used. ``img`` (channel-first float32) is consumed."""
    brightness = float(rng.uniform(*BRIGHTNESS))
    contrast = float(rng.uniform(*CONTRAST))
    hue = float(rng.uniform(-HUE_DEGREES, HUE_DEGREES))
    sigma = float(rng.uniform(*GRAIN_SIGMA))
    grain = rng.standard_normal(img.shape[1:], dtype=np.float32)  # luminance grain
    grain *= np.float32(sigma)
    grain += np.float32(0.5)
    img += grain[None]
    np.clip(img, 0, 255, out=img)
    image = Image.merge("RGB", [Image.fromarray(ch.astype(np.uint8), "L") for ch in img])
    mean = img[:, ::4, ::4].mean(axis=(1, 2), dtype=np.float64)
    m = _hue_matrix(hue).astype(np.float64) * (brightness * contrast)
    offset = mean * brightness * (1 - contrast)
    matrix = tuple(float(v) for row in np.concatenate([m, offset[:, None]], axis=1) for v in row)
    params = {"brightness": round(brightness, 3), "contrast": round(contrast, 3), "hue": round(hue, 2),
              "grain": round(sigma, 2)}  # fmt: skip
    return image.convert("RGB", matrix), params
