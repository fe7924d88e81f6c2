"""Visual Genome v1.2 dense captioning mAP (SPEC §1.6, §6).

Protocol: the VG v1.2 dense-captioning test split (``dynrefer prepare vg-densecap``). With
ground-truth boxes (the published 47.6): every ground-truth box is described and scored by its
caption score (``exp`` of the beam score). With ``--proposals P.jsonl`` (records with region
``box`` and ``score``, e.g. a detector's output in the project format): the proposals are
described instead and keep their detector score as the detection confidence. The official
mAP: ground truth merged at IoU ≥ 0.7, detections matched by IoU, METEOR against the merged
references, AP over IoU {0.3..0.7} × METEOR {0..0.25}; images without predictions are skipped
unless ``--strict``. Model: the VG v1.2 checkpoint.

    python eval/vg_densecap.py --model checkpoints/vg1.2_5e --data data/vg_densecap.jsonl \
        --image-root data/vg/images --out-dir runs/eval_vg_densecap [--proposals proposals.jsonl]
"""

from runner import main

if __name__ == "__main__":
    main("densecap", __doc__.split("\n")[0], tasks=("caption", "tags"), proposals=True)
