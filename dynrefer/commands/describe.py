"""``dynrefer describe``: caption, tags, attributes and category of regions of an image.

    dynrefer describe IMAGE [--box X1 Y1 X2 Y2 ...] [--box-format xyxy|xywh] [--polygon X Y X Y ...]
                      [--mask MASK.png] [--model builtin|DIR] [--tasks caption,tags,attributes,category]
                      [--classes a,b,c] [--attributes a,b,c] [--num-views N] [--all-scores]
                      [--out result.json] [--viz result.png]

Regions keep the order in which they are given (boxes, polygons and masks interleaved).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError
from ..records import check_output_path, write_text_atomic


class _RegionAction(argparse.Action):
    """Append ``(kind, values)`` to ``namespace.regions`` in command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        regions = getattr(namespace, "regions", None) or []
        regions.append((self.dest, values))
        namespace.regions = regions


def register(subparsers) -> None:
    p = subparsers.add_parser("describe", help="caption, tags, attributes and category of image regions",
                              description=__doc__.split("\n")[0])
    p.add_argument("image", help="image file")
    p.add_argument("--box", nargs=4, type=float, action=_RegionAction, metavar=("X1", "Y1", "X2", "Y2"),
                   help="a region box (repeatable); see --box-format")
    p.add_argument("--polygon", nargs="+", type=float, action=_RegionAction, metavar="XY",
                   help="a region polygon x0 y0 x1 y1 ... (repeatable)")
    p.add_argument("--mask", action=_RegionAction, metavar="MASK.png",
                   help="a mask image of the image's size, non-zero pixels = region (palette index, grey or "
                        "16-bit value, any colour channel; transparent pixels excluded) (repeatable)")
    p.add_argument("--box-format", choices=["xyxy", "xywh"], default="xyxy", help="how --box numbers are read")
    p.add_argument("--model", default="builtin", help="'builtin' (default) or a model folder")
    p.add_argument("--tasks", default="caption,tags,attributes,category",
                   help="comma-separated: caption,tags,attributes,category (default: all)")
    p.add_argument("--classes", default=None, help="comma-separated class names (default: the model's)")
    p.add_argument("--attributes", default=None, help="comma-separated attribute names (default: the model's)")
    p.add_argument("--classes-from", default=None, metavar="EXAMPLES.jsonl",
                   help="few-shot classes: SPEC §5 records whose regions carry 'category' (a few each); each region's "
                        "category is the nearest class prototype, or null below --min-similarity (docs/search.md)")
    p.add_argument("--min-similarity", type=float, default=None,
                   help="with --classes-from: the none-of-these floor (0.7)")
    p.add_argument("--num-views", type=int, default=None,
                   help="views per region; must be the model's own (a check: its fusion is sized for it)")
    p.add_argument("--all-scores", action="store_true", help="list every tag and every class with its score")
    p.add_argument("--device", default=None,
                   help="cpu (default), cuda, cuda:N, mps or auto (a GPU when there is one)")
    p.add_argument("--dtype", default=None, choices=("auto", "bfloat16", "float16"),
                   help="autocast precision; auto: bfloat16 on a GPU that has it, float32 elsewhere "
                        "(docs/precision.md)")
    p.add_argument("--all", action="store_true", help="describe everything: regions from --proposals")
    p.add_argument("--proposals", default=None, metavar="SOURCE",
                   help="with --all / --point: default (segmentation, no weights), sam:CHECKPOINT (Segment "
                        "Anything) or file:PATH (JSONL records or COCO results made elsewhere)")
    p.add_argument("--point", nargs=2, type=float, action="append", metavar=("X", "Y"),
                   help="click-to-region: with sam:, SAM's mask for the point; else the most stable proposal "
                        "containing it (repeatable; uses --proposals)")
    p.add_argument("--max-regions", type=int, default=100, help="with --all: at most this many regions (100)")
    p.add_argument("--nms-iou", type=float, default=0.5, help="with --all: duplicates above this IoU go (0.5)")
    p.add_argument("--out", default=None, help="write the JSON record here instead of printing it")
    p.add_argument("--viz", default=None, help="draw each region with its caption into this PNG")
    p.add_argument("--viz-top", type=int, default=None, metavar="K",
                   help="with --all: draw only the K best regions (default: every one; 20 keeps a photo readable); "
                        "the JSON holds every one")
    p.set_defaults(func=run, regions=None)


def _region_specs(items, image_size) -> list:
    import numpy as np

    from ..images import load_mask

    specs = []
    for kind, value in items:
        if kind == "box":
            specs.append(list(value))
        elif kind == "polygon":
            if len(value) % 2:
                raise InputError(f"--polygon takes x y pairs, got an odd count of {len(value)} numbers")
            if len(value) < 6:
                raise InputError(f"--polygon needs at least 3 x y pairs, got {len(value)} numbers")
            specs.append({"polygon": list(value)})
        else:
            path = Path(value)
            mask = load_mask(path)  # ImageLoadError names the file on failure
            if (mask.shape[1], mask.shape[0]) != tuple(image_size):
                raise InputError(f"mask '{path}' is {mask.shape[1]}x{mask.shape[0]}, the image is "
                                 f"{image_size[0]}x{image_size[1]}")
            specs.append({"mask": np.asarray(mask)})
    return specs


