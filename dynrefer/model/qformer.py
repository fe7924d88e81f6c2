"""BLIP-2 Q-Former over the fused region tokens (SPEC §1.3.5).

Learned query tokens cross-attend (every ``cross_attention_frequency``-th layer) to the
fused tokens of a region and give its representation ``R`` (num_query_tokens × hidden).
Built on ``transformers.Blip2QFormerModel``. Initialisation, from local folders only:

* a Hugging Face BLIP-2 folder (``Blip2ForConditionalGeneration`` weights): ``qformer.*`` and
  ``query_tokens`` are loaded as they are;
* a BERT folder (``bert-base-uncased`` layout): self-attention and feed-forward weights of
  every layer and the embedding LayerNorm are copied (the query feed-forward gets BERT's
  feed-forward, as BLIP-2 does); cross-attention layers stay randomly initialised;
* nothing: random initialisation (tiny models).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from .config import QFormerConfig
from .encoder import read_weights


def bert_to_qformer(state: dict) -> dict:
    """Map BERT tensor names onto ``Blip2QFormerModel`` names (query path only)."""
    out = {}
    for key, value in state.items():
        k = key[len("bert."):] if key.startswith("bert.") else key
        if k.startswith("embeddings.LayerNorm."):
            out["layernorm." + k.split(".")[-1]] = value
        elif k.startswith("encoder.layer."):
            k = k.replace(".attention.self.", ".attention.attention.")
            k = k.replace(".intermediate.dense.", ".intermediate_query.dense.")
            k = (k.replace(".output.dense.", ".output_query.dense.")
                 .replace(".output.LayerNorm.", ".output_query.LayerNorm."))
            # the attention output block keeps its name (attention.output.*)
            k = k.replace(".attention.output_query.", ".attention.output.")
            out[k] = value
    return out


class RegionQFormer(nn.Module):
    """``fused (R, T, C_enc) → R (R, num_query_tokens, hidden)``."""

    def __init__(self, cfg: QFormerConfig, encoder_width: int):
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        self.cfg = cfg
        hf_cfg = Blip2QFormerConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=cfg.max_position_embeddings,
            cross_attention_frequency=cfg.cross_attention_frequency,
            encoder_hidden_size=encoder_width,
        )
        self.qformer = Blip2QFormerModel(hf_cfg)
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_query_tokens, cfg.hidden_size))
        nn.init.normal_(self.query_tokens, std=0.02)
        if cfg.init_from:
            self.load_pretrained(cfg.init_from)
        self.query_tokens.requires_grad_(not cfg.freeze_query_tokens)

    def load_pretrained(self, source) -> None:
        path = Path(source)
        if not path.exists():
            raise InputError(f"cannot read Q-Former weights '{path}': no such file or folder")
        state = read_weights(path)
        if any(k.startswith("qformer.") for k in state):
            sub = {k[len("qformer."):]: v for k, v in state.items() if k.startswith("qformer.")}
            missing, unexpected = self.qformer.load_state_dict(sub, strict=False)
            if "query_tokens" in state:
                self.query_tokens.data.copy_(state["query_tokens"].reshape(self.query_tokens.shape))
            missing = [k for k in missing if "embeddings" not in k]
            if missing:
                raise InputError(f"BLIP-2 Q-Former weights in '{path}' lack {sorted(missing)[:10]}")
            return
        mapped = bert_to_qformer(state)
        if not mapped:
            raise InputError(f"'{path}' holds neither BLIP-2 'qformer.*' nor BERT 'encoder.layer.*' weights")
        own = self.qformer.state_dict()
        bad = [k for k, v in mapped.items() if k in own and own[k].shape != v.shape]
        if bad:
            raise InputError(f"BERT weights in '{path}' do not fit the Q-Former config: {bad[:5]}")
        self.qformer.load_state_dict({k: v for k, v in mapped.items() if k in own}, strict=False)

    def forward(self, fused: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        queries = self.query_tokens.expand(fused.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=fused, encoder_attention_mask=attention_mask)
        return out.last_hidden_state
