"""OVAD open-vocabulary attribute detection, box oracle (SPEC §1.6, §6).

Protocol: zero-shot (no training on OVAD) with the VG v1.2 checkpoint. The OVAD annotations
prepared by ``dynrefer prepare ovad`` (``OUT.jsonl`` + ``OUT.attributes.json``); every
ground-truth box is described with the 117 attributes as queries (474 prompts: "the {attr}
{noun}", "the {noun} is {attr}", and for "has" attributes "the {attr} {type} {noun}", "the
{noun} has {attr} {type}"; score = max over an attribute's prompts). Per attribute, AP over
the boxes annotated positive or negative; ``map`` and the head / medium / tail means, in
percent. Published: 29.2 mAP.

    python eval/ovad.py --model checkpoints/vg1.2_5e --data data/ovad.jsonl \
        --attributes data/ovad.attributes.json --image-root data/coco/val2017 --out-dir runs/eval_ovad
"""

from runner import main

if __name__ == "__main__":
    main("ovad", __doc__.split("\n")[0], tasks=("attributes",), attributes=True)
