"""Shared fixtures: real photos from scikit-image and a deterministic set of region boxes per photo."""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from dynrefer.regions import parse_region

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket")


def _photo_array(name: str) -> np.ndarray:
    import skimage.data

    arr = np.ascontiguousarray(getattr(skimage.data, name)())
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    return arr


def region_box_specs(width: int, height: int) -> dict[str, list[float]]:
    """Raw region boxes (xyxy, before parsing) covering the interesting shapes of one image."""
    w, h = float(width), float(height)
    return {
        "tiny_1px": [10, 10, 11, 11],
        "tiny_2x3": [w // 2, h // 2, w // 2 + 2, h // 2 + 3],
        "tiny_3x1_float": [40.25, 60.5, 43.25, 61.5],
        "subpixel": [100.2, 50.4, 100.7, 50.9],
        "subpixel_border": [0, 3, 0.5, 7],
        "subpixel_corner": [w - 0.3, h - 0.6, w, h],
        "thin_vertical": [30, 20, 32, h - 20],
        "thin_horizontal": [20, 40, w - 20, 42],
        "tall": [50.5, 10.25, 90.75, h - 10.5],
        "wide": [10.0, 100.3, w - 10.0, 160.9],
        "medium": [w * 0.3 + 0.37, h * 0.25 + 0.61, w * 0.7 + 0.13, h * 0.75 + 0.29],
        "medium_int": [w // 4, h // 4, 3 * w // 4, 3 * h // 4],
        "near_top_left": [0, 0, 15, 12],
        "near_bottom_right": [w - 7.5, h - 3.2, w, h],
        "right_column": [w - 1, 0, w, h],
        "bottom_row": [0, h - 1, w, h],
        "whole": [0, 0, w, h],
    }


class Photo:
    """One test image: uint8 HWC array, (3, H, W) uint8 tensor and parsed region boxes."""

    def __init__(self, name: str):
        self.name = name
        self.array = _photo_array(name)
        self.tensor = torch.from_numpy(self.array).permute(2, 0, 1).contiguous()
        self.height, self.width = self.array.shape[:2]
        self.size = (self.width, self.height)
        self.box_specs = region_box_specs(self.width, self.height)
        self.boxes = {k: tuple(parse_region(v, self.size).box) for k, v in self.box_specs.items()}

    def __repr__(self) -> str:
        return f"Photo({self.name}, {self.width}x{self.height})"


@pytest.fixture(scope="session")
def photos() -> dict[str, Photo]:
    return {name: Photo(name) for name in PHOTO_NAMES}


def random_boxes(rng: np.random.Generator, width: int, height: int, count: int, integer: bool = False) -> np.ndarray:
    """``count`` random valid region boxes (at least 1 px on each side, inside the image)."""
    out = []
    for _ in range(count):
        bw = float(np.exp(rng.uniform(0.0, np.log(width))))
        bh = float(np.exp(rng.uniform(0.0, np.log(height))))
        bw, bh = max(1.0, min(bw, width)), max(1.0, min(bh, height))
        x1 = float(rng.uniform(0, width - bw))
        y1 = float(rng.uniform(0, height - bh))
        box = [x1, y1, x1 + bw, y1 + bh]
        if integer:
            box = [float(np.floor(box[0])), float(np.floor(box[1])), 0.0, 0.0]
            box[2] = min(float(width), box[0] + max(1.0, float(np.round(bw))))
            box[3] = min(float(height), box[1] + max(1.0, float(np.round(bh))))
        out.append(box)
    return np.asarray(out, dtype=np.float64)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random tiny DynRefer with small vocabularies (3 tags, 3 classes, 3 attributes), saved."""
    import dynrefer
    from dynrefer.model.config import tiny_config

    torch.manual_seed(0)
    model = dynrefer.DynRefer(tiny_config(), tags=["red", "circle", "blue"], categories=["circle", "square", "star"],
                              attributes=["color:red", "color:blue/navy", "pattern:dotted"])
    return model.save_pretrained(tmp_path_factory.mktemp("tiny_model") / "tiny")


def scene_records(folder: Path, seed: int, count: int) -> list[dict]:
    """``count`` generated scenes of ``seed`` saved as ``folder/{i}.png``; their SPEC §5 records, each object a
    region with its box and category (paths relative to ``folder``)."""
    from dynrefer_builtin.synthetic import generate_scene

    records = []
    for i in range(count):
        image, truth = generate_scene(seed, i)
        image.save(folder / f"{i}.png")
        records.append({"image": f"{i}.png", "regions": [{"box": r["box"], "category": r["category"]}
                                                         for r in truth["regions"]]})
    return records


SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@contextmanager
def script_module(name: str):
    """``scripts/NAME.py`` loaded as a module, with ``scripts/`` on the path while it is used (scripts import
    their siblings)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPTS))


def pytest_collection_modifyitems(config, items):
    """``gpu``-marked tests need a CUDA device: skipped (saying so) where PyTorch sees none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; PyTorch sees none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
