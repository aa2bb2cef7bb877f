"""Sampling bytes from a BLT, with cached incremental decoding of a whole batch at once.

Each new byte costs one step of every part, and none of them grows with the context except the global
transformer's cache, which gains one entry per patch:

- the entropy model (windowed KV cache) gives the new byte's entropy, and the patching rules say whether the
  next byte starts a patch;
- the local encoder runs the byte through its windowed layers;
- when a patch closes, its byte states are pooled and cross-attended into one patch, and the global
  transformer takes one step;
- the local decoder runs the byte against the latest closed patch and gives the logits.

The logits equal those of :meth:`BLT.forward` on the whole sequence (patch boundaries at t depend only on
bytes before t), so greedy cached decoding reproduces greedy decoding that recomputes everything.

Prompts of different lengths decode together: each row keeps its own positions, every step advances all
rows, and the global transformer steps for all rows whenever any row closes a patch (rows that did not close
one discard the result; see :class:`StackStep`). Each prompt is prefilled on its own through the modules'
ordinary forward, then its caches are copied into the batch's buffers.
"""

from __future__ import annotations

from numbers import Integral

import torch
import torch.nn.functional as F

from blt import patch_ops
from blt.layers import KVCache, RMSNorm, Transformer, apply_rope
from blt.lm import in_eval_mode
from blt.model import decoder_patch_ids
from blt.patch_ops import HASH_PRIMES, wrap_int64
from blt.patcher import StreamingPatcher, lengths_from_starts
from blt.patcher.entropy_model import entropy_from_logits
from blt.patcher.schemes import patch_starts, split_long_patches
from blt.tokenizer import EOS_ID, OFFSET, check_ids, decode, encode

EMPTY = 1 << 62  # position of a KV slot that holds nothing: no query ever sees it
# Stacks with at most this many q/k/v/gate/up weights get fused copies of them (one matmul instead of three,
# one instead of two). Small stacks are bound by the number of ops per step, so fusing pays; bigger ones are
# bound by reading their weights, where fusing gains nothing and would double their memory.
FUSE_LIMIT = 1 << 24