def resolve_device(name: str | None):
    """``--device``: None / ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (CUDA, else MPS, else the CPU); a
    device that is not there is an :class:`InputError`."""
    import torch

    if name is None or name == "cpu":
        return None
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps") if mps is not None and mps.is_available() else None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"--device must be cpu, cuda, cuda:N, mps or auto, got {name!r}") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise InputError(f"--device {name}: no such CUDA device is visible to PyTorch here (use cpu or auto)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(f"--device {name}: MPS is not available here (use cpu or auto)")
    if device.type not in ("cuda", "mps"):
        raise InputError(f"--device must be cpu, cuda, cuda:N, mps or auto, got {name!r}")
    return device


def run(args) -> int:
    from ..images import load_image
    from ..inference.engine import check_tasks, check_vocabulary
    from ..inference.predictor import Predictor
    from ..model.io import resolve_model_dir
    from ..regions import parse_regions

    if (args.all or args.point) and args.regions:
        raise InputError("--all and --point describe proposals' regions: leave out --box, --polygon and --mask")
    if args.all and args.point:
        raise InputError("give --all or --point, not both")
    if args.proposals and not (args.all or args.point):
        raise InputError("--proposals is used by --all and --point")
    if not args.regions and not args.all and not args.point:
        raise InputError("give at least one region with --box, --polygon or --mask (or --all, or --point X Y)")
    if args.viz_top is not None and (args.viz_top < 0 or not args.all):
        raise InputError("--viz-top takes a count of 1 or more (0 or none: every region), with --all")
    if args.viz is not None and not args.viz.lower().endswith(".png"):
        raise InputError(f"--viz must name a .png file, got {args.viz!r}")
    for option, value in (("--out", args.out), ("--viz", args.viz)):
        if value is not None:
            check_output_path(value, option)  # before the model loads
    image = load_image(args.image)
    size = (int(image.shape[2]), int(image.shape[1]))
    device = resolve_device(args.device)  # (a model proposal source runs there too)
    proposals = None
    if args.all or args.point:
        import numpy as np

        from ..proposals import Proposals, proposal_source

        source = proposal_source(args.proposals or "default", device=device)
        if args.point:
            for x, y in args.point:
                if not (0 <= x < size[0] and 0 <= y < size[1]):
                    raise InputError(f"--point {x:g} {y:g} is outside the {size[0]}x{size[1]} image")
            if hasattr(source, "at_points"):  # a segmenter: the mask it predicts for each click
                picked = source.at_points(image, args.point)
            else:  # a set of proposals: the most stable one containing the click
                found = source(args.image).inside(size)
                picked = [found.at_point(x, y) for x, y in args.point]
            for (x, y), hit in zip(args.point, picked):
                if len(hit.boxes) == 0:
                    raise InputError(f"no proposal contains --point {x:g} {y:g}")
            scored = all(h.scores is not None for h in picked)
            proposals = Proposals(np.concatenate([h.boxes for h in picked]),
                                  np.concatenate([h.scores for h in picked]) if scored else None)
        else:
            proposals = source(args.image).select(args.max_regions, args.nms_iou, size)
        specs = proposals.regions()
        if not specs:
            raise InputError(f"the proposals hold no region for '{args.image}'")
    else:
        specs = _region_specs(args.regions, size)
    # every input checked before the model loads (seconds): regions, tasks, vocabularies, the model folder
    parse_regions(specs, size, box_format=args.box_format)
    tasks = check_tasks(args.tasks)
    if args.min_similarity is not None and args.classes_from is None:
        raise InputError("--min-similarity is used with --classes-from")
    if args.classes_from is not None and args.classes is not None:
        raise InputError("give --classes or --classes-from, not both")
    classes, attributes = check_vocabulary(args.classes, "classes"), check_vocabulary(args.attributes, "attributes")
    if args.model != "builtin":
        resolve_model_dir(args.model)
    predictor = Predictor(args.model, device=device, dtype=args.dtype)
    record, tokens = predictor.describe_many(
        [image], [specs], tasks=tasks, num_views=args.num_views, box_format=args.box_format, classes=classes,
        attributes=attributes, all_scores=args.all_scores, image_labels=[str(args.image)], return_tokens=True)
    record = record[0]
    if args.classes_from is not None:
        from ..search import few_shot_categories

        few_shot_categories(predictor, record, tokens, args.classes_from, min_similarity=args.min_similarity)
    if proposals is not None and args.all:
        from ..proposals import best_first

        record = best_first(record)
    if args.viz:
        from ..visualize import describe_sheet

        top = args.viz_top or 0
        shown = {**record, "regions": record["regions"][:top]} if args.all and top > 0 else record
        describe_sheet(image, shown, args.viz)
    text = json.dumps(record)
    if args.out:
        write_text_atomic(args.out, text + "\n")  # a full disk or an interruption never leaves a file behind
    else:
        print(text)
    return 0
