"""``dynrefer search``: regions of an index (``dynrefer index``) by text, by an example region, or classified by
few-shot categories (docs/search.md).

    dynrefer search INDEX --text "red circle" [--negative TEXT ...] [--k 20] [--threshold 0.7]
    dynrefer search INDEX --example IMAGE --box X1 Y1 X2 Y2 [--k 20]
    dynrefer search INDEX --example-region ID [--k 20]
    dynrefer search INDEX --classes-from EXAMPLES.jsonl [--min-similarity 0.7]
    ... [--model builtin|DIR] [--sheet hits.png]

Prints one JSON document ``{"hits": [{"id", "image", "path", "box", "score", "caption", "tags"}, ...]}`` (with
``--classes-from``: ``{"regions": [{"id", "image", "box", "category": [name, similarity] or null}]}``).
"""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("search", help="find regions of an index by text, example or few-shot classes",
                              description=__doc__.split("\n")[0])
    p.add_argument("index", help="an index folder made by dynrefer index")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", default=None, help="what to find (an absent target finds nothing)")
    what.add_argument("--example", default=None, metavar="IMAGE", help="find regions like --box of this image")
    what.add_argument("--example-region", type=int, default=None, metavar="ID", help="find regions like this one")
    what.add_argument("--classes-from", default=None, metavar="EXAMPLES.jsonl",
                      help="classify every region by few-shot classes: SPEC §5 records whose regions have 'category'")
    p.add_argument("--box", nargs=4, type=float, default=None, metavar=("X1", "Y1", "X2", "Y2"),
                   help="with --example: the example region")
    p.add_argument("--negative", action="append", default=[], metavar="TEXT",
                   help="with --text: leave out regions this describes better (repeatable)")
    p.add_argument("--k", type=int, default=20, help="at most this many hits (20)")
    p.add_argument("--threshold", type=float, default=None,
                   help="with --text: the least probability of a hit (0.7; docs/search.md)")
    p.add_argument("--min-similarity", type=float, default=None,
                   help="by example: the least cosine similarity (default: none); --classes-from: below it, no "
                        "class (0.7)")
    p.add_argument("--allow-unknown-words", action="store_true",
                   help="with --text: answer even when the query has words the model never learnt")
    p.add_argument("--model", default="builtin", help="the index's model: 'builtin' (default) or a model folder")
    p.add_argument("--sheet", default=None, metavar="PNG", help="also draw the hits as a contact sheet")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ..records import check_output_path
    from ..search import RegionIndex
    from ..search.query import check_floor

    if args.k < 1:
        raise InputError(f"--k must be at least 1, got {args.k}")
    if (args.example is None) != (args.box is None):
        raise InputError("--example IMAGE and --box X1 Y1 X2 Y2 go together")
    if (args.negative or args.threshold is not None or args.allow_unknown_words) and args.text is None:
        raise InputError("--negative, --threshold and --allow-unknown-words are used with --text")
    if args.min_similarity is not None and args.text is not None:
        raise InputError("--min-similarity is used with --example, --example-region or --classes-from")
    check_floor(args.min_similarity)  # (also the least similarity of a by-example hit)
    if args.sheet is not None:
        if args.classes_from is not None or not args.sheet.lower().endswith(".png"):
            raise InputError("--sheet takes a .png path, for --text or --example searches")
        check_output_path(args.sheet, "--sheet")
    index = RegionIndex(args.index)
    try:
        answer = _answer(args, index)
    finally:
        index.close()
    print(json.dumps(answer), flush=True)  # the answer first: a sheet that fails loses nothing
    if args.sheet is not None:
        from ..visualize import hits_sheet

        hits_sheet(answer["hits"], args.sheet)
    return 0


def _answer(args, index) -> dict:
    from ..inference.predictor import Predictor
    from ..search import embed_regions, few_shot_classifier, search_text, search_vector, stored_vector

    low = -1.0 if args.min_similarity is None else args.min_similarity
    if args.example_region is not None:  # the stored embedding: no model needed
        vector = stored_vector(index, args.example_region)
        return {"hits": search_vector(index, vector, k=args.k, min_similarity=low, exclude=args.example_region)}
    predictor = Predictor(args.model)
    index.check_model(predictor.model)
    if args.text is not None:
        given = {} if args.threshold is None else {"threshold": args.threshold}
        return search_text(index, predictor.model, args.text, negatives=args.negative, k=args.k,
                           allow_unknown=args.allow_unknown_words, **given)
    if args.example is not None:
        vector = embed_regions(predictor, args.example, [list(args.box)])[0]
        return {"hits": search_vector(index, vector, k=args.k, min_similarity=low)}
    classifier = few_shot_classifier(predictor, args.classes_from,
                                     min_similarity=args.min_similarity)
    return {"regions": [{"id": r["id"], "image": r["image"], "box": r["box"], "category": c}
                        for r, c in zip(index.all_rows(), classifier.classify(index.embeddings()))]}
