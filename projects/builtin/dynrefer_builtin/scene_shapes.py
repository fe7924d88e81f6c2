"""Shapes, colours and surface patterns of the synthetic scenes (see :mod:`dynrefer_builtin.synthetic`).

Every object is rasterised at ``SS``× supersampling: a boolean shape mask (Pillow polygons and
ellipses) and a boolean pattern map over the same supersampled grid. The scene compositor
box-filters both down to image pixels, which gives antialiased edges and patterns.

Patterns modulate the object's colour *around its mean*: pattern pixels are lighter (or
darker) by ``K·(1 − f)`` and the others darker (or lighter) by ``K·f`` (per channel, within
the channel's headroom), ``f`` being the pattern's area fraction, so the average colour of an object is its base
colour whatever its
pattern. A low-resolution view, which averages the fine period away, therefore carries no
trace of the pattern; only a high-resolution view of the object does.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

#: Supersampling factor of the object rasteriser.
SS = 4

#: Object categories (shapes). Look-alike pairs: circle / ring, square / diamond, pentagon / hexagon,
#: star / cross, heart / crescent at small sizes.
CATEGORIES = (
    "circle",
    "ring",
    "square",
    "diamond",
    "triangle",
    "pentagon",
    "hexagon",
    "star",
    "cross",
    "heart",
    "crescent",
    "arrow",
)

#: Base colours (RGB). Chosen far apart in hue or lightness, with headroom for the pattern modulation.
COLORS = {
    "red": (205, 35, 35),
    "orange": (240, 135, 25),
    "yellow": (230, 210, 40),
    "green": (40, 155, 55),
    "cyan": (35, 195, 205),
    "blue": (40, 75, 215),
    "purple": (135, 55, 190),
    "pink": (245, 135, 190),
    "brown": (120, 70, 30),
    "white": (215, 215, 215),
    "black": (40, 40, 40),
}
COLOR_NAMES = tuple(COLORS)

#: Surface patterns and their fine periods in image pixels (stripe period, dot spacing, checker period).
PATTERNS = ("solid", "striped", "dotted", "checkered")
PATTERN_PERIOD = {"striped": (3.5, 4.5), "dotted": (4.0, 5.0), "checkered": (4.0, 5.0)}
#: Pattern contrast K (grey levels between the light and the dark parts of the surface).
PATTERN_CONTRAST = (75.0, 105.0)


def _regular(n: int, phase: float = -math.pi / 2) -> np.ndarray:
    a = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _star(inner: float) -> np.ndarray:
    a = -math.pi / 2 + math.pi * np.arange(10) / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts / np.hypot(pts[:, 0], pts[:, 1]).max()


_HEART = _heart()


def _rot(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([pts[:, 0] * c - pts[:, 1] * s, pts[:, 0] * s + pts[:, 1] * c], axis=1)


def sample_geometry(category: str, rng: np.random.Generator) -> list[tuple]:
    """Drawing operations of one shape in unit coordinates (the shape fits the unit disc).

    Each operation is ``(fill, "poly", points)`` or ``(fill, "disc", cx, cy, r)``; ``fill`` 1 paints
    the shape, 0 cuts a hole. Rotations and proportions are drawn from ``rng``.
    """
    deg = math.pi / 180
    if category == "circle":
        return [(1, "disc", 0.0, 0.0, 1.0)]
    if category == "ring":
        return [(1, "disc", 0.0, 0.0, 1.0), (0, "disc", 0.0, 0.0, float(rng.uniform(0.45, 0.6)))]
    if category == "crescent":
        a = rng.uniform(0, 2 * math.pi)
        off = rng.uniform(0.4, 0.55)
        return [(1, "disc", 0.0, 0.0, 1.0), (0, "disc", off * math.cos(a), off * math.sin(a), rng.uniform(0.8, 0.9))]
    if category == "square":
        pts = _regular(4, math.pi / 4)
        angle = rng.uniform(-15, 15) * deg
    elif category == "diamond":
        w = rng.uniform(0.6, 1.0)
        pts = np.array([[0.0, -1.0], [w, 0.0], [0.0, 1.0], [-w, 0.0]])
        angle = rng.uniform(-12, 12) * deg
    elif category == "triangle":
        pts, angle = _regular(3), rng.uniform(0, 2 * math.pi)
    elif category == "pentagon":
        pts, angle = _regular(5), rng.uniform(0, 2 * math.pi)
    elif category == "hexagon":
        pts, angle = _regular(6), rng.uniform(0, 2 * math.pi)
    elif category == "star":
        pts, angle = _star(rng.uniform(0.4, 0.5)), rng.uniform(0, 2 * math.pi)
    elif category == "cross":
        h = rng.uniform(0.26, 0.34)
        q = np.array([[h, -1], [h, -h], [1, -h], [1, h], [h, h], [h, 1]], dtype=float)
        pts = np.concatenate([q, -q])
        pts /= np.hypot(pts[:, 0], pts[:, 1]).max()
        angle = rng.uniform(0, 2 * math.pi)
    elif category == "heart":
        pts, angle = _HEART, rng.uniform(-20, 20) * deg
    elif category == "arrow":
        s, hw = rng.uniform(0.18, 0.26), rng.uniform(0.55, 0.7)
        pts = np.array([[-1, -s], [0.1, -s], [0.1, -hw], [1, 0], [0.1, hw], [0.1, s], [-1, s]], dtype=float)
        pts /= np.hypot(pts[:, 0], pts[:, 1]).max()
        angle = rng.uniform(0, 2 * math.pi)
    else:
        raise ValueError(f"unknown category {category!r}")
    return [(1, "poly", _rot(pts, angle))]


def rasterize(ops: list[tuple], cx: float, cy: float, radius: float) -> tuple[int, int, np.ndarray]:
    """Supersampled boolean mask of a shape centred at ``(cx, cy)`` (image pixels) with ``radius``.

    Returns ``(x0, y0, mask)``: the mask's top-left corner in supersampled pixels (a multiple of
    ``SS``, so the mask box-filters onto whole image pixels) and the mask itself.
    """
    x0 = math.floor(cx - radius) - 1
    y0 = math.floor(cy - radius) - 1
    w = math.ceil(cx + radius) + 1 - x0
    h = math.ceil(cy + radius) + 1 - y0
    img = Image.new("L", (w * SS, h * SS), 0)
    draw = ImageDraw.Draw(img)
    # Pillow's pixel (i, j) covers [i, i + 1): a point p maps to SS * p - 0.5 in its pixel-centre frame.
    ox, oy, r = (cx - x0) * SS - 0.5, (cy - y0) * SS - 0.5, radius * SS
    for op in ops:
        fill = 255 * op[0]
        if op[1] == "disc":
            _, _, px, py, pr = op
            x, y, rr = ox + px * r, oy + py * r, pr * r
            draw.ellipse((x - rr, y - rr, x + rr, y + rr), fill=fill)
        else:
            pts = op[2] * r + (ox, oy)
            draw.polygon([tuple(p) for p in pts.tolist()], fill=fill)
    return x0 * SS, y0 * SS, np.asarray(img) > 127


def pattern_map(
    pattern: str, rng: np.random.Generator, shape: tuple[int, int], x0: int, y0: int, cx: float, cy: float
) -> np.ndarray:
    """Boolean pattern map on the supersampled grid ``shape`` whose corner is ``(x0, y0)`` (SS px).

    The pattern is anchored at the object's centre ``(cx, cy)`` (image px), with a random
    orientation and phase; its period is a few image pixels (:data:`PATTERN_PERIOD`).
    """
    if pattern == "solid":
        return np.zeros(shape, dtype=bool)
    lo, hi = PATTERN_PERIOD[pattern]
    period = rng.uniform(lo, hi)
    angle = rng.uniform(0, math.pi)
    phase_u, phase_v = rng.uniform(0, period, size=2)
    ys = (np.arange(shape[0], dtype=np.float32) + y0 + 0.5) / SS - cy
    xs = (np.arange(shape[1], dtype=np.float32) + x0 + 0.5) / SS - cx
    c, s = math.cos(angle), math.sin(angle)
    # Lattice coordinates (in periods), offset to be positive so that truncation is floor.
    base = 2 * (shape[0] + shape[1]) / SS / period + 4
    u = np.add.outer(ys * np.float32(s / period), xs * np.float32(c / period) + np.float32(base + phase_u / period))
    if pattern == "striped":
        return (u * 2).astype(np.int32) & 1 == 0
    v = np.add.outer(ys * np.float32(c / period), xs * np.float32(-s / period) + np.float32(base + phase_v / period))
    if pattern == "checkered":
        return ((u * 2).astype(np.int32) + (v * 2).astype(np.int32)) & 1 == 0
    # dotted: hexagonal lattice of dots, radius 0.3 of the spacing
    row = v.astype(np.int32)
    u += (row & 1) * np.float32(0.5)
    u -= u.astype(np.int32)
    u -= np.float32(0.5)
    v -= row
    v -= np.float32(0.5)
    u *= u
    v *= v
    u += v
    return u < np.float32(0.09)


def pattern_modulation(color: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(base, delta)`` such that a pattern pixel is ``base + delta`` and another pixel ``base``.

    The mean over the surface, ``base + fraction·delta``, equals ``color``. Each channel moves by
    up to the drawn contrast in the same direction (lighter or darker pattern, whichever changes
    the luminance more), within what keeps both parts in [0, 255].
    """
    contrast = rng.uniform(*PATTERN_CONTRAST)
    color = np.asarray(color, dtype=np.float64)
    if fraction <= 0.01 or fraction >= 0.99:
        return color.astype(np.float32), np.zeros(3, np.float32)
    f = fraction
    hi = np.minimum((255 - color) / (1 - f), color / f)  # most a channel may rise
    lo = np.maximum(-color / (1 - f), (color - 255) / f)  # most it may fall (negative)
    up, down = np.clip(contrast, 0, hi), np.clip(-contrast, lo, 0)
    lum = np.array([0.299, 0.587, 0.114])
    delta = up if (lum * up).sum() >= -(lum * down).sum() else down
    return (color - f * delta).astype(np.float32), delta.astype(np.float32)
