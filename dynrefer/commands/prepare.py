"""``dynrefer prepare NAME --src DIR --out OUT.jsonl`` (registered by :func:`dynrefer.cli.build_parser`).

Converts a public dataset, as distributed, into the project JSONL (SPEC §5): one file with
every split, each record carrying its ``split``. The summary — images and regions per
split, what was dropped and why, the tagger used, extra files written — is printed as one
JSON object on stdout. Bad input raises :class:`~dynrefer.errors.InputError` naming the file
and the problem (the CLI prints it as one line and exits with 2).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..prepare.coco import OVAD, convert_coco, convert_ovad
from ..prepare.glamm import GLAMM_REFCOCOG, GLAMM_VG, convert_glamm_refcocog, convert_glamm_vg
from ..prepare.refcocog import INSTANCES, REFS, convert_refcocog
from ..prepare.tags import TAGGERS
from ..prepare.vg import DENSECAP_MAX_WORDS, DENSECAP_SPLITS, IMAGE_DATA, REGIONS, convert_vg, convert_vg_densecap

_HELP = {
    "refcocog": "RefCOCOg: refs(umd).p + instances.json, all splits (region captioning training / eval)",
    "glamm-refcocog": "GLaMM's RefCOCOg val captions (finetune_refcocog_val_captions.json), the reported protocol",
    "glamm-vg": "GLaMM's Visual Genome one-region-per-image test file (test_caption.json), the reported protocol",
    "vg": "Visual Genome region_descriptions.json + image_data.json (optional split file)",
    "vg-densecap": "Visual Genome v1.2 on the DenseCap split (dense captioning benchmark)",
    "coco": "COCO instances_*.json (region recognition ground truth)",
    "ovad": "OVAD annotation JSON (open-vocabulary attribute detection, box oracle)",
}
NAMES = tuple(_HELP)


def _common(p, *, src_help: str, tags: bool = True, masks: bool = False) -> None:
    p.add_argument("--src", required=True, help=src_help)
    p.add_argument("--out", required=True, help="output JSONL file (every split in one file)")
    p.add_argument(
        "--image-prefix",
        default="",
        metavar="DIR",
        help="folder prepended to every image path (default: the paths as the source names them)",
    )
    if tags:
        p.add_argument(
            "--tagger",
            choices=TAGGERS,
            default="auto",
            help="tag parser: spaCy (the 'nlp' extra), the simple stop-word fallback, or auto (default)",
        )
    if masks:
        p.add_argument(
            "--no-masks", dest="masks", action="store_false", help="do not convert segmentations to RLE masks"
        )


def register(subparsers) -> None:
    """Add the ``prepare`` sub-command (one sub-command per converter) to the ``dynrefer`` parser."""
    p = subparsers.add_parser(
        "prepare",
        help="convert a public dataset to the project JSONL",
        description="Convert a public dataset, as distributed, into the project JSONL (every split in one file) "
        "and print a JSON summary with the image and region counts per split.",
    )
    sub = p.add_subparsers(dest="converter", metavar="NAME", parser_class=type(p))
    sub.required = True

    c = sub.add_parser("refcocog", help=_HELP["refcocog"], description=_HELP["refcocog"])
    _common(c, src_help=f"folder holding {REFS} and {INSTANCES}", masks=True)
    c.add_argument("--refs", default=REFS, help=f"refs pickle inside --src (default {REFS}; e.g. 'refs(google).p')")
    c.add_argument("--instances", default=INSTANCES, help=f"instances file inside --src (default {INSTANCES})")

    c = sub.add_parser("glamm-refcocog", help=_HELP["glamm-refcocog"], description=_HELP["glamm-refcocog"])
    _common(c, src_help=f"{GLAMM_REFCOCOG} or the folder holding it")
    c.add_argument("--file", default=GLAMM_REFCOCOG, help="file name inside --src when --src is a folder")
    c.add_argument(
        "--split", default="val", choices=("train", "val", "test"), help="split of every record (default val)"
    )

    c = sub.add_parser("glamm-vg", help=_HELP["glamm-vg"], description=_HELP["glamm-vg"])
    _common(c, src_help=f"{GLAMM_VG} or the folder holding it")
    c.add_argument("--file", default=GLAMM_VG, help="file name inside --src when --src is a folder")
    c.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="split of every record (default test)"
    )

    for name in ("vg", "vg-densecap"):
        c = sub.add_parser(name, help=_HELP[name], description=_HELP[name])
        _common(c, src_help=f"folder holding {REGIONS} and {IMAGE_DATA}")
        if name == "vg":
            c.add_argument(
                "--splits",
                default=None,
                metavar="FILE",
                help='optional split file {"train": [image ids], "val": [...], "test": [...]} (in --src or a path)',
            )
            c.add_argument(
                "--max-words",
                type=int,
                default=0,
                help="drop regions whose phrase has more words (default 0: keep all)",
            )
        else:
            c.add_argument(
                "--splits",
                default=DENSECAP_SPLITS,
                metavar="FILE",
                help=f"DenseCap split file (in --src or a path; default {DENSECAP_SPLITS})",
            )
            c.add_argument(
                "--max-words",
                type=int,
                default=DENSECAP_MAX_WORDS,
                help=f"drop regions whose phrase has more words "
                f"(default {DENSECAP_MAX_WORDS}, DenseCap's rule; 0 keeps all)",
            )
        c.add_argument(
            "--url-paths",
            action="store_true",
            help="image paths from each image's url (VG_100K/ID.jpg, VG_100K_2/ID.jpg) instead of ID.jpg",
        )
        c.add_argument("--regions", default=REGIONS, help=f"region descriptions file inside --src (default {REGIONS})")
        c.add_argument("--image-data", default=IMAGE_DATA, help=f"image data file inside --src (default {IMAGE_DATA})")

    c = sub.add_parser("coco", help=_HELP["coco"], description=_HELP["coco"])
    _common(
        c,
        src_help="an instances_*.json file or a folder whose instances_*.json files are all converted",
        tags=False,
        masks=True,
    )
    c.add_argument(
        "--split",
        default=None,
        choices=("train", "val", "test"),
        help="split of every record (default: from each file name)",
    )
    c.add_argument("--keep-crowd", action="store_true", help='keep iscrowd annotations, flagged "iscrowd": true')

    c = sub.add_parser("ovad", help=_HELP["ovad"], description=_HELP["ovad"])
    _common(c, src_help=f"the OVAD annotation JSON or the folder holding it ({OVAD})", tags=False, masks=True)
    c.add_argument("--file", default=OVAD, help=f"file name inside --src when --src is a folder (default {OVAD})")
    c.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="split of every record (default test)"
    )

    p.set_defaults(func=_run)


def _check_out_is_not_a_source(src, out) -> None:
    """``--out`` must not replace the downloaded data: ``--src`` itself, or an existing file in it that is
    not a JSONL (the sources are JSON / pickle files)."""
    src, out = Path(src).resolve(), Path(out).resolve()
    inside = src.is_dir() and out.parent == src and out.is_file() and out.suffix != ".jsonl"
    if out == src or inside:
        raise InputError(f"--out '{out}' would overwrite the source data in --src; write a .jsonl elsewhere")


def run(args) -> dict:
    """Run the converter chosen by parsed ``args``; returns its summary."""
    _check_out_is_not_a_source(args.src, args.out)
    common = {"image_prefix": args.image_prefix}
    name = args.converter
    if name == "refcocog":
        return convert_refcocog(
            args.src, args.out, refs=args.refs, instances=args.instances, tagger=args.tagger, masks=args.masks, **common
        )
    if name == "glamm-refcocog":
        return convert_glamm_refcocog(
            args.src, args.out, file=args.file, split=args.split, tagger=args.tagger, **common
        )
    if name == "glamm-vg":
        return convert_glamm_vg(args.src, args.out, file=args.file, split=args.split, tagger=args.tagger, **common)
    if name in ("vg", "vg-densecap"):
        fn = convert_vg if name == "vg" else convert_vg_densecap
        return fn(
            args.src,
            args.out,
            splits=args.splits,
            max_words=args.max_words,
            regions=args.regions,
            image_data=args.image_data,
            url_paths=args.url_paths,
            tagger=args.tagger,
            **common,
        )
    if name == "coco":
        return convert_coco(
            args.src, args.out, split=args.split, keep_crowd=args.keep_crowd, masks=args.masks, **common
        )
    return convert_ovad(args.src, args.out, file=args.file, split=args.split, masks=args.masks, **common)


def _run(args) -> int:
    print(json.dumps(run(args), indent=2))
    return 0
