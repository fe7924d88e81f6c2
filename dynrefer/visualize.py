"""Contact sheets for a person to look at: every view of every region, with the region box.

One row per region: the whole image with the region box (red) and each view's crop (one
colour per view) outlined, then each rendered view (``S×S``) with the region box drawn at
its ``box_in_view`` position and its ``t`` written underneath.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .images import tensor_to_pil
from .views import render_crops

VIEW_COLOURS = [(255, 196, 0), (0, 200, 255), (120, 255, 80), (255, 90, 220), (255, 255, 255)]
REGION_COLOUR = (255, 40, 40)
LABEL_HEIGHT = 18


def contact_sheet(image: torch.Tensor, region_views, path, *, tile: int | None = None) -> Path:
    """Write a PNG contact sheet of the selected views of each region.

    Args:
        image: (3, H, W) uint8 RGB tensor.
        region_views: list of :class:`dynrefer.view_selection.RegionViews`.
        path: output file (``.png``); parent folders are created.
        tile: side of each tile in pixels (default: the views' size S).

    Returns:
        The written path.
    """
    from PIL import Image, ImageDraw

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = region_views[0].geometry.size if region_views else 224
    tile = tile or size
    cols = 1 + max((len(rv.geometry.ts) for rv in region_views), default=0)
    rows = max(1, len(region_views))
    sheet = Image.new("RGB", (cols * (tile + 4) + 4, rows * (tile + LABEL_HEIGHT + 4) + 4), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    full = tensor_to_pil(image)
    w, h = full.size
    for r, rv in enumerate(region_views):
        y0 = 4 + r * (tile + LABEL_HEIGHT + 4)
        # Whole image with the view crops and the region box.
        scale = tile / max(w, h)
        thumb = full.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
        overlay = ImageDraw.Draw(thumb)
        for k, crop in enumerate(rv.geometry.crops):
            overlay.rectangle([float(v) * scale for v in crop], outline=VIEW_COLOURS[k % len(VIEW_COLOURS)])
        box = _region_box(rv)
        overlay.rectangle([v * scale for v in box], outline=REGION_COLOUR, width=2)
        sheet.paste(thumb, (4, y0))
        draw.text((4, y0 + tile + 3), f"region {r}", fill=(230, 230, 230))
        pixels = render_crops(image, rv.geometry.crops, size, normalized=False).cpu()
        for k in range(len(rv.geometry.ts)):
            view = tensor_to_pil(pixels[k])
            if tile != size:
                view = view.resize((tile, tile), Image.Resampling.BICUBIC)
            vdraw = ImageDraw.Draw(view)
            bx = np.asarray(rv.geometry.box_in_view[k], dtype=np.float64) * (tile / size)
            bx = np.clip(bx, -1, tile)
            vdraw.rectangle(bx.tolist(), outline=REGION_COLOUR, width=2)
            x0 = 4 + (k + 1) * (tile + 4)
            sheet.paste(view, (x0, y0))
            colour = VIEW_COLOURS[k % len(VIEW_COLOURS)]
            draw.rectangle([x0, y0, x0 + tile - 1, y0 + tile - 1], outline=colour)
            draw.text((x0, y0 + tile + 3), f"t = {float(rv.geometry.ts[k]):.1f}", fill=colour)
    sheet.save(path)
    return path


def _region_box(rv) -> list[float]:
    """The region box in image pixels, recovered from view 0's geometry."""
    from .views import box_from_view

    return box_from_view(rv.geometry.box_in_view[:1], rv.geometry.crops[:1], rv.geometry.size)[0].tolist()


def describe_sheet(image: torch.Tensor, record: dict, path, *, width: int = 900) -> Path:
    """Draw every region of a ``describe`` record with its caption, category and top tags."""
    from PIL import Image, ImageDraw

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = tensor_to_pil(image)
    scale = width / max(full.size)
    shown = full.resize((max(1, round(full.width * scale)), max(1, round(full.height * scale))),
                        Image.Resampling.BICUBIC)
    lines = []
    canvas_draw = ImageDraw.Draw(shown)
    for k, region in enumerate(record["regions"]):
        colour = VIEW_COLOURS[k % len(VIEW_COLOURS)]
        box = [v * scale for v in region["box"]]
        canvas_draw.rectangle(box, outline=colour, width=3)
        canvas_draw.text((box[0] + 3, box[1] + 2), str(region["id"]), fill=colour)
        parts = [f"[{region['id']}] {region.get('caption', '')}"]
        if region.get("category"):
            parts.append(f"category: {region['category'][0]} ({region['category'][1]:.2f})")
        if region.get("tags"):
            parts.append("tags: " + ", ".join(t[0] for t in region["tags"][:5]))
        lines.append((colour, "   ".join(parts)))
    text_h = 16 * len(lines) + 8
    sheet = Image.new("RGB", (shown.width, shown.height + text_h), (24, 24, 24))
    sheet.paste(shown, (0, 0))
    draw = ImageDraw.Draw(sheet)
    for i, (colour, line) in enumerate(lines):
        draw.text((6, shown.height + 4 + 16 * i), line, fill=colour)
    sheet.save(path)
    return path


def hits_sheet(hits: list[dict], path, *, tile: int = 160, columns: int = 5) -> Path:
    """A contact sheet of search hits: each hit's region (with a margin of a quarter of its size), its rank,
    score and caption. ``hits`` carry ``path`` (the image file) and ``box``."""
    from PIL import Image, ImageDraw

    from .images import load_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = max(1, -(-len(hits) // columns))
    sheet = Image.new("RGB", (columns * tile, rows * (tile + 34)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    if not hits:
        draw.text((8, 8), "no hit", fill=(230, 230, 230))
    from .errors import ImageLoadError

    for k, hit in enumerate(hits):
        left, top = (k % columns) * tile, (k // columns) * (tile + 34)
        try:
            image = tensor_to_pil(load_image(hit["path"]))
        except ImageLoadError:  # moved or deleted since it was indexed: a tile that says so
            draw.text((left + 8, top + tile // 2), "image missing", fill=(255, 120, 120))
            draw.text((left + 4, top + tile + 17), str(hit.get("image", ""))[:28], fill=(230, 230, 230))
            continue
        x1, y1, x2, y2 = hit["box"]
        if not (x1 < image.width and y1 < image.height and x2 > 0 and y2 > 0):  # the file changed since indexing
            draw.text((left + 8, top + tile // 2), "image changed", fill=(255, 120, 120))
            continue
        mx, my = (x2 - x1) / 4, (y2 - y1) / 4
        crop = image.crop((max(0, x1 - mx), max(0, y1 - my), min(image.width, x2 + mx), min(image.height, y2 + my)))
        crop.thumbnail((tile, tile))
        sheet.paste(crop, (left + (tile - crop.width) // 2, top + (tile - crop.height) // 2))
        draw.text((left + 4, top + tile + 2), f"#{k + 1} {hit.get('score', 0):.3f}", fill=(255, 220, 120))
        draw.text((left + 4, top + tile + 17), (hit.get("caption") or "")[:28], fill=(230, 230, 230))
    sheet.save(path)
    return path
