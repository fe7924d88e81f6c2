"""``dynrefer index``: embed every region of a collection once, into an index folder that ``dynrefer search``
queries (docs/search.md).

    dynrefer index (IMAGE ... | --regions FILE.jsonl [--image-root DIR]) --out INDEX [--model builtin|DIR]
                   [--proposals default|sam:CKPT|file:PATH] [--max-regions K] [--kind flat|hnsw]
                   [--batch-size IMAGES] [--progress/--no-progress]

Images without given regions get proposals (default: the default proposer). Adding to an existing index
appends; records already in it (an image file and its place among that file's records) are skipped, so an
interrupted run, rerun, resumes; the model must be the index's (by fingerprint).
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("index", help="embed the regions of a collection for search",
                              description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="*", help="image files (their regions come from --proposals)")
    p.add_argument("--regions", default=None, metavar="FILE.jsonl",
                   help="SPEC §5 records: images and their regions (records without regions use --proposals)")
    p.add_argument("--image-root", default=None, help="with --regions: image paths are relative to this")
    p.add_argument("--out", required=True, help="the index folder (created, or appended to)")
    p.add_argument("--model", default="builtin", help="'builtin' (default) or a model folder")
    p.add_argument("--proposals", default=None, metavar="SOURCE",
                   help="regions of images that list none: default, sam:CHECKPOINT or file:PATH (default: default)")
    p.add_argument("--max-regions", type=int, default=100, help="proposals per image (100)")
    p.add_argument("--nms-iou", type=float, default=0.5, help="proposals: duplicates above this IoU go (0.5)")
    p.add_argument("--kind", choices=("flat", "hnsw"), default=None,
                   help="vector index for by-example search of a new index: flat (exact, default) or hnsw "
                        "(approximate, large); an existing index keeps its own")
    p.add_argument("--batch-size", type=int, default=4, help="images per engine pass (4)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="the progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ..search import build_index

    if args.batch_size < 1 or args.max_regions < 1:
        raise InputError("--batch-size and --max-regions must be at least 1")
    summary = build_index(args.out, images=args.images, regions_file=args.regions, image_root=args.image_root,
                          model=args.model, proposals=args.proposals, max_regions=args.max_regions,
                          nms_iou=args.nms_iou, kind=args.kind, batch_size=args.batch_size,
                          progress=sys.stderr.isatty() if args.progress is None else args.progress)
    print(json.dumps(summary))
    return 0
