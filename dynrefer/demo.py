"""``make demo`` / ``dynrefer demo``: the views engine on a real photo bundled with scikit-image.

Writes ``astronaut.png`` (the photo), ``views.json`` (the ``dynrefer views`` record of four
regions: the face, the mission patch, the small name tag and the shuttle model) and
``views_sheet.png`` (a contact sheet to look at) into the output folder, and returns a short
summary.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import DynReferError

DEMO_REGIONS = {
    "face": (150, 15, 300, 190),
    "mission patch": (132, 345, 210, 425),
    "name tag": (278, 338, 330, 378),
    "shuttle model": (355, 0, 470, 285),
}


def demo_photo():
    """scikit-image's astronaut photo (512×512 RGB uint8 array)."""
    try:
        from skimage import data
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise DynReferError(
            "the demo needs scikit-image for its bundled photos: pip install 'dynrefer[demo]'"
        ) from exc
    return data.astronaut()


def run_demo(out: Path) -> dict:
    """Run the demo into folder ``out``; returns a summary dict (also the printed JSON)."""
    from PIL import Image

    from .cli import run_views

    out.mkdir(parents=True, exist_ok=True)
    photo = out / "astronaut.png"
    Image.fromarray(demo_photo()).save(photo)
    record = run_views(photo, list(DEMO_REGIONS.values()), sheet=out / "views_sheet.png")
    (out / "views.json").write_text(json.dumps(record, indent=1))
    return {
        "image": str(photo),
        "views_json": str(out / "views.json"),
        "contact_sheet": str(out / "views_sheet.png"),
        "regions": [
            {"name": name, "box": list(box), "views_t": [v["t"] for v in region["views"]]}
            for (name, box), region in zip(DEMO_REGIONS.items(), record["regions"])
        ],
    }
