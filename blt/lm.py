"""A plain causal language model: token embedding, transformer stack, final norm, output head.

The entropy model (over the 260 byte ids) and the tokenized baseline (over BPE ids) are both this model.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from blt.config import TransformerConfig
from blt.layers import KVCache, RMSNorm, Transformer, init_weights


class CausalLM(nn.Module):
    def __init__(self, config: TransformerConfig, vocab_size: int, backend: str = "sdpa"):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.embed_tokens = nn.Embedding(vocab_size, config.dim)
        self.transformer = Transformer(config, backend)
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, vocab_size, bias=False)
        init_weights(self)

    def new_cache(self) -> list[KVCache]:
        return self.transformer.new_cache()

    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: list[KVCache] | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ids: [B, T] -> logits [B, T, vocab] in float32."""
        h = self.transformer(self.embed_tokens(ids), positions, cache, segments)
        return self.lm_head(self.norm(h)).float()
