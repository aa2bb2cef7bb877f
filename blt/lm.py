"""A plain causal language model: token embedding, transformer stack, final norm, output head.

The entropy model (over the 260 byte ids) and the tokenized baseline (over BPE ids) are both this model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn as nn

from blt.config import TransformerConfig
from blt.layers import KVCache, RMSNorm, Transformer, init_weights

F = TypeVar("F", bound=Callable)


def in_eval_mode(fn: F) -> F:
    """Run ``fn(module, ...)`` with ``module`` in eval mode (no dropout), restoring its mode afterwards.

    Inference entry points use it so a model left in training mode still gives deterministic entropies
    and the same bytes from the cached and the recomputing generation paths.
    """

    @functools.wraps(fn)
    def wrapper(module: nn.Module, *args, **kwargs):
        was_training = module.training
        module.eval()
        try:
            return fn(module, *args, **kwargs)
        finally:
            module.train(was_training)

    return wrapper  # type: ignore[return-value]


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

    def new_cache(self, batch_size: int = 1, max_len: int | None = None, static: bool = False) -> KVCache:
        """An empty KV cache for ``batch_size`` rows (see :meth:`Transformer.new_cache`)."""
        return self.transformer.new_cache(batch_size, max_len, static)

    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        segments: torch.Tensor | None = None,
        consecutive: bool = False,
    ) -> torch.Tensor:
        """ids: [B, T] -> logits [B, T, vocab] in float32; with ``cache`` the ids continue its rows.
        ``consecutive``: given positions step by one (restarting at segment starts; see Transformer)."""
        h = self.transformer(self.embed_tokens(ids), positions, cache, segments, consecutive)
        return self.lm_head(self.norm(h)).float()
