"""The official DynRefer key map, written down as data (used by :mod:`dynrefer.model.official`).

Every tensor of the official model (LAVIS naming) maps to one tensor of ours (or to a slice of one), or is
listed in an ``IGNORED`` table with the reason. Nothing else is accepted: an official key that matches no
rule fails the conversion with its name.

Sources the names were taken from (facts only):

* callsys/DynRefer ``dynrefer/models/dynrefer_t5.py``: ``DynReferT5(Blip2T5)`` adds ``cvem_align =
  CustomDCNv4(C)`` (``value_proj``, ``output_proj``, ``offset_mask_dw`` Conv2d(2C, C, 3, groups=C),
  ``offset_mask`` Linear(C, 112)), ``cvem_mlp = Sequential(Linear(C*n, C), ReLU, Linear(C, C))`` (indices 0
  and 2), ``cem_memory`` (t5 model_dim), ``clip_embeds`` / ``att_embeds`` / ``ov_embeds`` (frozen text
  embeddings stored as parameters), ``tag_head`` / ``attr_head`` (BERT, embeddings and self-attention
  deleted: ``encoder.layer.N.crossattention.{self.query,self.key,self.value,output.dense,output.LayerNorm}``,
  ``intermediate.dense``, ``output.{dense,LayerNorm}``), ``tag_vision_proj``, ``tag_text_proj``,
  ``tag_fc``, ``attr_text_proj``, ``attr_vision_proj``, ``attr_fc``, ``attr_t``, ``attr_b``,
  ``text_encoder`` (EVA-CLIP ``TextTransformer``); trainable = names containing cvem, cem, tag, attr,
  Qformer, t5_proj (LAVIS saves only trainable parameters and buffers).
* LAVIS ``blip2_t5.py`` / ``blip2.py`` / ``Qformer.py``: ``query_tokens`` (1, 32, 768), ``ln_vision``,
  ``visual_encoder``, ``Qformer.bert.{embeddings,encoder.layer.N.{attention,crossattention,intermediate,
  output,intermediate_query,output_query}}``, ``Qformer.cls``, ``t5_proj`` Linear(768, d_model),
  ``t5_model``; ``Blip2T5`` sets ``Qformer.cls``, word/position embeddings and per-layer ``intermediate`` /
  ``output`` to None (the text side).
* callsys/DynRefer ``dynrefer/models/eva_clip/eva_vit.py`` (LAVIS's ``eva_vit.py``): ``cls_token``,
  ``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv (no bias), attn.q_bias, attn.v_bias,
  attn.proj, norm2, mlp.fc1, mlp.fc2}``; no layer scale, no relative position bias for EVA ViT-g.
* callsys/DynRefer ``dynrefer/models/eva_clip/eva_model.py``: EVA-CLIP ``text.{token_embedding,
  positional_embedding, transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc,
  mlp.c_proj}, ln_final, text_projection, logit_scale}`` (open_clip's names).
* Ours: timm ``eva_giant_patch14_224`` inside open_clip ``EVA01-g-14`` (``encoder.clip.visual.trunk.*``),
  transformers ``Blip2QFormerModel`` (``qformer.qformer.*``), and the heads of ``dynrefer.model.heads``.
"""

from __future__ import annotations

_W = r"(weight|bias)"
_QF = r"^Qformer\.bert\."
_L = r"encoder\.layer\.(\d+)\."

# --------------------------------------------------------------------------- DynRefer / LAVIS BLIP-2
# (pattern, target). A target may end with "[i/3]": rows i*D:(i+1)*D of a fused (3D, ...) tensor.
QFORMER_RULES = [
    (_QF + r"embeddings\.LayerNorm\." + _W + "$", r"qformer.qformer.layernorm.\1"),
    (_QF + _L + r"attention\.self\.(query|key|value)\." + _W + "$",
     r"qformer.qformer.encoder.layer.\1.attention.attention.\2.\3"),
    (_QF + _L + r"attention\.output\.(dense|LayerNorm)\." + _W + "$",
     r"qformer.qformer.encoder.layer.\1.attention.output.\2.\3"),
    (_QF + _L + r"crossattention\.self\.(query|key|value)\." + _W + "$",
     r"qformer.qformer.encoder.layer.\1.crossattention.attention.\2.\3"),
    (_QF + _L + r"crossattention\.output\.(dense|LayerNorm)\." + _W + "$",
     r"qformer.qformer.encoder.layer.\1.crossattention.output.\2.\3"),
    (_QF + _L + r"intermediate_query\.dense\." + _W + "$",
     r"qformer.qformer.encoder.layer.\1.intermediate_query.dense.\2"),
    (_QF + _L + r"output_query\.(dense|LayerNorm)\." + _W + "$",
     r"qformer.qformer.encoder.layer.\1.output_query.\2.\3"),
    (r"^query_tokens$", "qformer.query_tokens"),
    (r"^ln_vision\." + _W + "$", r"encoder.ln_vision.\1"),
    (r"^t5_proj\." + _W + "$", r"language_head.proj.\1"),
]


