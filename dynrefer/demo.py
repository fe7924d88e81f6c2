"""``make demo`` / ``dynrefer demo``: the built-in model on a generated scene and on a real photo.

Writes into the output folder:

* ``scene.png``, ``scene.json``, ``scene_described.png``: a generated scene (bundled in
  ``dynrefer/builtin/examples/``: seed 2026, index 3 of the built-in project's generator, not one the
  built-in model was trained on) with every object described by the built-in model (``describe`` record,
  SPEC §5) next to the generator's ground truth;
* ``astronaut.png``, ``astronaut.json``, ``astronaut_described.png``: scikit-image's astronaut
  photo with four regions (face, mission patch, name tag, shuttle model) described the same
  way — the built-in model only knows scenes of shapes, so expect shape words here;
* ``views.json`` and ``views_sheet.png``: the ``dynrefer views`` record and contact sheet of
  the photo's regions (which views the greedy pHash search picked);
* ``summary.json``: what the printed table shows.
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
EXAMPLES = Path(__file__).resolve().parent / "builtin" / "examples"


def example_scene():
    """The bundled generated scene: ``(PIL image, ground-truth record)`` (SPEC §5; ``record["source"]`` names the
    generator's seed and index; the built-in model was trained on seed 42)."""
    from PIL import Image

    record = json.loads((EXAMPLES / "scene.json").read_text())
    with Image.open(EXAMPLES / record["image"]) as image:
        return image.convert("RGB"), record


def demo_photo():
    """scikit-image's astronaut photo (512×512 RGB uint8 array)."""
    try:
        from skimage import data
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise DynReferError(
            "the demo needs scikit-image for its bundled photos: pip install 'dynrefer[demo]'"
        ) from exc
    return data.astronaut()


def _row(name: str, region: dict, truth: str = "") -> dict:
    attributes = region.get("attributes") or []
    return {
        "region": name,
        "truth": truth,
        "category": region["category"][0] if region.get("category") else None,
        "attributes": [a for a, _ in attributes[:3]],
        "caption": region.get("caption"),
    }


def format_table(rows: list[dict]) -> str:
    """A plain-text table of the demo rows (one line a region; ``truth`` for generated objects)."""
    head = ("region", "truth", "category", "top attributes", "caption")
    cells = [(r["region"], r.get("truth") or "", r["category"] or "", ", ".join(r["attributes"]), r["caption"] or "")
             for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head[:-1])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  " + head[-1]]
    for c in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths)) + "  " + c[-1])
    return "\n".join(lines)


def run_demo(out: Path, model="builtin") -> dict:
    """Run the demo into folder ``out``; returns the summary (``summary.json``)."""
    from PIL import Image

    from .images import load_image
    from .inference.predictor import Predictor
    from .view_records import run_views
    from .visualize import describe_sheet

    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(model)

    scene, truth = example_scene()
    scene_path = out / "scene.png"
    scene.save(scene_path)
    boxes = [r["box"] for r in truth["regions"]]
    scene_record = predictor.describe(scene_path, boxes, image_label=scene_path.name)
    (out / "scene.json").write_text(json.dumps(scene_record, indent=1) + "\n")
    describe_sheet(load_image(scene_path), scene_record, out / "scene_described.png")

    photo = out / "astronaut.png"
    Image.fromarray(demo_photo()).save(photo)
    photo_record = predictor.describe(photo, list(DEMO_REGIONS.values()), image_label=photo.name)
    (out / "astronaut.json").write_text(json.dumps(photo_record, indent=1) + "\n")
    describe_sheet(load_image(photo), photo_record, out / "astronaut_described.png")
    views = run_views(photo, list(DEMO_REGIONS.values()), sheet=out / "views_sheet.png")
    views["image"] = photo.name  # relative to the folder, as in astronaut.json
    (out / "views.json").write_text(json.dumps(views, indent=1) + "\n")

    rows = []
    for gt, region in zip(truth["regions"], scene_record["regions"]):
        p = gt["parts"]
        rows.append(_row(f"scene #{gt['id']}", region, truth=f"{p['size']} {p['pattern']} {p['color']} {p['shape']}"))
    rows += [_row(name, region) for name, region in zip(DEMO_REGIONS, photo_record["regions"])]
    scene_correct = sum(r["category"] == gt["category"] for r, gt in zip(rows, truth["regions"]))
    summary = {
        "model": str(model),
        "scene": {"image": str(scene_path), "seed": truth["source"]["seed"], "index": truth["source"]["index"],
                  "record": str(out / "scene.json"), "picture": str(out / "scene_described.png"),
                  "category_correct": f"{scene_correct}/{len(truth['regions'])}"},
        "photo": {"image": str(photo), "record": str(out / "astronaut.json"),
                  "picture": str(out / "astronaut_described.png"),
                  "views_json": str(out / "views.json"), "contact_sheet": str(out / "views_sheet.png")},
        "regions": rows,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
