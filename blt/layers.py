"""Llama-style transformer building blocks shared by every BLT component.

RMSNorm, rotary position embeddings on interleaved pairs (as the released BLT models use), grouped-query
self-attention with an optional sliding window, a SwiGLU feed-forward, the pre-norm block, a stack of blocks,
and the stack's KV cache. Parameter names follow the Hugging Face BLT layout (q_proj, gate_proj, ...) so that
checkpoint conversion is a renaming of prefixes.

One forward serves training, scoring and decoding: without a cache a stack attends within its input; with a
:class:`KVCache` its input continues what the cache holds, each batch row at its own positions, so rows of
different lengths decode together.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from blt.attention import BACKENDS, causal_attention
from blt.config import TransformerConfig
from blt.masks import attention_mask

EMPTY = 1 << 62  # position of a KV cache slot that holds nothing: no query ever sees it
# A cache of a stack with at most this many q/k/v/gate/up weights steps one position with weight copies:
# q/k/v and gate/up fused (one matmul instead of three, one instead of two), every projection stored
# [in, out]. Small stacks step at the cost of their ops, so fusing pays; and a one-row product streams an
# [in, out] weight about twice as fast as the [out, in] one of nn.Linear (measured on the CPU, weights out of
# L2). Bigger stacks would double their memory for it.
FUSE_LIMIT = 1 << 24
# A growing static KV cache (see KVCache's ``grow``) adds 1/GROWTH of its slots, rounded up to GROWTH_BLOCK
GROWTH, GROWTH_BLOCK = 8, 64


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if x.dtype == torch.float32 and w.dtype == torch.float32:  # the same maths in one op
            return torch.rms_norm(x, w.shape, w, self.eps)
        # normalise in float32: bf16 sums of squares lose too much precision
        return w * torch.rms_norm(x.float(), w.shape, eps=self.eps).to(x.dtype)


class Rotary(nn.Module):
    """RoPE on interleaved pairs (dims 2i and 2i+1 rotate together), as complex rotations e^(i p f)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._table: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)  # see table()

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions [T] or [B, T] -> rotations [T, 1, D/2] or [B, T, 1, D/2] (complex64, broadcast over
        heads): cos + i sin of every pair's angle."""
        freqs = positions.float().unsqueeze(-1) * self.inv_freq  # [.., T, D/2]
        return torch.complex(freqs.cos(), freqs.sin()).unsqueeze(-2)

    def table(self, n: int) -> torch.Tensor:
        """Rotations [n, 1, D/2] of positions 0 .. n - 1, for KV caches to index: one table shared by
        every cache of the stack, made again only for a longer n or new frequencies (a static cache needs
        all ``max_seq_len`` of them, which took a tenth of a second for each stack of each prompt of a
        batched generation when every cache made its own)."""
        made_from, table = self._table
        # model.to() replaces the frequencies (device, dtype): the table follows them
        if made_from is not self.inv_freq or table.shape[0] < n:
            # an ordinary tensor even when made under inference mode: caches made later, in any mode,
            # share it (only ever read)
            with torch.inference_mode(False), torch.no_grad():
                table = self(torch.arange(n, device=self.inv_freq.device))
            self._table = (self.inv_freq, table)
        return table[:n]


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D] rotated pair by pair, in float32: the pair (e, o) read as e + i o times ``rot``, which
    is (e cos - o sin, o cos + e sin)."""
    pairs = torch.view_as_complex(x.float().view(*x.shape[:-1], -1, 2))  # [B, T, H, D/2]
    return torch.view_as_real(pairs * rot).view(x.shape).to(x.dtype)


class KVCache:
    """Keys/values of past positions for every layer of one stack, for a batch of rows at their own positions.

    Every layer keeps preallocated buffers [B, Hkv, S, Dh]: a ring of S = window slots (position p in slot
    p % S) for windowed stacks, else slots indexed by position, doubled when full. ``pos`` [B, S] holds each
    slot's position (EMPTY: none). The layers share it, so a forward builds one mask (and looks up one rotary
    table) for all of them. Often none is needed: once every row's ring holds ``window`` consecutive
    positions, all of them are in the window of the next one; and rows that all hold positions 0 .. n - 1
    (one prompt, or prompts of one length) see exactly the first n slots, and their next position n is known
    on the host, so a step writes its slot by number (no index tensors).

    A forward either continues every row (no positions given) or writes given positions [B, T]; these must
    continue each row: a chunk starts at or before the row's next position. With ``rows`` [n] it continues
    only those rows (the global transformer steps only the rows that closed a patch); the others keep what
    they hold. The continuing rows' keys are gathered up to ``bound`` (in a buffer that is no ring, no slot
    past it holds anything).

    ``static``: every buffer is allocated for ``max_len`` positions up front, and a one-position step that
    continues every row is the same tensor operations whatever the cache holds (no shape or host value
    changes from step to step), so ``torch.compile`` and CUDA graphs can capture it; each query then reads
    every slot through a mask (what the other mode's shortcuts avoid on the CPU). What the callers keep
    beside a static cache keeps one memory layout too (:func:`standard`): compiled code guards on strides.

    ``grow`` (a static cache that is no ring): the buffers start small and grow by an eighth (the default
    cache's double), but a step cannot grow them (it changes no host state): the caller calls
    :meth:`reserve` on the host before it. A step then reads about as many slots as are filled, not
    ``max_len``; its shapes change only when the buffers grow, and their slot dimension is marked dynamic,
    so that compiled code serves every size.
    """

    def __init__(
        self,
        stack: Transformer,
        batch_size: int,
        max_len: int | None = None,
        static: bool = False,
        grow: bool = False,
    ):
        config, ref = stack.config, stack.layers[0].attn.k_proj.weight
        self.window, self.rotary = config.window, stack.rotary
        if static and max_len is None:
            raise ValueError("a static KV cache needs max_len (its buffers and rotations are made up front)")
        if grow and not static:
            raise ValueError("grow=True is for static caches (a default cache grows by itself)")
        self.static = static
        # a window that covers every position the rows will reach needs no ring
        self.ring = self.window is not None and (max_len is None or self.window < max_len)
        self.grow = grow and not self.ring
        self.size = self.window if self.ring else (max_len if static and not self.grow else 16)
        self.dtype = ref.dtype
        self.pos = torch.full((batch_size, self.size), EMPTY, dtype=torch.long, device=ref.device)
        self.rows = torch.arange(batch_size, device=ref.device).unsqueeze(1)  # [B, 1]
        self.next = torch.zeros(
            batch_size, dtype=torch.long, device=ref.device
        )  # [B] each row's next position
        # rotations [n, 1, Dh/2] of positions 0..n-1, grown on demand; static: all of them now, for every
        # position the stack takes, so that a compiled step's shapes do not depend on max_len
        self.rot = self.rotary.table(max(max_len, config.max_seq_len) if static else 0)
        # host-side bounds, so that growing and dropping the mask need no sync: the next forward writes no
        # position at or past ``bound`` + its length; every row holds at least ``filled`` consecutive
        # positions ending at its latest; ``aligned``: every row holds exactly positions 0 .. filled - 1
        self.bound = self.filled = 0
        self.aligned = True
        fuse = sum(layer.attn.projected + layer.mlp.projected for layer in stack.layers) <= FUSE_LIMIT
        shape = (batch_size, config.kv_heads, self.size, config.head_dim)
        self.layers = [
            LayerCache(self, ref.new_zeros(shape), layer if fuse else None) for layer in stack.layers
        ]
        # of the current forward, set by prepare(): where the new entries go, and what the queries see
        self.slots = self.mask = self.visible = None
        self.index = self.rows  # the rows the current forward continues [B or n, 1]
        self.in_place = True
        self._mark_dynamic()

    @property
    def batch_size(self) -> int:
        return self.pos.shape[0]

    def prepare(self, T: int, positions: torch.Tensor | None = None, rows: torch.Tensor | None = None):
        """Claim the slots of T new positions per row: ``positions`` [B, T], or None to continue every row.
        ``rows`` [n]: only these rows continue (``positions`` then [n, T], or None for one position each).

        Returns the positions [B or n, T] and their rotations [B or n, T, 1, Dh/2].
        """
        if rows is not None:
            return self._prepare_rows(T, positions, rows)
        self.index = self.rows
        if T == 1 and positions is None:
            if self.static:
                return self._static_step()
            if self.aligned:
                return self._aligned_step()
        given = positions is not None
        if not given:
            positions = self.next.unsqueeze(1)
            if T > 1:
                positions = positions + torch.arange(T, device=positions.device)
            self.next = self.next + T
            self.filled += T
        else:
            self.next = positions[:, -1] + 1
            # given positions may rewrite older ones: a ring is no longer known to be full, rows to be aligned
            self.filled, self.aligned = 0, False
        self.bound += T
        if not self.ring and self.bound > self.size and given:
            # rows that did not advance make the bound too high: a rare sync keeps the buffer from growing
            self.bound = int(positions.max()) + 1
        self._reserve()
        # a chunk written into a ring before it attends would overwrite keys its own first queries need
        self.in_place = not self.ring or T == 1
        keep = positions[:, -self.size :] if self.size < T else positions  # at most one per slot
        self.slots = keep % self.size if self.ring else keep
        keys = self.pos if self.in_place else torch.cat([self.pos, positions], dim=1)
        self.pos[self.rows, self.slots] = keep
        self.mask, self.visible = None, None
        # (one position per row of aligned rows took _aligned_step)
        if self.in_place and self.ring and self.filled >= self.size:
            pass  # every slot holds one of the last ``window`` positions: all are seen
        else:
            if self.in_place and not self.ring:  # slots from ``bound`` on are empty: no query reads them
                self.visible = self.bound
                keys = keys[:, : self.bound]
            self.mask = self._additive(attention_mask(positions, keys, self.window))  # [B, 1, T, S or S + T]
        return positions, self.rot[positions]

    def _reserve(self) -> None:
        """Slots (a buffer that is no ring grows) and rotations for every position below ``bound``."""
        if not self.ring and self.bound > self.size:
            if self.grow:
                # every step reads a growing static cache whole, so it grows by an eighth (in whole blocks of
                # slots, which vectorized loops take without remainders): at thousands of patches the empty
                # slots of a doubled buffer would be most of what a global step reads
                size = max(self.size + self.size // GROWTH, self.bound)
                self._grow(-(-size // GROWTH_BLOCK) * GROWTH_BLOCK)
            else:  # a default cache attends only to its filled slots, and doubles: fewest copies
                self._grow(max(2 * self.size, self.bound))
        if self.bound > self.rot.shape[0]:
            self.rot = self.rotary.table(max(2 * self.rot.shape[0], self.bound, 64))

    def reserve(self, n: int) -> None:
        """Room for positions below ``n`` in every row, made on the host before static steps, which change
        no host state: a growing cache grows, and ``bound`` (which a later forward of some rows reads)
        keeps up with the steps."""
        self.bound = max(self.bound, n)
        self._reserve()

    def _mark_dynamic(self) -> None:
        """A growing cache's buffers: compiled code takes any number of slots (see ``grow``)."""
        if self.grow:
            from torch._dynamo import maybe_mark_dynamic

            maybe_mark_dynamic(self.pos, 1)
            for layer in self.layers:
                maybe_mark_dynamic(layer.k, 2)
                maybe_mark_dynamic(layer.v, 2)

    def _additive(self, seen: torch.Tensor) -> torch.Tensor:
        """A boolean mask as an additive one: SDPA's CPU kernel is faster with it than with the boolean."""
        return torch.where(seen, 0.0, float("-inf")).to(self.dtype)

    def _aligned_step(self):
        """prepare() of one position per row when every row holds positions 0 .. filled - 1: the new position
        is ``filled`` in every row, known on the host, so one slot is written (no index tensors)."""
        p = self.filled
        positions = self.next.unsqueeze(1)  # [B, 1], all p
        self.next, self.filled, self.bound = self.next + 1, p + 1, self.bound + 1
        self._reserve()
        self.slots = p % self.size if self.ring else p
        self.pos[:, self.slots] = p
        self.in_place, self.mask, self.visible = True, None, None
        if not (self.ring and self.filled >= self.size):  # else every slot holds one of the last positions
            self.visible = self.filled
        return positions, self.rot[p : p + 1].unsqueeze(0)  # [1, 1, 1, Dh/2]

    def _static_step(self, rows: torch.Tensor | None = None):
        """prepare() of one position per row (``rows`` [n]: of those rows) in a static cache: tensor
        operations only, whatever the rows hold."""
        if rows is None:
            positions = self.next.unsqueeze(1).clone()  # [B, 1]
            self.next.add_(1)  # in place, as every write of a step: a graph replays into the same memory
            keys = self.pos
        else:
            self.index = rows.unsqueeze(1)  # [n, 1]
            positions = self.next[self.index]  # [n, 1]
            self.next.index_copy_(0, rows, positions[:, 0] + 1)
        self.slots = positions % self.size if self.ring else positions
        self.pos[self.index, self.slots] = positions
        if rows is not None:
            keys = self.pos[rows]  # [n, S]
        self.in_place, self.visible = True, None
        self.mask = self._additive(attention_mask(positions, keys, self.window))  # [B or n, 1, 1, S]
        return positions, self.rot[positions]

    def _prepare_rows(self, T: int, positions: torch.Tensor | None, rows: torch.Tensor):
        """prepare() for some rows only: their keys are gathered (up to ``bound``), so a mask always decides
        what they see. ``positions`` None: one position per row, continuing each."""
        if positions is None:
            if T != 1:
                raise ValueError(
                    "continuing some rows of a KV cache by more than one position takes positions"
                )
            if self.static:
                return self._static_step(rows)
            positions = self.next[rows].unsqueeze(1)  # [n, 1]
        if positions.shape[0] != rows.shape[0]:
            raise ValueError("continuing some rows of a KV cache takes their positions [n, T]")
        if self.ring and T > 1:
            raise ValueError("continuing some rows of a windowed KV cache takes one position per row")
        self.filled, self.aligned = 0, False
        self.next = self.next.index_copy(0, rows, positions[:, -1] + 1)
        self.bound += T
        if not self.ring and self.bound > self.size:
            self.bound = int(self.next.max())  # rows that did not advance made the bound too high
        self._reserve()
        self.index = rows.unsqueeze(1)  # [n, 1]
        self.slots = positions % self.size if self.ring else positions
        self.pos[self.index, self.slots] = positions
        self.in_place = True
        # slots of a buffer that is no ring are empty from ``bound`` on: no query reads them
        self.visible = None if self.ring else self.bound
        self.mask = self._additive(attention_mask(positions, self.pos[rows, : self.visible], self.window))
        return positions, self.rot[positions]

    def _grow(self, size: int) -> None:
        extra = size - self.size
        for layer in self.layers:
            layer.k, layer.v = F.pad(layer.k, (0, 0, 0, extra)), F.pad(layer.v, (0, 0, 0, extra))
        self.pos = F.pad(self.pos, (0, extra), value=EMPTY)
        self.size = size
        self._mark_dynamic()

    def prepare_decoding_weights(self) -> None:
        """Make the layers' decoding weights now (see :meth:`LayerCache.decoding_weights`), not at the first
        one-position step."""
        for layer in self.layers:
            if layer.block is not None:
                layer.decoding_weights()

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` [n] (finished sequences leave a batched generation)."""
        for layer in self.layers:
            layer.k, layer.v = layer.k[rows], layer.v[rows]
        self.pos, self.next, self.rows = self.pos[rows], self.next[rows], self.rows[: len(rows)]
        self._mark_dynamic()

    def add_rows(self, others: list[KVCache]) -> None:
        """Append the rows of other caches of the same stack after this one's (prompts prefilled one by one
        become one batch); the others are left grown to this cache's size."""
        caches = [self, *others]
        size = max(c.size for c in caches)
        for c in caches:
            if c.size < size:
                c._grow(size)
        for i, layer in enumerate(self.layers):
            layer.k = torch.cat([c.layers[i].k for c in caches])
            layer.v = torch.cat([c.layers[i].v for c in caches])
        self.pos, self.next = torch.cat([c.pos for c in caches]), torch.cat([c.next for c in caches])
        self.rows = torch.arange(self.pos.shape[0], device=self.pos.device).unsqueeze(1)
        self.bound, self.filled = max(c.bound for c in caches), min(c.filled for c in caches)
        self.aligned = all(c.aligned and c.filled == self.filled for c in caches)
        self.rot = max((c.rot for c in caches), key=len)
        self._mark_dynamic()


def standard(x: torch.Tensor) -> torch.Tensor:
    """x copied into the standard row-major layout, size-1 dimensions included (a slice keeps its base's
    strides, and ``contiguous()`` keeps those of size-1 dimensions), so that state that a static decoding
    step reads has the same strides after a prefill as after any step."""
    return x.clone(memory_format=torch.contiguous_format)


class LayerCache:
    """One layer's keys/values in a :class:`KVCache` (what a :class:`Block` takes). ``block``: the layer,
    when its stack is small enough (see ``FUSE_LIMIT``; None otherwise) that one-position steps use its
    decoding weights (:meth:`decoding_weights`)."""

    def __init__(self, cache: KVCache, buffer: torch.Tensor, block: Block | None):
        self.cache, self.k, self.v = cache, buffer, buffer.clone()  # [B, Hkv, S, Dh] each
        self.block, self.weights = block, None

    def decoding_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layer's q/k/v fused, o, gate/up fused and down, each [in, out]; copied at the first
        one-position step, not before: prompts prefilled one by one run their chunks through the layer's own
        weights, and the batch they join copies the weights once."""
        if self.weights is None:
            a, m = self.block.attn, self.block.mlp
            self.weights = (
                _inputs_first(a.q_proj, a.k_proj, a.v_proj),
                _inputs_first(a.o_proj),
                _inputs_first(m.gate_proj, m.up_proj),
                _inputs_first(m.down_proj),
            )
        return self.weights

    def update(self, k: torch.Tensor, v: torch.Tensor):
        """Store the new keys/values [B, T, Hkv, Dh] of the forward the cache prepared; returns the keys and
        values [B, Hkv, S', Dh] its queries attend to."""
        cache, keys, values = self.cache, self.k, self.v
        if isinstance(cache.slots, int):  # one position, the same slot in every row
            keys[:, :, cache.slots] = k[:, 0]
            values[:, :, cache.slots] = v[:, 0]
        else:
            if not cache.in_place:
                keys = torch.cat([keys, k.transpose(1, 2)], dim=2)
                values = torch.cat([values, v.transpose(1, 2)], dim=2)
            n = cache.slots.shape[1]
            if n < k.shape[1]:  # a chunk longer than the ring: only its newest entries stay
                k, v = k[:, -n:], v[:, -n:]
            # rows [B, 1] and slots [B, n] index [B, n, Hkv, Dh]
            self.k[cache.index, :, cache.slots] = k
            self.v[cache.index, :, cache.slots] = v
        if cache.visible is not None:
            keys, values = keys[:, :, : cache.visible], values[:, :, : cache.visible]
        return keys, values

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store the new keys/values k, v [B or n, T, Hkv, Dh] (see :meth:`update`) and attend queries q
        [B or n, H, T, Dh] to what the cache then holds (of their rows) -> [B or n, H, T, Dh]."""
        cache = self.cache
        keys, values = self.update(k, v)
        rows = None if cache.index is cache.rows else cache.index[:, 0]  # some rows only: theirs
        if q.shape[2] == 1 and torch.compiler.is_compiling():
            return one_query_attention(q, keys, values, cache.mask, rows)
        if rows is not None:
            keys, values = keys.index_select(0, rows), values.index_select(0, rows)
        gqa = keys.shape[1] != q.shape[1]
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=cache.mask, enable_gqa=gqa)


def one_query_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of one query per row, q [n, H, 1, D], to keys/values [B, Hkv, S, D] (``rows`` [n]: of
    those batch rows, else n = B) with an additive mask [n, 1, 1, S]: SDPA's, written out for compiled
    decoding steps. Inductor fuses the products, the mask and the softmax into one loop nest per layer
    that reads the keys and values once, straight from the cache (no gathered copy of the rows); its
    SDPA call at one query took 1.3-1.9x as long (docs/BENCHMARKS.md, "Compiled decoding", 2026-12-07).
    Eager code keeps SDPA: written out, it would be several kernels instead of one."""
    if rows is not None:
        keys, values = keys[rows], values[rows]
    n, H, _, D = q.shape
    Hkv = keys.shape[1]
    q = q.float().view(n, Hkv, H // Hkv, D)  # the query heads of each key head, side by side
    scores = (q @ keys.float().transpose(-1, -2)) * D**-0.5  # [n, Hkv, H / Hkv, S]
    if mask is not None:
        scores = scores + mask
    out = torch.softmax(scores, dim=-1) @ values.float()  # [n, Hkv, H / Hkv, D]
    return out.to(values.dtype).view(n, H, 1, D)


def _inputs_first(*linears: nn.Linear) -> torch.Tensor:
    """The weights of ``linears`` side by side as one [in, sum of outs] matrix (``x @ w`` applies them all)."""
    return torch.cat([lin.weight.detach().t() for lin in linears], dim=1)  # one copy, already [in, out]


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
        self.projected = config.dim * (self.n_heads + 2 * self.n_kv) * self.head_dim  # q/k/v weights

    def forward(self, x, rot, positions, cache: LayerCache | None = None, segments=None, consecutive=False):
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        if T == 1 and cache is not None and cache.block is not None:
            return self.step(x, rot, cache)
        q = apply_rope(self.q_proj(x).view(B, T, H, D), rot)
        k = apply_rope(self.k_proj(x).view(B, T, Hkv, D), rot)
        v = self.v_proj(x).view(B, T, Hkv, D)
        q = q.transpose(1, 2)  # [B, H, T, D]
        if cache is None:
            drop = self.dropout if self.training else 0.0
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, Hkv, T, D]
            seg = segments  # queries and keys are the same sequence
            y = causal_attention(
                q, k, v, positions, positions, self.window, seg, seg, self.backend, drop, consecutive
            )
        else:
            y = cache.attend(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))

    def step(self, x: torch.Tensor, rot: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """The forward of one position per row x [B, 1, dim] with a small stack's cache (fused q/k/v): at one
        position [B, heads, 1, D] and [B, 1, heads, D] are the same memory, so no transposes (decoding runs
        this once per layer and byte, where every op counts)."""
        B, H, Hkv, D = x.shape[0], self.n_heads, self.n_kv, self.head_dim
        w_qkv, w_o, _, _ = cache.decoding_weights()
        qkv = (x @ w_qkv).view(B, H + 2 * Hkv, 1, D)
        qk = apply_rope(qkv[:, : H + Hkv], rot)  # rot [B, 1, 1, D/2] broadcasts over the heads
        y = cache.attend(qk[:, :H], qk[:, H:].transpose(1, 2), qkv[:, H + Hkv :].transpose(1, 2))
        return y.view(B, 1, -1) @ w_o


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.projected = 2 * dim * hidden  # gate/up weights

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """x [B, T, dim]; ``cache``: a decoding cache, whose decoding weights replace these at one position."""
        if cache is not None and cache.block is not None and x.shape[1] == 1:
            _, _, w_gate_up, w_down = cache.decoding_weights()
            gate, up = (x @ w_gate_up).chunk(2, dim=-1)
            return (F.silu(gate) * up) @ w_down
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

    def forward(self, x, rot, positions, cache: LayerCache | None = None, segments=None, consecutive=False):
        # in eval mode dropout is the identity: skipping its call matters when decoding byte by byte
        h = self.attn(self.attn_norm(x), rot, positions, cache, segments, consecutive)
        x = x + (self.dropout(h) if self.training else h)
        h = self.mlp(self.mlp_norm(x), cache)
        return x + (self.dropout(h) if self.training else h)


class Transformer(nn.Module):
    """A stack of blocks with its rotary embedding; no embedding, final norm or head (callers differ there)."""

    def __init__(self, config: TransformerConfig, backend: str = "sdpa"):
        super().__init__()
        self.config = config
        self.rotary = Rotary(config.head_dim, config.rope_theta)
        self.layers = nn.ModuleList(Block(config, backend) for _ in range(config.n_layers))

    def new_cache(
        self, batch_size: int = 1, max_len: int | None = None, static: bool = False, grow: bool = False
    ) -> KVCache:
        """An empty cache for ``batch_size`` rows; ``max_len``: how long they may grow, if known (a window
        that covers it needs no ring); ``static``, ``grow``: see :class:`KVCache`."""
        return KVCache(self, batch_size, max_len, static, grow)

    def begin(
        self,
        x: torch.Tensor,
        positions=None,
        cache: KVCache | None = None,
        segments=None,
        consecutive=False,
        rows=None,
    ):
        """What every layer of a forward on x [B, T, dim] shares: (positions, rotations, per-layer caches,
        whether the positions step by one: the default ones do, given ones when ``consecutive`` says so)."""
        B, T, _ = x.shape
        if rows is not None:
            if cache is None or rows.shape[0] != B:
                raise ValueError("rows [n] continue n rows of a KV cache (x [n, T, dim])")
            return (*cache.prepare(T, positions, rows), cache.layers, False)
        if cache is None:
            consecutive = consecutive or positions is None
            positions = torch.arange(T, device=x.device) if positions is None else positions
            return positions, self.rotary(positions), [None] * len(self.layers), consecutive
        if segments is not None:
            raise ValueError("a KV cache takes no segment ids (it keeps one sequence per row)")
        if cache.batch_size != B:
            raise ValueError(f"the KV cache holds {cache.batch_size} rows but the input has {B}")
        if positions is not None and positions.dim() == 1:
            positions = positions.expand(B, T)
        return (*cache.prepare(T, positions), cache.layers, False)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        segments: torch.Tensor | None = None,
        consecutive: bool = False,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, T, dim]; positions: [T] or [B, T] (default 0..T-1, or continuing every row of the cache).

        With ``cache`` the input continues what the cache holds and is added to it; with ``rows`` [n] too, x
        [n, T, dim] continues only those rows of the cache, at ``positions`` [n, T] (default, for T = 1: each
        row's next). ``consecutive``: the
        given positions step by one from each element to the next (restarting at segment starts), which
        lets a windowed stack attend in memory linear in T (:func:`blt.attention.causal_attention`).
        """
        positions, rot, layer_caches, consecutive = self.begin(
            x, positions, cache, segments, consecutive, rows
        )
        for layer, layer_cache in zip(self.layers, layer_caches):
            x = layer(x, rot, positions, layer_cache, segments, consecutive)
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
