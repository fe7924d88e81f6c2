"""``dynrefer convert-official``: the published DynRefer checkpoints → a ``save_pretrained`` folder."""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-official",
        help="convert the published DynRefer / BLIP-2 / EVA checkpoints into a dynrefer model folder",
        description="Convert the paper's checkpoints (LAVIS naming) into a folder that DynRefer.from_pretrained "
                    "and 'dynrefer describe --model DIR' load. Every official tensor is mapped or ignored on "
                    "purpose; anything else fails with its name.",
    )
    p.add_argument("--checkpoint", required=True, help="DynRefer checkpoint (e.g. vg1.2_5e.pth, refcocog_ft.pth)")
    p.add_argument("--eva", default=None, help="LAVIS EVA ViT-g weights (eva_vit_g.pth)")
    p.add_argument("--blip2", default=None, help="BLIP-2 FlanT5-XL checkpoint (.pth) or Hugging Face BLIP-2 folder")
    p.add_argument("--llm", default=None, help="Hugging Face Flan-T5-XL folder")
    p.add_argument("--tags", default=None, help="tag list, one tag per line (the RAM tag list)")
    p.add_argument("--eva-clip-text", default=None, help="EVA-CLIP checkpoint with the text tower (text.*)")
    p.add_argument("--config", default=None,
                   help="model config (name or .yaml/.json; default: the built-in 'official' config; "
                        "configs/official/dynrefer_flant5xl.yaml adds the per-benchmark tag threshold)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="dtype of the saved tensors (bfloat16 halves the folder)")
    p.add_argument("--out", required=True, help="output model folder")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..model.dynrefer import DynRefer
    from ..model.official import convert_official

    model, report = convert_official(DynRefer, args.checkpoint, eva=args.eva, blip2=args.blip2, llm=args.llm,
                                     tags=args.tags,
                                     eva_clip_text=args.eva_clip_text, config=args.config)
    if args.dtype != "float32":
        model = model.to(getattr(torch, args.dtype))
    out = model.save_pretrained(args.out, include_frozen=True)
    (out / "conversion.json").write_text(json.dumps(report, indent=1) + "\n")
    for warning in report["warnings"]:
        print(f"dynrefer: warning: {warning}", file=sys.stderr)
    ignored = len(report["ignored"])
    print(f"converted {report['loaded']} tensors ({ignored} official tensors ignored on purpose, listed in "
          f"{out / 'conversion.json'}) into {out}")
    return 0
