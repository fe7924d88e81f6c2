"""Converters from the public dataset formats to the project JSONL (SPEC §5).

Each converter reads a dataset's files as distributed, writes one JSONL file holding every
split (each record with its ``split``) and returns a summary dict: images and regions per
split, what was dropped and why, the tagger used and any extra file written. Bad input
raises :class:`~dynrefer.errors.InputError` naming the file and the problem.

* ``refcocog`` — ``refs(umd).p`` + ``instances.json``: :func:`convert_refcocog`
* ``glamm-refcocog`` — GLaMM's ``finetune_refcocog_val_captions.json``: :func:`convert_glamm_refcocog`
* ``glamm-vg`` — GLaMM's ``test_caption.json``: :func:`convert_glamm_vg`
* ``vg`` — ``region_descriptions.json`` + ``image_data.json``: :func:`convert_vg`
* ``vg-densecap`` — the same + ``densecap_splits.json``: :func:`convert_vg_densecap`
* ``coco`` — ``instances_*.json``: :func:`convert_coco`
* ``ovad`` — ``ovad2000.json``: :func:`convert_ovad`

The command line is ``dynrefer prepare NAME --src DIR --out OUT.jsonl`` (see
:mod:`dynrefer.commands.prepare`); ``python data_prep/<name>.py --src DIR --out OUT.jsonl``
does the same.
"""

from .coco import convert_coco, convert_ovad
from .glamm import convert_glamm_refcocog, convert_glamm_vg
from .refcocog import convert_refcocog
from .safe_pickle import PlainUnpickler, load_plain_pickle, loads_plain
from .tags import Tagger, parse_tags, simple_tags
from .vg import convert_vg, convert_vg_densecap

CONVERTERS = {
    "refcocog": convert_refcocog,
    "glamm-refcocog": convert_glamm_refcocog,
    "glamm-vg": convert_glamm_vg,
    "vg": convert_vg,
    "vg-densecap": convert_vg_densecap,
    "coco": convert_coco,
    "ovad": convert_ovad,
}

__all__ = [
    "CONVERTERS",
    "PlainUnpickler",
    "Tagger",
    "convert_coco",
    "convert_glamm_refcocog",
    "convert_glamm_vg",
    "convert_ovad",
    "convert_refcocog",
    "convert_vg",
    "convert_vg_densecap",
    "load_plain_pickle",
    "loads_plain",
    "parse_tags",
    "simple_tags",
]