def rms_norm(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` in one fused op when everything is float32 (the module's float32 maths, fewer ops)."""
    if x.dtype == torch.float32 and norm.weight.dtype == torch.float32:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.eps)
    return norm(x)


class HashStep:
    """Byte + hash n-gram embedding of the newest id of each row, from its last ``reach`` ids.

    :meth:`LocalEncoder.embed` on a window would hash every position of it; here only the newest, as one
    product with precomputed coefficients: the hash of the n-gram ending at t is ``sum_j ids[t-n+1+j] * p**j``
    in wrapping int64 arithmetic (see :func:`blt.patch_ops.hash_ngram_indices`), so column c of the window
    (position t - reach + 1 + c) has coefficient ``p**(c - reach + n)`` in table (p, n), or 0.
    """

    def __init__(self, encoder):
        c, self.encoder = encoder.config, encoder
        self.reach = max(c.hash_ngram_sizes, default=1)
        columns = [
            [
                wrap_int64(prime ** (col - self.reach + n)) if col >= self.reach - n else 0
                for col in range(self.reach)
            ]
            for prime in (HASH_PRIMES[f % len(HASH_PRIMES)] for f in range(c.hash_functions))
            for n in c.hash_ngram_sizes
        ]
        device = encoder.embed_tokens.weight.device
        self.coefficients = torch.tensor(columns, dtype=torch.long, device=device).reshape(-1, self.reach).T
        self.offsets = torch.arange(len(columns), device=device) * c.hash_vocab  # first row of each table

    def __call__(self, recent: torch.Tensor) -> torch.Tensor:
        """recent [B, reach] ids (left-padded with 0) -> embeddings [B, 1, D] of the last column."""
        encoder = self.encoder
        x = encoder.embed_tokens(recent[:, -1:])  # [B, 1, D]
        if encoder.hash_embeddings is None:
            return x
        hashes = (recent.unsqueeze(-1) * self.coefficients).sum(1)  # [B, n_tables]
        rows = encoder.hash_embeddings(torch.remainder(hashes, encoder.config.hash_vocab) + self.offsets)
        for i in range(rows.shape[1]):  # table by table, in the order LocalEncoder.embed adds them
            x = x + rows[:, i : i + 1]
        return x


class StackStep:
    """A transformer stack advanced by one position per row, each row at its own position.

    Keys/values live in preallocated buffers [B, Hkv, S, Dh]: a ring of S = window slots (position p in slot
    p % S) for windowed stacks, else a buffer that doubles when full. Every layer shares the slots' positions
    [B, S], so one mask per step serves all layers. A row that writes a position and then does not advance
    (the global stack for rows that closed no patch) rewrites the same slot at its next step, so the stale
    entry is never seen. Small stacks use fused copies of their projections (see ``FUSE_LIMIT``).
    """

    def __init__(self, stack: Transformer, caches: list[list[KVCache]], max_len: int):
        self.stack, self.window = stack, stack.config.window
        self.fused = [self._fuse(layer) for layer in stack.layers] if _fusable(stack) else None
        tops = [int(c[0].pos.max()) + 1 if len(c[0]) else 0 for c in caches]
        if self.window is not None:
            self.size, self.ring = min(self.window, max_len), True
        else:
            self.size, self.ring = max(16, 2 * max(tops)), False
        ref = stack.layers[0].attn.k_proj.weight
        attn = stack.layers[0].attn
        B = len(caches)
        shape = (B, attn.n_kv, self.size, attn.head_dim)
        self.k = [ref.new_zeros(shape) for _ in stack.layers]
        self.v = [ref.new_zeros(shape) for _ in stack.layers]
        self.pos = torch.full((B, self.size), EMPTY, dtype=torch.long, device=ref.device)
        self.rows = torch.arange(B, device=ref.device)
        self._rope_table(2 * max(tops) + 16)
        for b, cache in enumerate(caches):
            if not len(cache[0]):
                continue
            slots = cache[0].pos % self.size
            self.pos[b, slots] = cache[0].pos
            for i, layer_cache in enumerate(cache):
                self.k[i][b].index_copy_(1, slots, layer_cache.k[0].to(ref.dtype))
                self.v[i][b].index_copy_(1, slots, layer_cache.v[0].to(ref.dtype))

    @staticmethod
    def _fuse(layer) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated q/k/v and gate/up weights of a Block."""
        a, m = layer.attn, layer.mlp
        qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        return qkv, torch.cat([m.gate_proj.weight, m.up_proj.weight])

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, top: int) -> torch.Tensor:
        """x [B, 1, D] at positions [B] (``top``: their maximum) -> [B, 1, D]."""
        step = self.prepare(positions, top)
        for i in range(len(self.stack.layers)):
            x = self.layer(i, x, step)
        return x

    def _rope_table(self, n: int) -> None:
        """cos/sin [n, Dh/2] of positions 0..n-1, grown by doubling as positions grow."""
        self.cos, self.sin = self.stack.rotary(torch.arange(n, device=self.rows.device))

    def prepare(self, positions: torch.Tensor, top: int) -> tuple:
        """Claim each row's slot for positions [B]; returns what every layer of this step shares."""
        if not self.ring and top >= self.size:
            self._grow(2 * top)
        if top >= self.cos.shape[0]:
            self._rope_table(2 * top)
        slot = positions % self.size if self.ring else positions
        self.pos[self.rows, slot] = positions
        q = positions.unsqueeze(1)  # [B, 1]
        seen = self.pos <= q
        if self.window is not None:
            seen &= self.pos > q - self.window
        # an additive mask: SDPA's CPU kernel is faster with it than with a boolean one
        mask = torch.zeros_like(seen, dtype=self.k[0].dtype).masked_fill_(~seen, float("-inf"))
        # cos/sin [B, 1, Dh/2], mask [B, 1, 1, S]
        return self.cos[q], self.sin[q], slot, mask[:, None, None, :]

    def layer(self, i: int, x: torch.Tensor, step: tuple) -> torch.Tensor:
        """Layer i of the stack on x [B, 1, D] (a pre-norm Block, as Block.forward computes it)."""
        cos, sin, slot, mask = step
        layer = self.stack.layers[i]
        attn, mlp = layer.attn, layer.mlp
        B, nq, nk = x.shape[0], attn.n_heads, attn.n_kv
        h = rms_norm(layer.attn_norm, x)
        if self.fused:
            qkv = F.linear(h, self.fused[i][0])
        else:
            qkv = torch.cat([attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)], dim=-1)
        qkv = qkv.view(B, -1, 1, attn.head_dim)  # [B, H + 2 Hkv, 1, Dh]
        qk = apply_rope(qkv[:, : nq + nk], cos, sin)  # q and k in one call
        self.k[i][self.rows, :, slot] = qk[:, nq:, 0]
        self.v[i][self.rows, :, slot] = qkv[:, nq + nk :, 0]
        y = F.scaled_dot_product_attention(
            qk[:, :nq], self.k[i], self.v[i], attn_mask=mask, enable_gqa=nq != nk
        )  # [B, H, 1, Dh]
        x = x + attn.o_proj(y.reshape(B, 1, -1))
        h = rms_norm(layer.mlp_norm, x)
        if self.fused:
            gate, up = F.linear(h, self.fused[i][1]).chunk(2, dim=-1)
        else:
            gate, up = mlp.gate_proj(h), mlp.up_proj(h)
        return x + mlp.down_proj(F.silu(gate) * up)

    def _grow(self, size: int) -> None:
        extra = size - self.size
        self.k = [F.pad(k, (0, 0, 0, extra)) for k in self.k]
        self.v = [F.pad(v, (0, 0, 0, extra)) for v in self.v]
        self.pos = F.pad(self.pos, (0, extra), value=EMPTY)
        self.size = size

    def select(self, rows: torch.Tensor) -> None:
        self.k, self.v = [k[rows] for k in self.k], [v[rows] for v in self.v]
        self.pos, self.rows = self.pos[rows], self.rows[: len(rows)]


def _fusable(stack: Transformer) -> bool:
    names = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
    weights = [m.weight for name, m in stack.named_modules() if name.rsplit(".", 1)[-1] in names]
    return sum(w.numel() for w in weights) <= FUSE_LIMIT


class _Prefill:
    """One prompt [T] run in one chunk through every part, with the ordinary caches of each module."""

    def __init__(self, model, ids: torch.Tensor):
        self.patcher = StreamingPatcher(model.config.patching, model.patcher)
        self.encoder_cache = model.encoder.transformer.new_cache()
        self.global_cache = model.global_transformer.transformer.new_cache()
        self.decoder_cache = model.decoder.transformer.new_cache()
        T = ids.shape[0]
        x = ids.unsqueeze(0)  # [1, T]
        starts = self.patcher.feed(x)  # [1, T]
        next_starts = self.patcher.next_starts()  # [1]
        positions = torch.arange(T, device=x.device)
        h = model.encoder.bytes(model.encoder.embed(x), positions, self.encoder_cache)  # [1, T, D]

        lengths = lengths_from_starts(starts)  # [1, P]
        P = lengths.shape[1]
        self.patches = P - 1 + int(next_starts[0])  # all but the open one (position 1 always starts one)
        check_patches(model, self.patches)
        patches = model.encoder.patches(h, patch_ops.patch_ids_from_lengths(lengths, T), P)
        latent = model.global_transformer(
            patches[:, : self.patches], torch.arange(self.patches, device=x.device), self.global_cache
        )
        rows = model.decoder.patch_rows(latent)  # [1, patches * k, D]
        dec_ids = decoder_patch_ids(lengths, T, next_starts)
        self.logits = model.decoder(h, rows, dec_ids, positions, self.decoder_cache)[0, -1]  # [vocab]
        self.rows = rows[0, -model.config.cross_attn_k :]  # [k, D] rows of the latest closed patch
        open_len = 0 if next_starts[0] else int(lengths[0, lengths[0] > 0][-1])
        self.open_h = h[0, T - open_len :]  # [open_len, D] byte states of the open patch


def check_patches(model, n: int) -> None:
    limit = model.config.global_transformer.max_seq_len
    if n > limit:
        raise ValueError(f"{n} patches exceed global_transformer.max_seq_len ({limit})")


def _left_pad(rows: list[torch.Tensor], width: int, dtype) -> torch.Tensor:
    """1-D tensors -> [B, width]: the last ``width`` values of each, left-padded with 0."""
    return torch.stack([F.pad(r[-width:], (width - min(width, r.numel()), 0)) for r in rows]).to(dtype)


class IncrementalDecoder:
    """Caches of all four parts for a batch of sequences; :attr:`logits` [B, vocab] predict each row's next id.

    ``prompts``: a LongTensor [T] (a batch of one) or a list of them (any lengths >= 1). :meth:`push` feeds
    one id per row; :meth:`select` drops rows (finished sequences).
    """

    @torch.inference_mode()
    def __init__(self, model, prompts):
        prompts = [prompts] if isinstance(prompts, torch.Tensor) else list(prompts)
        if not prompts or any(p.dim() != 1 or p.numel() == 0 for p in prompts):
            raise ValueError("IncrementalDecoder needs one or more non-empty 1-D id tensors")
        self.model, config = model, model.config
        self.k = config.cross_attn_k
        self.max_len = min(config.encoder.max_seq_len, config.decoder.max_seq_len)
        pre = [_Prefill(model, p) for p in prompts]
        device = pre[0].logits.device
        self.logits = torch.stack([p.logits for p in pre])  # [B, vocab]
        self.lengths = [p.numel() for p in prompts]  # ids fed per row
        self.patches = [p.patches for p in pre]  # closed patches per row (entries in the global cache)
        self.open_lens = [p.open_h.shape[0] for p in pre]  # bytes of each row's open patch

        self.entropy = None
        if model.patcher is not None:
            caches = [p.patcher.cache for p in pre]
            self.entropy = StackStep(model.patcher.transformer, caches, self.max_len)
        self.encoder = StackStep(model.encoder.transformer, [p.encoder_cache for p in pre], self.max_len)
        self.decoder = StackStep(model.decoder.transformer, [p.decoder_cache for p in pre], self.max_len)
        g = model.global_transformer.transformer
        self.global_ = StackStep(g, [p.global_cache for p in pre], g.config.max_seq_len)

        # the patching rules read the last two ids/entropies; the hash n-grams the last ngram_reach ids
        self.tail_ids = _left_pad([p.patcher.tail_ids[0] for p in pre], 2, torch.long)
        self.tail_entropies = _left_pad([p.patcher.tail_entropies[0] for p in pre], 2, torch.float32)
        self.hash = HashStep(model.encoder)
        self.recent = _left_pad([p.long() for p in prompts], self.hash.reach, torch.long).to(device)
        D = pre[0].open_h.shape[-1]
        self.open_h = pre[0].open_h.new_zeros(len(pre), max(16, 2 * max(self.open_lens)), D)  # [B, L, D]
        for b, p in enumerate(pre):
            self.open_h[b, : p.open_h.shape[0]] = p.open_h
        self._cross(torch.stack([p.rows for p in pre]), None)

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    def _cross(self, rows: torch.Tensor, closed: torch.Tensor | None) -> None:
        """Keys/values of the decoder's cross-attention layers for patch rows [B, k, D] (rows that closed)."""
        new_k, new_v = [], []
        for layer in self.model.decoder.cross_attn_layers:
            m = rms_norm(layer.k_norm, rows)
            new_k.append(layer.k_proj(m).view(rows.shape[0], self.k, layer.n_kv, -1).transpose(1, 2))
            new_v.append(layer.v_proj(m).view(rows.shape[0], self.k, layer.n_kv, -1).transpose(1, 2))
        if closed is None:
            self.cross_k, self.cross_v = new_k, new_v
            return
        keep = closed[:, None, None, None]
        self.cross_k = [torch.where(keep, n, o) for n, o in zip(new_k, self.cross_k)]
        self.cross_v = [torch.where(keep, n, o) for n, o in zip(new_v, self.cross_v)]

    @torch.inference_mode()
    def push(self, tokens) -> torch.Tensor:
        """Feed one id per row (list or LongTensor [B]); returns the logits [B, vocab] for the ids after them."""
        model, device = self.model, self.recent.device
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=device).reshape(-1)
        if tokens.numel() != self.batch_size:
            raise ValueError(f"push takes one id per row ({self.batch_size}), got {tokens.numel()}")
        check_ids(tokens, model.config.vocab_size)
        top = max(self.lengths)
        if top >= self.max_len:
            raise ValueError(f"a sequence would exceed the configured maximum sequence length {self.max_len}")
        positions = torch.tensor(self.lengths, device=device)  # [B] positions of the new ids
        self.lengths = [n + 1 for n in self.lengths]
        self.open_lens = [n + 1 for n in self.open_lens]
        open_len = torch.tensor(self.open_lens, device=device)
        x = tokens.unsqueeze(1)  # [B, 1]

        entropy = self._entropy(x, positions, top)  # [B, 1]
        self.tail_ids = torch.cat([self.tail_ids[:, 1:], x], dim=1)
        self.tail_entropies = torch.cat([self.tail_entropies[:, 1:], entropy], dim=1)
        closes = self._next_starts(positions, open_len)  # [B] the new byte ends its patch

        self.recent = torch.cat([self.recent[:, 1:], x], dim=1)
        h = self.encoder(self.hash(self.recent), positions, top)  # [B, 1, D]
        if max(self.open_lens) > self.open_h.shape[1]:
            self.open_h = F.pad(self.open_h, (0, 0, 0, self.open_h.shape[1]))
        self.open_h[self.encoder.rows, open_len - 1] = h[:, 0]
        closed = closes.tolist()
        if any(closed):
            self._close(closes, closed, open_len)
        self.logits = self._decode(h, positions, top)
        return self.logits

    def _entropy(self, x: torch.Tensor, positions: torch.Tensor, top: int) -> torch.Tensor:
        """Entropy model step: next-byte entropy after ids x [B, 1] -> [B, 1] (zeros without a model)."""
        lm = self.model.patcher
        if lm is None:
            return self.tail_entropies.new_zeros(x.shape)
        h = self.entropy(lm.embed_tokens(x), positions, top)
        return entropy_from_logits(lm.lm_head(rms_norm(lm.norm, h)).float())

    def _next_starts(self, positions: torch.Tensor, open_len: torch.Tensor) -> torch.Tensor:
        """Whether position t + 1 starts a patch [B], by the scheme functions run on the two-column tail."""
        patching = self.model.config.patching
        # a placeholder column stands for position t + 1, which no rule reads; column 0 is position t - 1
        ids, entropies = F.pad(self.tail_ids, (0, 1)), F.pad(self.tail_entropies, (0, 1))
        starts = patch_starts(ids, patching, entropies, offset=(positions - 1).unsqueeze(1))[:, 2:]
        if patching.max_patch_length is not None:
            starts = split_long_patches(starts, patching.max_patch_length, carried=open_len)
        return starts[:, 0]

    def _close(self, closes: torch.Tensor, closed: list[bool], open_len: torch.Tensor) -> None:
        """Pool the open patches into patches and take one global step for every row (kept where closed)."""
        model = self.model
        check_patches(model, max(p + c for p, c in zip(self.patches, closed)))
        patch = self._encode_patch(open_len)  # [B, 1, D * k]
        projection = model.global_transformer.token_embedding_projection
        x = patch if projection is None else projection(patch)
        latent = self.global_(x, torch.tensor(self.patches, device=x.device), max(self.patches))
        self._cross(model.decoder.patch_rows(latent), closes)
        self.patches = [p + c for p, c in zip(self.patches, closed)]
        self.open_lens = [0 if c else n for n, c in zip(self.open_lens, closed)]

    def _encode_patch(self, open_len: torch.Tensor) -> torch.Tensor:
        """:meth:`LocalEncoder.patches` of each row's open patch -> [B, 1, D * k].

        The same maths as the module for one patch per row, in fewer ops: a padded max-pool and one
        SDPA call with a padding mask over the open bytes.
        """
        encoder, k = self.model.encoder, self.k
        inside = torch.arange(max(self.open_lens), device=open_len.device) < open_len.unsqueeze(1)  # [B, L]
        h = self.open_h[:, : inside.shape[1]]  # [B, L, D]
        B, L, D = h.shape
        pooled = h.masked_fill(~inside.unsqueeze(-1), float("-inf")).amax(dim=1)  # [B, D]
        queries = encoder.patch_embedding_projection(pooled).view(B, k, D)
        layer = encoder.cross_attn_layers[-1]
        q = layer.q_proj(rms_norm(layer.q_norm, queries)).view(B, k, layer.n_heads, -1).transpose(1, 2)
        m = rms_norm(layer.k_norm, h)
        keys = layer.k_proj(m).view(B, L, layer.n_kv, -1).transpose(1, 2)  # [B, Hkv, L, Dh]
        values = layer.v_proj(m).view(B, L, layer.n_kv, -1).transpose(1, 2)
        mask = torch.zeros_like(inside, dtype=h.dtype).masked_fill_(~inside, float("-inf"))[:, None, None]
        y = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, enable_gqa=layer.n_heads != layer.n_kv
        )  # [B, H, k, Dh]
        # the released models' quirk: the attention's own residual plus this one
        out = queries + (queries + layer.o_proj(y.transpose(1, 2).reshape(B, k, -1)))
        return out.reshape(B, 1, D * k)

    def _decode(self, h: torch.Tensor, positions: torch.Tensor, top: int) -> torch.Tensor:
        """Local decoder step on byte states h [B, 1, D] -> logits [B, vocab] (float32)."""
        decoder = self.model.decoder
        step = self.decoder.prepare(positions, top)
        for i in range(len(decoder.transformer.layers)):
            if i < len(decoder.cross_attn_layers):
                # quirk of the released models: the attention's own residual plus this one
                h = h + self._cross_attend(i, h)
            h = self.decoder.layer(i, h, step)
        return decoder.lm_head(rms_norm(decoder.norm, h)).float()[:, 0]

    def _cross_attend(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Decoder cross-attention layer i: each byte attends to the k rows of its row's latest patch."""
        layer, B = self.model.decoder.cross_attn_layers[i], h.shape[0]
        q = layer.q_proj(rms_norm(layer.q_norm, h)).view(B, 1, layer.n_heads, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, self.cross_k[i], self.cross_v[i], enable_gqa=layer.n_heads != layer.n_kv
        )
        return h + layer.o_proj(y.reshape(B, 1, -1))

    def select(self, rows: list[int]) -> None:
        """Keep only rows ``rows`` (in this order); finished sequences leave the batch."""
        index = torch.tensor(rows, device=self.recent.device)
        for stack in (self.entropy, self.encoder, self.decoder, self.global_):
            if stack is not None:
                stack.select(index)
        self.logits, self.recent, self.open_h = self.logits[index], self.recent[index], self.open_h[index]
        self.tail_ids, self.tail_entropies = self.tail_ids[index], self.tail_entropies[index]
        self.cross_k, self.cross_v = [k[index] for k in self.cross_k], [v[index] for v in self.cross_v]
        self.lengths = [self.lengths[r] for r in rows]
        self.patches = [self.patches[r] for r in rows]
        self.open_lens = [self.open_lens[r] for r in rows]


class Recompute:
    """Reference decoding: the whole forward again for every new byte, row by row."""

    @torch.inference_mode()
    def __init__(self, model, prompts):
        prompts = [prompts] if isinstance(prompts, torch.Tensor) else list(prompts)
        self.model, self.ids = model, [p.unsqueeze(0) for p in prompts]
        self.logits = torch.stack([model(ids).logits[0, -1] for ids in self.ids])  # [B, vocab]

    @torch.inference_mode()
    def push(self, tokens) -> torch.Tensor:
        tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1, 1)
        self.ids = [torch.cat([ids, t.to(ids.device)[None]], dim=1) for ids, t in zip(self.ids, tokens)]
        self.logits = torch.stack([self.model(ids).logits[0, -1] for ids in self.ids])
        return self.logits

    def select(self, rows: list[int]) -> None:
        self.ids = [self.ids[r] for r in rows]
        self.logits = self.logits[torch.tensor(rows, device=self.logits.device)]


def sample(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """One id from logits [vocab]: greedy at temperature 0, else top-k / nucleus sampling."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop an id once the ids before it already cover top_p (the most likely id always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _prompt_rows(prompt) -> tuple[list[torch.Tensor], str]:
    """Prompt(s) -> 1-D id tensors and the output kind: 'bytes', 'list' or 'tensor' / 'tensors'."""
    if isinstance(prompt, (str, bytes, bytearray)):
        return [torch.tensor(encode(prompt))], "bytes"
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() == 1:
            return [prompt], "tensor"
        if prompt.dim() == 2:
            return list(prompt), "tensors"
        raise ValueError(f"a prompt tensor must be [T] or [B, T], got shape {tuple(prompt.shape)}")
    if isinstance(prompt, (list, tuple)) and prompt:
        if all(isinstance(p, (str, bytes, bytearray)) for p in prompt):
            return [torch.tensor(encode(p)) for p in prompt], "list"
        if all(isinstance(p, torch.Tensor) and p.dim() == 1 for p in prompt):
            return list(prompt), "tensors"
    raise ValueError(
        "prompt must be str, bytes, a LongTensor [T] or [B, T], or a non-empty list of str/bytes/[T] tensors"
    )


@torch.inference_mode()
@in_eval_mode
def generate(
    model,
    prompt,
    max_new_bytes: int = 128,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: bytes | str | None = None,
    seed: int | None = None,
    use_cache: bool = True,
):
    """Continue ``prompt`` by up to ``max_new_bytes`` bytes.

    ``prompt``: str / bytes (BOS is added; returns the new bytes), a list of them (returns a list of bytes),
    or ids as a LongTensor [T] / [B, T] or a list of [T] tensors, used exactly as given (returns the new
    ids as a tensor / list of tensors). A row stops after EOS or any byte in ``stop`` (bytes, or a str
    read as its UTF-8 bytes; the stopping byte is kept in the output).
    ``temperature=0`` is greedy; ``seed`` makes sampling reproducible (row i uses seed + i).
    ``use_cache=False`` recomputes the whole forward for every byte (the reference).
    """
    rows, kind = _prompt_rows(prompt)
    if not isinstance(max_new_bytes, Integral) or max_new_bytes < 0:
        raise ValueError(f"max_new_bytes must be an integer >= 0, got {max_new_bytes!r}")
    if not temperature >= 0:  # written so that NaN fails too
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and (not isinstance(top_k, Integral) or top_k <= 0):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    if isinstance(stop, str):
        stop = stop.encode("utf-8")
    if stop is not None and not isinstance(stop, (bytes, bytearray)):
        raise ValueError(f"stop must be bytes, str or None, got {type(stop).__name__}")
    stop_ids = {EOS_ID} | {b + OFFSET for b in (stop or b"")}
    limit = min(model.config.encoder.max_seq_len, model.config.decoder.max_seq_len)
    device = next(model.parameters()).device
    for i, row in enumerate(rows):
        if row.numel() == 0:
            raise ValueError(f"prompt {i} is empty; it needs at least one id (str/bytes prompts get BOS)")
        if row.dtype.is_floating_point or row.dtype == torch.bool:
            raise ValueError(f"prompt ids must be integers, got dtype {row.dtype}")
        check_ids(row, model.config.vocab_size)
        if row.numel() + max_new_bytes > limit:
            raise ValueError(
                f"prompt {i} ({row.numel()} ids) plus {max_new_bytes} new bytes exceeds the configured maximum "
                f"sequence length {limit}"
            )
    outputs: list[list[int]] = [[] for _ in rows]
    if max_new_bytes:
        generators = [
            torch.Generator(device=device).manual_seed(seed + i) if seed is not None else None
            for i in range(len(rows))
        ]
        state = (IncrementalDecoder if use_cache else Recompute)(model, [r.long().to(device) for r in rows])
        active = list(range(len(rows)))  # prompt index of each row of ``state``
        while True:
            if temperature == 0:
                tokens = state.logits.argmax(-1).tolist()
            else:
                logits = state.logits
                tokens = [
                    sample(logits[j], temperature, top_k, top_p, generators[i]) for j, i in enumerate(active)
                ]
            for i, token in zip(active, tokens):
                outputs[i].append(token)
            done = [tokens[j] in stop_ids or len(outputs[i]) == max_new_bytes for j, i in enumerate(active)]
            going = [j for j, d in enumerate(done) if not d]
            if not going:
                break
            if len(going) < len(active):
                state.select(going)
                active, tokens = [active[j] for j in going], [tokens[j] for j in going]
            state.push(tokens)
    if kind == "bytes":
        return decode(outputs[0])
    if kind == "list":
        return [decode(o) for o in outputs]
    tensors = [torch.tensor(o, dtype=torch.long) for o in outputs]
    return tensors[0] if kind == "tensor" else tensors
