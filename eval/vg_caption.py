"""Visual Genome region captioning, GLaMM one-region-per-image protocol (SPEC §1.6, §6).

Protocol: the GLaMM VG test file prepared by ``dynrefer prepare glamm-vg``; each region is
described from its ground-truth box (greedy pHash views, n = 3) with the official tag
threshold 0.8; captions against the references keyed by region with pycocoevalcap (BLEU,
METEOR, ROUGE-L, CIDEr in percent; Java is needed). Model: the VG v1.2 checkpoint.
Published: METEOR 21.2, CIDEr 190.5.

    python eval/vg_caption.py --model checkpoints/vg1.2_5e --data data/glamm_vg.jsonl \
        --image-root data/vg/images --out-dir runs/eval_vg_caption
"""

from runner import main

if __name__ == "__main__":
    main("caption", __doc__.split("\n")[0], tasks=("caption", "tags"), tag_threshold=0.8)
