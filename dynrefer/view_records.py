"""The ``dynrefer views`` record (SPEC §5): the chosen views of regions of an image, with their geometry, pHash
and candidates; used by the command and the demo."""

from __future__ import annotations


def views_record(image_label, image, regions, results) -> dict:
    """The ``dynrefer views`` JSON record (SPEC §5 shape) for regions and their views."""
    out_regions = []
    for region, rv in zip(regions, results):
        g = rv.geometry
        views = []
        for k in range(len(g.ts)):
            view = {
                "t": float(g.ts[k]),
                "box_t": [float(v) for v in g.box_t[k]],
                "crop": [int(v) for v in g.crops[k]],
                "box_in_view": [float(v) for v in g.box_in_view[k]],
            }
            if rv.phash is not None:
                view["phash"] = rv.phash[k]
            views.append(view)
        out_regions.append(
            {"id": region.id, "box": [float(v) for v in region.box], "views": views, "candidates": rv.candidates}
        )
    return {"image": image_label, "width": int(image.shape[2]), "height": int(image.shape[1]), "regions": out_regions}


def run_views(image_path, boxes, *, box_format="xyxy", policy="greedy", num_views=3, ts=None, size=224,
              hash_flavour="official", seed=0, sheet=None) -> dict:
    """Load an image, parse boxes, select views; return the JSON record (and write a sheet)."""
    import torch

    from .images import load_image
    from .regions import parse_regions
    from .view_selection import select_views

    image = load_image(image_path)
    regions = parse_regions([list(b) for b in boxes], (int(image.shape[2]), int(image.shape[1])), box_format=box_format)
    generator = torch.Generator().manual_seed(seed)
    results = select_views(
        image,
        [r.box for r in regions],
        num_views=num_views,
        policy=policy,
        ts=ts,
        size=size,
        hash_flavour=hash_flavour,
        generator=generator,
        render=False,
        describe_candidates=True,
    )
    if sheet is not None:
        from .visualize import contact_sheet

        contact_sheet(image, results, sheet)
    return views_record(str(image_path), image, regions, results)
