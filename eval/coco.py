"""COCO region recognition with ground-truth boxes (SPEC §1.6, §6).

Protocol: zero-shot with the VG v1.2 checkpoint. COCO val2017 instances prepared by
``dynrefer prepare coco`` (``OUT.jsonl`` + ``OUT.categories.json``); every ground-truth box
is scored against the 80 class prompts "the {class}"; top-1 accuracy of the argmax, and COCO
box mAP (pycocotools) from every class's score (``--all-scores``). Published: 91.8 % top-1.

    python eval/coco.py --model checkpoints/vg1.2_5e --data data/coco_val2017.jsonl \
        --classes data/coco_val2017.categories.json --image-root data/coco --split val --out-dir runs/eval_coco
"""

from runner import main

if __name__ == "__main__":
    main("recognition", __doc__.split("\n")[0], tasks=("category",), all_scores=True, classes=True)