def _decoder_rules(src: str, dst: str) -> list:
    """A DynRefer tag/attribute BERT head (cross-attention only) → our ``CrossAttentionDecoder``."""
    pre = "^" + src + r"\." + _L
    out = f"{dst}.decoder.layers.\\1."
    rules = [(pre + rf"crossattention\.self\.{name}\.{kind}$", f"{out}attn.in_proj_{kind}[{i}/3]")
             for i, name in enumerate(("query", "key", "value")) for kind in ("weight", "bias")]
    return rules + [
        (pre + r"crossattention\.output\.dense\." + _W + "$", out + r"attn.out_proj.\2"),
        (pre + r"crossattention\.output\.LayerNorm\." + _W + "$", out + r"norm1.\2"),
        (pre + r"intermediate\.dense\." + _W + "$", out + r"ffn.0.\2"),
        (pre + r"output\.dense\." + _W + "$", out + r"ffn.2.\2"),
        (pre + r"output\.LayerNorm\." + _W + "$", out + r"norm2.\2"),
    ]


DYNREFER_RULES = QFORMER_RULES + [
    (r"^cvem_align\.(value_proj|output_proj|offset_mask_dw|offset_mask)\." + _W + "$", r"align.\1.\2"),
    (r"^cvem_mlp\.0\." + _W + "$", r"fusion.fc1.\1"),
    (r"^cvem_mlp\.2\." + _W + "$", r"fusion.fc2.\1"),
    (r"^cem_memory$", "language_head.control_vector"),
    (r"^tag_text_proj\." + _W + "$", r"tag_head.text_proj.\1"),
    (r"^tag_vision_proj\." + _W + "$", r"tag_head.region_proj.\1"),
    (r"^tag_fc\." + _W + "$", r"tag_head.classifier.\1"),
    (r"^attr_text_proj\." + _W + "$", r"contrastive_head.text_proj.\1"),
    (r"^attr_vision_proj\." + _W + "$", r"contrastive_head.region_proj.\1"),
    (r"^attr_fc\." + _W + "$", r"contrastive_head.score.\1"),
    (r"^attr_t$", "contrastive_head.logit_scale"),
    (r"^attr_b$", "contrastive_head.logit_bias"),
    (r"^clip_embeds$", "tag_embeddings"),
    # a checkpoint that saves the T5's embeddings / head: loaded over the --llm folder's, as the original's
    # load_state_dict(strict=False) of the checkpoint does (tied names share one tensor: the last copy wins)
    (r"^t5_model\.(shared|encoder\.embed_tokens|decoder\.embed_tokens|lm_head)\.weight$",
     r"language_head.lm.\1.weight"),
] + _decoder_rules("tag_head", "tag_head") + _decoder_rules("attr_head", "contrastive_head")

DYNREFER_IGNORED = [
    (_QF + r"embeddings\.(word_embeddings|position_embeddings)\.weight$",
     "Q-Former text embeddings: unused by the query path (deleted by LAVIS Blip2T5)"),
    (_QF + r"embeddings\.position_ids$", "Q-Former position ids buffer (text side)"),
    (_QF + _L + r"(intermediate|output)\.(dense|LayerNorm)\." + _W + "$",
     "Q-Former text feed-forward: unused by the query path (deleted by LAVIS Blip2T5)"),
    (r"^Qformer\.cls\.", "Q-Former masked-LM head (text side, deleted by LAVIS Blip2T5)"),
    (r"^(att_embeds|ov_embeds)$",
     "OVAD attribute-prompt / class embeddings: recomputed by the EVA-CLIP text tower for the vocabulary "
     "given at predict time"),
    (r"^t5_model\.(?!.*lora_)", "frozen Flan-T5: loaded from the --llm folder"),
    (r"^(tag_head|attr_head)\.embeddings\.position_ids$", "BERT position ids buffer of a deleted embedding"),
]

