"""Reference byte <-> patch operations of the BLT, in plain readable PyTorch.

These are the definitions: ``blt.kernels`` holds faster versions with the same signatures and semantics.

- hash n-gram embeddings: each byte also looks up, for every n-gram size and hash function, a row picked by
  a rolling polynomial hash of the n ids ending at it (the sequence is left-padded with id 0);
- patch ids: which patch every byte belongs to, from per-row patch lengths (right-padded with 0);
- patch pooling: max (or mean) of the byte states of each patch;
- patch cross-attention in both directions: ``k_rep`` query rows per patch attend only to the patch's bytes
  (encoder), and every byte attends only to the ``k_rep`` rows of one patch (decoder), which reads the last
  patch closed at or before it;
- next-byte entropy from logits, and the entropy threshold rule for patch starts (the patching schemes of
  :mod:`blt.patcher.schemes` build on these rules).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from blt.config import ConfigError

# Hash bases of the released BLT models, one per hash function (cycled when there are more functions).
HASH_PRIMES = (
    1000000007,
    5915587277,
    1500450271,
    3267000013,
    5754853343,
    4093082899,
    9576890767,
    3628273133,
    2860486313,
    5463458053,
    3367900313,
)


def wrap_int64(x: int) -> int:
    """``x`` modulo 2**64 as a signed int64: the value int64 tensor arithmetic wraps to."""
    x %= 1 << 64
    return x - (1 << 64) if x >= 1 << 63 else x


def hash_ngram_indices(
    ids: torch.Tensor, ngram_sizes: list[int], n_functions: int, hash_vocab: int
) -> torch.Tensor:
    """ids [B, T] -> rows [B, T, n_functions * len(ngram_sizes)] of ONE concatenated hash table.

    Table ``f * len(ngram_sizes) + i`` (hash function f, n-gram size ngram_sizes[i]) owns rows
    ``[table * hash_vocab, (table + 1) * hash_vocab)``. The hash of the n-gram ending at t is
    ``sum_j ids[t - n + 1 + j] * prime**j`` in wrapping int64 arithmetic, then floor-modulo ``hash_vocab``:
    bit-exact with the released models, whose int64 products overflow the same way.
    """
    B, T = ids.shape
    ids = ids.long()
    tables = []
    for f in range(n_functions):
        prime = HASH_PRIMES[f % len(HASH_PRIMES)]
        for n in ngram_sizes:
            padded = F.pad(ids, (n - 1, 0))  # [B, T + n - 1], id 0 before the start
            h = torch.zeros(B, T, dtype=torch.long, device=ids.device)
            for j in range(n):
                h = h + padded[:, j : j + T] * wrap_int64(prime**j)
            tables.append(torch.remainder(h, hash_vocab) + len(tables) * hash_vocab)
    if not tables:
        return torch.zeros(B, T, 0, dtype=torch.long, device=ids.device)
    return torch.stack(tables, dim=-1)


def hash_embedding(
    ids: torch.Tensor, byte_weight: torch.Tensor, hash_weight: torch.Tensor, ngram_sizes: list[int],
    n_functions: int, hash_vocab: int,
) -> torch.Tensor:  # fmt: skip
    """Byte embedding plus the sum of its hash n-gram embeddings: ids [B, T] -> [B, T, D]."""
    x = F.embedding(ids, byte_weight)
    rows = hash_ngram_indices(ids, ngram_sizes, n_functions, hash_vocab)  # [B, T, n_tables]
    for i in range(rows.shape[-1]):  # one table at a time: never a [B, T, n_tables, D] gather
        x = x + F.embedding(rows[..., i], hash_weight)
    return x


def patch_ids_from_lengths(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Patch index of every byte: lengths [B, P] (right-padded with 0) -> ids [B, seq_len].

    Positions at or past the sum of a row's lengths belong to the row's last non-empty patch
    (-1 when the row has none), so trailing padding patches never own a byte.
    """
    ends = lengths.long().cumsum(dim=-1)  # [B, P]
    positions = torch.arange(seq_len, device=lengths.device).expand(lengths.shape[0], seq_len).contiguous()
    ids = torch.searchsorted(ends, positions, right=True)  # number of patches ending at or before t
    if lengths.shape[1] == 0:
        return torch.full_like(positions, -1)
    index = torch.arange(lengths.shape[1], device=lengths.device)
    last = torch.where(lengths > 0, index, -1).max(dim=-1).values  # [B] last non-empty patch
    return torch.minimum(ids, last.unsqueeze(-1))


def decoder_patch_ids(
    lengths: torch.Tensor, seq_len: int, next_starts: torch.Tensor | None = None
) -> torch.Tensor:
    """Latent patch each byte's decoder reads [B, T]: the last patch closed at or before it.

    Byte t reads patch ``pid(t + 1) - 1``: its own patch when the next byte starts a new one, else the one
    before (a byte in the first patch reads patch 0). For the last byte, ``next_starts`` [B] says whether
    position T starts a patch (unknown: no). With a BOS-only first patch this is transformers'
    ``patch_ids(patch_lengths[:, 1:])``, its trailing empty patch marking ``next_starts``.
    """
    pid = patch_ids_from_lengths(lengths, seq_len)  # [B, T]
    last = pid[:, -1:] - 1
    if next_starts is not None:
        last = last + next_starts.long().unsqueeze(-1)
    return torch.cat([pid[:, 1:] - 1, last], dim=1).clamp(min=0)


