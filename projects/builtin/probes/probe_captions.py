"""Does a trained model *know* a caption part, whatever it generates? A teacher-forced probe.

For every region of the first ``--max-images`` records of ``--split`` of a generated scene set, the
region's first ground-truth caption is rewritten once per possible value of a part (the position
phrase, the size word, the pattern word) and the language head scores each variant given the
region's representation ``R`` and an empty control string (so no tag can give the answer away):
``log p(caption | R)`` summed over its tokens. The part counts as known when the true variant scores
highest. Unlike the generated-caption accuracy of ``eval/synthetic.py``, this does not depend on
decoding (beam search, repetition penalty, the tag threshold) nor on the caption's other words being
right. Prints one JSON line: accuracy per part (%) with its majority-class baseline.

Views: the model's own policy, or ``--policy fixed --t 0.5 1.0``.

Usage: ``python projects/builtin/probes/probe_captions.py --model builtin --data runs/builtin/scenes/scenes.jsonl
[--split val] [--max-images 40] [--policy fixed --t 0.5 1.0]``
"""

from __future__ import annotations

import argparse
import json

from dynrefer_builtin.scene_benchmark import probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-images", type=int, default=40)
    parser.add_argument("--policy", default=None)
    parser.add_argument("--t", type=float, nargs="+", default=None)
    args = parser.parse_args()
    from dynrefer.inference.predictor import Predictor

    model = Predictor(args.model).model
    print(json.dumps(probe(model, args.data, split=args.split, max_images=args.max_images, policy=args.policy,
                           ts=args.t)))


if __name__ == "__main__":
    from dynrefer.errors import run_script

    run_script(main, "probe_captions.py")
