"""The synthetic scene benchmark (SPEC §4): procedurally generated images whose region captions need
both *detail* and *context*.

Each image holds 3–7 objects: a shape (:data:`CATEGORIES`, 12 with look-alike pairs), a colour
(:data:`COLOR_NAMES`), a surface pattern (:data:`PATTERNS`, with a period of 3.5–5 px) and a size
(small 14–26 px, medium 32–50 px, large 58–90 px at 256 px, scaled with the image). Patterns keep
the object's mean colour (see :mod:`dynrefer_builtin.scene_shapes`), so once a view averages the
fine period away — the whole 256 px image resized to 64 px — the pattern is gone; a view of the
object itself keeps it, and the shape of a small object too. Position, relative size and the
nearest neighbour, on the other hand, are invisible in a crop of the object alone.

Nuisances: cluttered backgrounds (:mod:`dynrefer_builtin.scene_background`), partial occlusion
(a quarter of the objects; each keeps ≥ 60 % of its pixels and its box is the tight box of the
visible ones, at 1/4 px precision), per-object colour jitter and shading, per-image brightness /
contrast / hue shifts and grain, look-alike shapes. (colour, shape) pairs are unique per image.

Caption grammar (lower case, :func:`~dynrefer.records.normalize_caption`)::

    the {size} {pattern} {colour} {shape} {position} {relation} the {nsize} {ncolour} {nshape}
    {a|the} {size} {pattern} {colour} {shape} {relation} a {nsize} {ncolour} {nshape} {position}

``size`` is ``largest`` / ``smallest`` when the object is clearly (by 15 %) the largest / smallest
of its image, else ``small`` / ``medium`` / ``large``; ``position`` is the 3×3 cell of the box
centre (:data:`POSITION_PHRASES`); ``relation`` (:data:`RELATION_PHRASES`) is the dominant
direction from the object's box centre to its nearest neighbour's, the neighbour being the other
object with the nearest box centre (``nsize`` its absolute size). Example:
``the small dotted red star in the top left to the left of the large blue circle``.

Attributes (SPEC §5 names): ``color:{colour}``, ``pattern:{pattern}``, ``size:{small|medium|large}``
and ``position:{cell}`` (one of :data:`POSITIONS`) as positives, every other value of the four as
negatives — so the contrastive head's short texts ("the object in the top left" is written
"the top left object") and the attribute scores cover where a region is, not only what it looks like.

Each image comes from ``numpy.random.default_rng([seed, index])`` alone, so the output does not
depend on the number of workers or the order of generation.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from dynrefer.errors import InputError
from dynrefer.records import SPLITS, write_json, write_jsonl

from .scene_background import make_background, photometric
from .scene_captions import (
    POSITION_PHRASES,
    POSITIONS,
    RELATION_PHRASES,
    RELATIONS,
    SIZE_WORDS,
    SIZES,
    annotate,
    vocabulary,
)
from .scene_shapes import (
    CATEGORIES,
    COLOR_NAMES,
    COLORS,
    PATTERNS,
    SS,
    pattern_map,
    pattern_modulation,
    rasterize,
    sample_geometry,
)

__all__ = [
    "CATEGORIES",
    "COLORS",
    "COLOR_NAMES",
    "DEFAULT_SPLITS",
    "PATTERNS",
    "POSITIONS",
    "POSITION_PHRASES",
    "RELATIONS",
    "RELATION_PHRASES",
    "SIZES",
    "SIZE_WORDS",
    "generate_dataset",
    "generate_scene",
    "parse_splits",
    "split_counts",
    "vocabulary",
]  # fmt: skip

#: Nominal object diameter (circumscribed circle) per size class, in pixels of a 256 px image.
SIZE_RANGES = {"small": (14.0, 26.0), "medium": (32.0, 50.0), "large": (58.0, 90.0)}
SIZE_PROBS = (0.4, 0.35, 0.25)
MIN_VISIBLE = 0.6
#: Centres stay ≥ this × (sum of radii) apart (directions between neighbours stay meaningful).
MIN_CENTRE_DISTANCE = 0.55
#: Probability that an object is placed next to an earlier one, overlapping it, and at what distance.
NEAR_PROB = 0.35
NEAR_DISTANCE = (0.55, 0.9)
DEFAULT_SPLITS = (0.8, 0.1, 0.1)
MIN_SIZE, MAX_SIZE = 64, 4096


def _sample_specs(rng: np.random.Generator, scale: float) -> list[dict]:
    n = int(rng.integers(3, 8))
    seen: set[tuple[int, int]] = set()
    specs = []
    while len(specs) < n:
        cat, col = int(rng.integers(len(CATEGORIES))), int(rng.integers(len(COLOR_NAMES)))
        size_cls = SIZES[int(rng.choice(3, p=SIZE_PROBS))]
        lo, hi = SIZE_RANGES[size_cls]
        spec = {
            "category": CATEGORIES[cat],
            "color": COLOR_NAMES[col],
            "pattern": PATTERNS[int(rng.integers(len(PATTERNS)))],
            "size": size_cls,
            "diameter": float(rng.uniform(lo, hi)) * scale,
        }
        if (cat, col) not in seen:  # (colour, shape) names an object uniquely within its image
            seen.add((cat, col))
            specs.append(spec)
    return specs


def _overlap(a: dict, b: dict):
    """Slices of ``a``'s and ``b``'s supersampled masks over their common rectangle, or None."""
    x0, y0 = max(a["x0"], b["x0"]), max(a["y0"], b["y0"])
    x1 = min(a["x0"] + a["mask"].shape[1], b["x0"] + b["mask"].shape[1])
    y1 = min(a["y0"] + a["mask"].shape[0], b["y0"] + b["mask"].shape[0])
    if x0 >= x1 or y0 >= y1:
        return None
    sa = (slice(y0 - a["y0"], y1 - a["y0"]), slice(x0 - a["x0"], x1 - a["x0"]))
    sb = (slice(y0 - b["y0"], y1 - b["y0"]), slice(x0 - b["x0"], x1 - b["x0"]))
    return sa, sb


def _place(rng: np.random.Generator, specs: list[dict], size: int) -> list[dict]:
    """Place objects in drawing order (later ones on top); each keeps ≥ MIN_VISIBLE of its pixels."""
    placed: list[dict] = []
    for spec in specs:
        radius = spec["diameter"] / 2
        lo, hi = radius + 1.5, size - radius - 1.5
        ops = sample_geometry(spec["category"], rng)
        near = bool(placed) and rng.uniform() < NEAR_PROB  # overlap an object on purpose
        for _ in range(40):
            if near:
                o = placed[int(rng.integers(len(placed)))]
                a, dist = rng.uniform(0, 2 * math.pi), rng.uniform(*NEAR_DISTANCE) * (radius + o["radius"])
                cx, cy = o["cx"] + dist * math.cos(a), o["cy"] + dist * math.sin(a)
                if not (lo <= cx <= hi and lo <= cy <= hi):
                    continue
            else:
                cx, cy = rng.uniform(lo, hi, size=2)
            min_d = [max(8.0, MIN_CENTRE_DISTANCE * (radius + o["radius"])) for o in placed]
            if any(math.hypot(cx - o["cx"], cy - o["cy"]) < d for o, d in zip(placed, min_d, strict=True)):
                continue
            x0, y0, mask = rasterize(ops, float(cx), float(cy), radius)
            obj = {**spec, "cx": float(cx), "cy": float(cy), "radius": radius, "x0": x0, "y0": y0, "mask": mask}
            losses = []
            for o in placed:
                ov = _overlap(o, obj)
                lost = 0 if ov is None else int(np.count_nonzero(o["visible"][ov[0]] & mask[ov[1]]))
                if o["count"] - lost < MIN_VISIBLE * o["full"]:
                    break
                losses.append((o, ov, lost))
            else:
                for o, ov, lost in losses:
                    if lost:
                        o["visible"][ov[0]] &= ~mask[ov[1]]
                        o["count"] -= lost
                obj["visible"] = mask.copy()
                obj["full"] = obj["count"] = int(np.count_nonzero(mask))
                placed.append(obj)
                break
    return placed


def _downsample(a: np.ndarray) -> np.ndarray:
    """Box-filter a supersampled boolean map to image pixels: the covered fraction, float32."""
    h, w = a.shape[0] // SS, a.shape[1] // SS
    s = a.view(np.uint8).reshape(h, SS, w * SS).sum(axis=1, dtype=np.uint8)
    return s.reshape(h, w, SS).sum(axis=2, dtype=np.uint8).astype(np.float32) * np.float32(1 / SS**2)


def _composite(rng: np.random.Generator, img: np.ndarray, objects: list[dict], masks: bool) -> list:
    """Paint the objects onto ``img`` (channel-first float32, in place); returns per-object coverage
    maps if asked. Visible masks are disjoint, so a pixel is ``bg·(1 − Σ alpha) + Σ alpha·colour``."""
    size = img.shape[1]
    total = np.zeros((size, size), np.float32)
    windows = []
    for o in objects:
        alpha = _downsample(o["visible"])
        ys, xs = o["y0"] // SS, o["x0"] // SS
        h, w = alpha.shape
        # crop to the image (the mask never leaves it, but its padding might)
        y1, x1, y2, x2 = max(ys, 0), max(xs, 0), min(ys + h, size), min(xs + w, size)
        win = (slice(y1, y2), slice(x1, x2)), (slice(y1 - ys, y2 - ys), slice(x1 - xs, x2 - xs))
        total[win[0]] += alpha[win[1]]
        windows.append((alpha, win))
    img *= 1 - total[None]
    coverage = []
    for o, (alpha, (dst, src)) in zip(objects, windows, strict=True):
        vis = o["visible"]
        pat = pattern_map(o["pattern"], rng, vis.shape, o["x0"], o["y0"], o["cx"], o["cy"])
        fraction = float(np.count_nonzero(pat & o["mask"])) / o["full"]
        color = np.asarray(COLORS[o["color"]], np.float32) + rng.uniform(-10, 10, size=3).astype(np.float32)
        base, delta = pattern_modulation(color, fraction, rng)
        pf = _downsample(vis & pat)[src]
        al = alpha[src]
        # a soft lighting gradient across the object
        a = rng.uniform(0, 2 * math.pi)
        amp = rng.uniform(0, 14) / o["radius"]
        gx = (np.arange(dst[1].start, dst[1].stop, dtype=np.float32) + np.float32(0.5 - o["cx"])) * np.float32(
            amp * math.cos(a)
        )
        gy = (np.arange(dst[0].start, dst[0].stop, dtype=np.float32) + np.float32(0.5 - o["cy"])) * np.float32(
            amp * math.sin(a)
        )
        lit = al * np.add.outer(gy, gx)  # alpha × shading
        for c in range(3):
            region = img[c][dst]
            region += al * base[c]
            region += lit
            region += pf * delta[c]
        if masks:
            cov = np.zeros((size, size), np.float32)
            cov[dst] = al
            coverage.append(cov)
    return coverage


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not MIN_SIZE <= size <= MAX_SIZE:
        raise InputError(f"image size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")
    return int(size)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def generate_scene(seed: int, index: int, size: int = 256, return_masks: bool = False):
    """Scene ``index`` of the dataset with ``seed``: ``(PIL RGB image, record)``.

    The record has the SPEC §5 shape with ``"image": None`` and a ``"scene"`` entry (seed,
    index, background style, photometric jitter). With ``return_masks=True`` a third value is
    returned: per region (same order), the float32 ``size×size`` coverage of its *visible*
    pixels in [0, 1] (``> 0`` touches every edge of the region's box; ``>= 0.5`` is the usual
    binary mask).
    """
    seed, size = _check_seed(seed), _check_size(size)
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or index < 0:
        raise InputError(f"scene index must be a non-negative integer, got {index!r}")
    rng = np.random.default_rng([seed, int(index)])
    img, style = make_background(rng, size)
    objects: list[dict] = []
    while len(objects) < 2:
        objects = _place(rng, _sample_specs(rng, size / 256), size)
    coverage = _composite(rng, img, objects, return_masks)
    image, jitter = photometric(rng, img)
    record = {
        "image": None,
        "width": size,
        "height": size,
        "regions": annotate(objects, size),
        "scene": {"seed": seed, "index": int(index), "background": style, "photometric": jitter},
    }
    return (image, record, coverage) if return_masks else (image, record)


def parse_splits(splits) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` or a 3-sequence → three non-negative fractions summing to 1."""
    text = splits
    if isinstance(splits, str):
        splits = splits.split(",")
    try:
        values = tuple(float(v) for v in splits)
    except (TypeError, ValueError):
        raise InputError(f"splits must be three numbers train,val,test, got {text!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values):
        raise InputError(f"splits must be three non-negative numbers train,val,test, got {text!r}")
    if abs(sum(values) - 1) > 1e-3:
        raise InputError(f"splits must sum to 1, got {text!r} (sum {sum(values):g})")
    return values  # type: ignore[return-value]


def split_counts(num_images: int, splits) -> list[int]:
    """Images per split (largest remainder; each split with a positive share gets at least one image
    when there are enough images). Split ``k`` takes a contiguous range of indices."""
    fr = np.asarray(splits, dtype=float)
    raw = fr * num_images
    counts = np.floor(raw).astype(int)
    for k in np.argsort(-(raw - counts), kind="stable")[: num_images - counts.sum()]:
        counts[k] += 1
    for k in range(3):
        if fr[k] > 0 and counts[k] == 0 and num_images >= np.count_nonzero(fr):
            counts[k] += 1
            counts[int(np.argmax(counts))] -= 1
    return counts.tolist()


class _Writer:
    """Picklable worker: generate scene ``index`` and save its PNG."""

    def __init__(self, out: Path, seed: int, size: int, digits: int):
        self.out, self.seed, self.size, self.digits = out, seed, size, digits

    def __call__(self, index: int) -> dict:
        image, record = generate_scene(self.seed, index, self.size)
        rel = f"images/{index:0{self.digits}d}.png"
        image.save(self.out / rel, format="PNG", compress_level=1, compress_type=3)  # zlib Z_RLE: fast, as small
        record["image"] = rel
        return record


def generate_dataset(out_dir, num_images: int, seed: int, size: int = 256, workers: int = 2,
                     splits=DEFAULT_SPLITS, progress: bool | None = None) -> dict:  # fmt: skip
    """Write ``num_images`` scenes to ``out_dir``: ``images/*.png``, ``scenes.jsonl`` (SPEC §5, every
    split in one file, image paths relative to it) and ``vocab.json``. Returns the summary.

    ``progress``: tqdm's ``disable`` logic (None: a bar only on a terminal; False: none).
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int | np.integer) or num_images <= 0:
        raise InputError(f"number of images must be a positive integer, got {num_images!r}")
    if isinstance(workers, bool) or not isinstance(workers, int | np.integer) or workers < 1:
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    seed, size, fractions = _check_seed(seed), _check_size(size), parse_splits(splits)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output '{out}' exists and is not a folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts = split_counts(int(num_images), fractions)
    split_of = np.repeat(np.arange(3), counts)
    writer = _Writer(out, seed, size, max(6, len(str(num_images - 1))))
    per_split = {s: {"images": 0, "regions": 0} for s in SPLITS}
    start = time.perf_counter()
    from tqdm import tqdm

    def records(results):
        bar = tqdm(total=int(num_images), desc="synth", unit="img", disable=None if progress is None else not progress)
        for index, record in enumerate(results):
            split = SPLITS[split_of[index]]
            record = {"image": record.pop("image"), "width": size, "height": size, "split": split, **record}
            per_split[split]["images"] += 1
            per_split[split]["regions"] += len(record["regions"])
            bar.update(1)
            yield record
        bar.close()

    indices = range(int(num_images))
    if workers == 1 or num_images < 8:
        write_jsonl(out / "scenes.jsonl", records(map(writer, indices)))
    else:
        import multiprocessing

        chunk = max(1, min(32, int(num_images) // (int(workers) * 8)))
        with multiprocessing.get_context().Pool(int(workers)) as pool:
            write_jsonl(out / "scenes.jsonl", records(pool.imap(writer, indices, chunksize=chunk)))
    write_json(out / "vocab.json", vocabulary(), indent=2)
    seconds = time.perf_counter() - start
    return {
        "out": str(out),
        "jsonl": str(out / "scenes.jsonl"),
        "vocab": str(out / "vocab.json"),
        "images_dir": str(out / "images"),
        "images": int(num_images),
        "regions": sum(v["regions"] for v in per_split.values()),
        "splits": per_split,
        "seed": seed,
        "size": size,
        "workers": int(workers),
        "seconds": round(seconds, 2),
        "images_per_second": round(num_images / max(seconds, 1e-9), 1),
    }