def patch_pool(h: torch.Tensor, patch_ids: torch.Tensor, num_patches: int, mode: str = "max") -> torch.Tensor:
    """Pool byte states into patches: h [B, T, D], patch_ids [B, T] -> [B, num_patches, D].

    An empty patch gives zeros; bytes whose id is outside 0..num_patches-1 are ignored.
    """
    if mode not in ("max", "mean"):
        raise ValueError(f"patch_pool mode must be 'max' or 'mean', got {mode!r}")
    B, T, D = h.shape
    valid = (patch_ids >= 0) & (patch_ids < num_patches)
    # out-of-range bytes go to an extra scratch patch that is dropped at the end
    index = torch.where(valid, patch_ids, num_patches).long().unsqueeze(-1).expand(B, T, D)
    out = h.new_zeros(B, num_patches + 1, D)
    reduce = "amax" if mode == "max" else "mean"
    out = out.scatter_reduce(1, index, h, reduce=reduce, include_self=False)
    return out[:, :num_patches]


def _masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax attention with a boolean mask [B, 1, Tq, Tk]; a query row that may see no key gives 0."""
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # all -inf rows give NaN: make them 0
    return (weights @ v.float()).to(q.dtype)


def patch_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, patch_ids: torch.Tensor, k_rep: int
) -> torch.Tensor:
    """Patches attend to their own bytes (local encoder).

    q [B, H, P*k_rep, Dh] (row p*k_rep + j is query j of patch p); k, v [B, H, T, Dh]; patch_ids [B, T]
    -> [B, H, P*k_rep, Dh]. A patch without bytes gives 0.
    """
    rows = torch.arange(q.shape[2], device=q.device) // k_rep  # [P*k] patch of each query row
    mask = rows[None, :, None] == patch_ids[:, None, :]  # [B, P*k, T]
    return _masked_attention(q, k, v, mask.unsqueeze(1))


def one_patch_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Both patch attentions when every query and every key belong to one patch: plain softmax attention
    (in float32, as they compute). q [B, H, Tq, Dh]; k, v [B, H, Tk, Dh] -> [B, H, Tq, Dh]."""
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)


def byte_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, patch_ids: torch.Tensor, k_rep: int
) -> torch.Tensor:
    """Bytes attend to the rows of one patch each (local decoder).

    q [B, H, T, Dh]; k, v [B, H, P*k_rep, Dh]; patch_ids [B, T] -> [B, H, T, Dh]: byte t sees only rows
    ``patch_ids[b, t] * k_rep + j``, j < k_rep. A byte whose patch id is outside 0..P-1 gives 0.
    """
    rows = torch.arange(k.shape[2], device=k.device) // k_rep  # [P*k]
    mask = patch_ids[:, :, None] == rows[None, None, :]  # [B, T, P*k]
    return _masked_attention(q, k, v, mask.unsqueeze(1))


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of the softmax over the last dim: [..., V] -> [...] (float32).

    Models call ``blt.kernels.entropy_from_logits``, the same value computed chunk by chunk (Triton on CUDA)
    so that no [B, T, V] probability tensor is ever kept.
    """
    # clamping keeps 0 * log 0 = 0 for logits of -inf (masked ids) instead of 0 * -inf = NaN
    logp = F.log_softmax(logits.float(), dim=-1).clamp_min(torch.finfo(torch.float32).min)
    # exp(logp) * logp is formed and reduced in one expression so no probability tensor outlives it
    return -(logp.exp() * logp).sum(-1)


def check_threshold(value: float, name: str, allow_negative: bool) -> None:
    if math.isnan(value):
        raise ConfigError(f"{name} must be a number, got NaN")
    if value < 0 and not allow_negative:
        raise ConfigError(
            f"{name} must be >= 0 (entropies are never negative; use scheme 'byte' for one byte per patch), got {value}"
        )


def forced_starts(shape: torch.Size, device: torch.device, offset: int | torch.Tensor = 0) -> torch.Tensor:
    """Starts every scheme shares: absolute positions 0 (BOS) and 1 (first byte). [B, T] bool.

    ``offset``: the absolute position of column 0 (an int, or [B, 1] per row).
    """
    pos = torch.arange(shape[1], device=device) + offset
    return (pos < 2).expand(shape).clone()


def entropy_starts(entropies: torch.Tensor, threshold: float, offset: int | torch.Tensor = 0) -> torch.Tensor:
    """Global threshold: a patch starts at t when H(t-1) > threshold (and at positions 0 and 1)."""
    check_threshold(threshold, "threshold", allow_negative=False)
    starts = forced_starts(entropies.shape, entropies.device, offset)
    starts[:, 1:] |= entropies[:, :-1] > threshold
    return starts
