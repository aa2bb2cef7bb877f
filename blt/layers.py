"""Llama-style transformer building blocks shared by every BLT component.

RMSNorm, rotary position embeddings on interleaved pairs (as the released BLT models use), grouped-query
self-attention with an optional sliding window and KV cache, a SwiGLU feed-forward, the pre-norm block and a
stack of blocks. Parameter names follow the Hugging Face BLT layout (q_proj, gate_proj, ...) so that
checkpoint conversion is a renaming of prefixes.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from blt.attention import BACKENDS, causal_attention
from blt.config import TransformerConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in float32: bf16 sums of squares lose too much precision
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Rotary(nn.Module):
    """cos/sin tables for RoPE on interleaved pairs (dims 2i and 2i+1 rotate together)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [T] or [B, T] -> cos, sin: [T, D/2] or [B, T, D/2] (float32)."""
        freqs = positions.float().unsqueeze(-1) * self.inv_freq
        return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [T, D/2] or [B, T, D/2]."""
    if cos.dim() == 3:  # per-sequence positions: broadcast over heads
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    xf = x.float()
    even, odd = xf[..., 0::2], xf[..., 1::2]
    out = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1)
    return out.flatten(-2).to(x.dtype)


class KVCache:
    """Keys/values of past positions for one attention layer, bounded by the sliding window."""

    def __init__(self, window: int | None = None):
        self.window = window
        self.k: torch.Tensor | None = None  # [B, Hkv, S, D]
        self.v: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None  # [S] positions of the cached entries

    def extend(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor):
        """Add new entries; return all keys/values/positions the new queries may need."""
        if self.k is not None:
            k = torch.cat([self.k, k], dim=2)
            v = torch.cat([self.v, v], dim=2)
            pos = torch.cat([self.pos, pos])
        keep = k.shape[2] if self.window is None else min(k.shape[2], self.window)
        self.k, self.v, self.pos = k[:, :, -keep:], v[:, :, -keep:], pos[-keep:]
        return k, v, pos

    def __len__(self) -> int:
        return 0 if self.pos is None else int(self.pos.numel())

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (finished sequences leave a batched generation)."""
        if self.k is not None:
            self.k, self.v = self.k[rows], self.v[rows]


class SelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig, backend: str = "sdpa"):
        super().__init__()
        if backend not in BACKENDS:  # fail when the model is built, not at its first forward
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
        self.n_heads, self.n_kv, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.window, self.dropout, self.backend = config.window, config.dropout, backend
        self.q_proj = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.dim, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.dim, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)

    def forward(self, x, cos, sin, positions, cache: KVCache | None = None, segments=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, D]
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_pos = positions
        if cache is not None:
            if segments is not None or positions.dim() != 1:
                raise ValueError("a KV cache takes one shared position vector and no segment ids")
            k, v, k_pos = cache.extend(k, v, positions)
        drop = self.dropout if self.training else 0.0
        y = causal_attention(q, k, v, positions, k_pos, self.window, segments, segments, self.backend, drop)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: TransformerConfig, backend: str = "sdpa"):
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = SelfAttention(config, backend)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = SwiGLU(config.dim, config.hidden_dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, positions, cache=None, segments=None):
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, positions, cache, segments))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class Transformer(nn.Module):
    """A stack of blocks with its rotary tables; no embedding, final norm or head (callers differ there)."""

    def __init__(self, config: TransformerConfig, backend: str = "sdpa"):
        super().__init__()
        self.config = config
        self.rotary = Rotary(config.head_dim, config.rope_theta)
        self.layers = nn.ModuleList(Block(config, backend) for _ in range(config.n_layers))

    def new_cache(self) -> list[KVCache]:
        return [KVCache(self.config.window) for _ in self.layers]

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: list[KVCache] | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, T, dim]; positions: [T] or [B, T] (default 0..T-1, or continuing the cache)."""
        if positions is None:
            start = int(cache[0].pos[-1]) + 1 if cache and len(cache[0]) else 0
            positions = torch.arange(start, start + x.shape[1], device=x.device)
        cos, sin = self.rotary(positions)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, positions, cache[i] if cache is not None else None, segments)
        return x


def init_weights(module: nn.Module, std_scale: float = 1.0) -> None:
    """Truncated-normal init with std 1/sqrt(fan_in) for every Linear and Embedding below ``module``.

    Scaled by 1/sqrt(fan_in) rather than a fixed 0.02 so that small CPU models and wide GPU models start
    with unit-scale activations alike (the BLT reference initialises the same way).
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            std = std_scale / math.sqrt(m.in_features)
            nn.init.trunc_normal_(m.weight, std=std, a=-3 * std, b=3 * std)
        elif isinstance(m, nn.Embedding):
            std = std_scale / math.sqrt(m.embedding_dim)
            nn.init.trunc_normal_(m.weight, std=std, a=-3 * std, b=3 * std)
