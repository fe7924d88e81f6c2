"""RefCOCOg region captioning, GLaMM protocol (SPEC §1.6, §6).

Protocol: the GLaMM RefCOCOg file prepared by ``dynrefer prepare glamm-refcocog`` (split ``val``,
the MDETR val annotations GLaMM evaluates on; one record per image, each referred region with its
reference captions); every region is described from its ground-truth box with the model's own view policy
(greedy pHash, n = 3) and
the official tag threshold 0.76 for the control string; captions are scored against the
references, keyed by region, with pycocoevalcap (PTB tokenizer; BLEU-1..4, METEOR, ROUGE-L,
CIDEr, in percent; Java is needed). Use the fine-tuned model (``configs/train/refcocog_ft.yaml``).
Published: METEOR 18.1, CIDEr 115.7.

    python eval/refcocog.py --model checkpoints/refcocog_ft --data data/glamm_refcocog.jsonl \
        --image-root data/coco/train2014 --out-dir runs/eval_refcocog [--devices N --accelerator gpu]
"""

from runner import main

if __name__ == "__main__":
    main("caption", __doc__.split("\n")[0], tasks=("caption", "tags"), tag_threshold=0.76)
