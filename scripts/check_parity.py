"""Check that a converted official checkpoint computes what the original DynRefer code computes.

Reads a parity fixture folder (the format of ``../shared/parity``: the original model at a reduced size in the
official file layouts, the inputs, and the original's outputs stage by stage; its README explains every file),
converts its files with the public converter (:func:`dynrefer.model.official.convert_official`, as
``dynrefer convert-official`` does), runs every stage on the fixture's inputs and prints one JSON line per stage,
``{"stage": .., "max_abs": .., "rel": ..}`` (``rel`` = ``max_abs`` / the original's largest magnitude), then a
last line::

    {"pass": true|false, "regions": n, "captions_fixed_controls": "k/n", "captions_pred": "k/n", "tags": "k/n",
     "attribute_ranking": "k/n", "category": "k/n", "lm_loss_abs_diff": x, ...}

Exit status 0 exactly when everything is within tolerance (:data:`TOLERANCE`): float32 stages within 1e-4 of the
original's largest magnitude, the LM loss within 1e-5, the captions (under the fixed controls, and ``pred``'s fed
``control_words_from_tags``) identical, the tag sets at ``tag_thr`` identical, the attribute ranking and the class
argmax identical, attribute and class scores within 1e-5 of ``pred``; 1 otherwise; 2 for an unreadable fixture.

``--model-out DIR`` keeps the converted model (with the fixture's tag list, attributes, classes and tag threshold),
so that ``dynrefer describe IMAGE --box ... --model DIR --all-scores`` reproduces ``pred``.

Usage: ``python scripts/check_parity.py FIXTURE_DIR [--model-out DIR]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dynrefer.errors import InputError

if __package__ in (None, ""):  # run as a script: the checks live beside it
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from parity_fixture import run_check  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("fixture", help="parity fixture folder (fixture.json, fixture.safetensors, official files)")
    parser.add_argument("--model-out", default=None, help="keep the converted model in this folder")
    args = parser.parse_args(argv)
    try:
        result = run_check(Path(args.fixture), model_out=args.model_out)
    except InputError as err:
        print(f"check_parity: error: {err}", file=sys.stderr)
        return 2
    for line in result["stages"]:
        print(json.dumps(line))
    print(json.dumps(result["summary"]))
    return 0 if result["summary"]["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