# --------------------------------------------------------------------------------------- EVA ViT-g
# LAVIS eva_vit names (eva_vit_g.pth, or visual_encoder.* / visual.* with the prefix stripped) → timm.
EVA_TRUNK = "encoder.clip.visual.trunk."
EVA_RULES = [
    (r"^(cls_token|pos_embed)$", EVA_TRUNK + r"\1"),
    (r"^patch_embed\.proj\." + _W + "$", EVA_TRUNK + r"patch_embed.proj.\1"),
    (r"^blocks\.(\d+)\.(norm1|norm2|attn\.proj|mlp\.fc1|mlp\.fc2)\." + _W + "$", EVA_TRUNK + r"blocks.\1.\2.\3"),
    (r"^blocks\.(\d+)\.attn\.(qkv\.weight|q_bias|v_bias)$", EVA_TRUNK + r"blocks.\1.attn.\2"),
    (r"^norm\." + _W + "$", EVA_TRUNK + r"norm.\1"),
    (r"^head\." + _W + "$", EVA_TRUNK + r"head.\1"),
]
EVA_IGNORED = [
    (r"^fc_norm\.", "EVA mean-pooling norm: not used (the official tower has use_mean_pooling=False)"),
]
#: A block index >= the kept depth is "ignored on purpose: dropped block (SPEC §1.3.1, 39 of 40 kept)".

# ----------------------------------------------------------------------------- EVA-CLIP text tower
CLIP_TEXT_RULES = [
    (r"^text\.logit_scale$", "encoder.clip.logit_scale"),
    (r"^text\.(token_embedding\.weight|positional_embedding|text_projection|ln_final\.(weight|bias))$",
     r"encoder.clip.text.\1"),
    (r"^text\.(transformer\.resblocks\.\d+\.(ln_1|ln_2|attn\.out_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias))$",
     r"encoder.clip.text.\1"),
    (r"^text\.(transformer\.resblocks\.\d+\.attn\.in_proj_(weight|bias))$", r"encoder.clip.text.\1"),
]
CLIP_TEXT_IGNORED = [
    (r"^visual\.", "EVA-CLIP vision tower: the official model takes it from eva_vit_g.pth (--eva)"),
    (r"^logit_scale$", "EVA-CLIP logit scale (unused by DynRefer)"),
]

# ------------------------------------------------------------------------- Hugging Face BLIP-2 folder
HF_BLIP2_RULES = [
    (r"^qformer\.(layernorm\.(weight|bias))$", r"qformer.qformer.\1"),
    (r"^qformer\.(encoder\.layer\.\d+\.(attention|crossattention)\.(attention\.(query|key|value)|output\.(dense|"
     r"LayerNorm))\.(weight|bias))$", r"qformer.qformer.\1"),
    (r"^qformer\.(encoder\.layer\.\d+\.(intermediate_query\.dense|output_query\.(dense|LayerNorm))\.(weight|bias))$",
     r"qformer.qformer.\1"),
    (r"^query_tokens$", "qformer.query_tokens"),
    (r"^vision_model\.post_layernorm\." + _W + "$", r"encoder.ln_vision.\1"),
    (r"^language_projection\." + _W + "$", r"language_head.proj.\1"),
]
HF_BLIP2_IGNORED = [
    (r"^qformer\.embeddings\.", "Q-Former text embeddings (text side)"),
    (r"^qformer\.encoder\.layer\.\d+\.(intermediate|output)\.", "Q-Former text feed-forward (text side)"),
    (r"^vision_model\.", "HF BLIP-2 vision tower: the EVA ViT-g is taken from eva_vit_g.pth (--eva)"),
    (r"^language_model\.", "the LLM: loaded from the --llm folder"),
]

#: Our tensors that the official forward never reads; they keep their initial values when no source has them.
UNUSED_OURS = [
    (r"^encoder\.clip\.visual\.trunk\.(norm|head)\.", "EVA final norm / projection head: the official model "
                                                      "uses neither (final_norm=False)"),
    (r"^encoder\.clip\.logit_scale$", "CLIP logit scale: unused"),
]
