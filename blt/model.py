"""The Byte Latent Transformer: bytes -> patches -> latent transformer -> bytes.

1. Local encoder: byte + hash n-gram embeddings, windowed self-attention layers over bytes; each patch is
   the max-pool of its byte states, projected to ``cross_attn_k`` query rows that cross-attend to the
   patch's own bytes.
2. Global transformer: causal transformer over the patch sequence, once per patch.
3. Local decoder: every byte cross-attends to the global output of the last patch closed before it, then
   windowed byte-level layers, a final norm and the 260-way head.

Numerically this is transformers' ``BltForCausalLM``, including two of its quirks that the released
checkpoints were converted under: the patch cross-attention adds its residual twice
(:class:`CrossAttention`), and with ``cross_attn_all_layers`` the encoder rebuilds the patch states after
every layer so only the last layer's cross-attention reaches the output.

Byte t's decoder reads the patch that ends at t when one ends there, else the patch before its own. Patch
boundaries at t depend only on bytes before t, so the logits at t never change when bytes are appended.

Every part also decodes: its forward takes a cache (``new_cache``) and then continues the cached rows, each
at its own position. Next to the KV caches, :class:`EncoderCache` keeps the ids the hash n-grams reach back
to and the byte states of each row's open patch (:meth:`LocalEncoder.open_patches` pools them), and
:class:`DecoderCache` the cross-attention keys/values of each row's latest closed patch
(:meth:`LocalDecoder.read_patch`). :mod:`blt.generate` runs the decoding loop over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from blt import kernels as ops  # byte<->patch operations (BLT_KERNELS=reference: plain blt.patch_ops)
from blt import patch_ops
from blt.checkpoint import load_pretrained, save_pretrained
from blt.config import (
    BLTConfig,
    ConfigError,
    LocalDecoderConfig,
    LocalEncoderConfig,
    PatchingConfig,
    TransformerConfig,
    check,
)
from blt.generate import generate
from blt.layers import KVCache, RMSNorm, Transformer, init_weights, standard
from blt.patch_ops import decoder_patch_ids
from blt.patcher import EntropyModel
from blt.patcher.schemes import ENTROPY_SCHEMES, decide_starts, lengths_from_starts
from blt.tokenizer import check_id_batch
from blt.validation import checks_values

KIND = "blt"


@dataclass
class BLTOutput:
    logits: torch.Tensor  # [B, T, vocab] float32
    patch_lengths: torch.Tensor  # [B, P] the patches used, rows right-padded with 0


class CrossAttention(nn.Module):
    """Queries attend to keys/values of another sequence through a patch mask; RMSNorm on both inputs."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.q_norm = RMSNorm(config.dim, config.norm_eps)
        self.k_norm = RMSNorm(config.dim, config.norm_eps)
        self.q_proj = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.dim, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.dim, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory [B, Tk, D] -> keys, values [B, H, Tk, Dh] (grouped heads repeated: the patch attentions
        take one key head per query head)."""
        B = memory.shape[0]
        m = self.k_norm(memory)
        k = self.k_proj(m).view(B, -1, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(m).view(B, -1, self.n_kv, self.head_dim).transpose(1, 2)
        if self.n_kv != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        return k, v

    def forward(self, x, memory, attend, kv=None) -> torch.Tensor:
        """x [B, Tq, D] attends to memory [B, Tk, D] (or its ``kv`` from :meth:`keys_values`, which a decoding
        cache keeps) through ``attend(q, k, v)``, one of the patch attentions -> [B, Tq, D]."""
        B, Tq, _ = x.shape
        q = self.q_proj(self.q_norm(x)).view(B, Tq, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.keys_values(memory) if kv is None else kv
        y = attend(q, k, v)  # [B, H, Tq, Dh]
        # the released models' quirk (see the module docstring): the residual is added twice
        return x + (x + self.o_proj(y.transpose(1, 2).reshape(B, Tq, -1)))


class EncoderCache:
    """What the local encoder keeps while decoding a batch: its KV cache, the last ids the hash n-grams of the
    next one reach back to, and the byte states of each row's open patch (pooled when the patch closes)."""

    def __init__(self, encoder: LocalEncoder, batch_size: int, max_len: int, static: bool = False):
        self.kv = encoder.transformer.new_cache(batch_size, max_len, static)
        device = self.kv.pos.device
        # id 0 before the start, as LocalEncoder.embed pads a sequence
        self.recent = torch.zeros(batch_size, encoder.reach - 1, dtype=torch.long, device=device)
        self.open = self.kv.layers[0].k.new_zeros(batch_size, 16, encoder.config.dim)  # [B, capacity, D]
        self.open_len = torch.zeros(
            batch_size, dtype=torch.long, device=device
        )  # [B] bytes in the open patch
        self.open_lens = [0] * batch_size  # the same on the host: sizing the buffer needs no sync

    def extend_open(self, h: torch.Tensor) -> None:
        """Append byte states h [B, T, D] to every row's open patch."""
        T = h.shape[1]
        need = max(self.open_lens) + T
        if need > self.open.shape[1]:
            self.open = F.pad(self.open, (0, 0, 0, max(need, 2 * self.open.shape[1]) - self.open.shape[1]))
        slots = self.open_len.unsqueeze(1)  # [B, T]
        if T != 1:
            slots = slots + torch.arange(T, device=h.device)
        self.open[self.kv.rows, slots] = h
        self.open_len = self.open_len + T
        self.open_lens = [n + T for n in self.open_lens]

    def clear_open(self, rows: list[int]) -> None:
        """Empty the open patch of rows ``rows`` (their patch closed)."""
        if len(rows) == len(self.open_lens):
            self.open_len = torch.zeros_like(self.open_len)
        else:
            self.open_len = self.open_len.index_fill(0, torch.tensor(rows, device=self.open_len.device), 0)
        for r in rows:
            self.open_lens[r] = 0

    def select(self, rows: torch.Tensor) -> None:
        self.kv.select(rows)
        self.recent, self.open, self.open_len = self.recent[rows], self.open[rows], self.open_len[rows]
        self.open_lens = [self.open_lens[r] for r in rows.tolist()]

    def add_rows(self, others: list[EncoderCache]) -> None:
        """Append the rows of other caches of the same encoder after this one's."""
        caches = [self, *others]
        width = max(c.open.shape[1] for c in caches)
        self.open = torch.cat([F.pad(c.open, (0, 0, 0, width - c.open.shape[1])) for c in caches])
        self.kv.add_rows([c.kv for c in others])
        self.recent = torch.cat([c.recent for c in caches])
        self.open_len = torch.cat([c.open_len for c in caches])
        self.open_lens = [n for c in caches for n in c.open_lens]


class LocalEncoder(nn.Module):
    def __init__(self, config: LocalEncoderConfig, vocab_size: int, k_rep: int, backend: str = "sdpa"):
        super().__init__()
        self.config, self.k_rep = config, k_rep
        self.n_tables = config.hash_functions * len(config.hash_ngram_sizes)
        self.reach = max(config.hash_ngram_sizes, default=1) if self.n_tables else 1  # ids an embedding reads
        self.embed_tokens = nn.Embedding(vocab_size, config.dim)
        # one table for every (hash function, n-gram size), concatenated (the released layout)
        self.hash_embeddings = (
            nn.Embedding(self.n_tables * config.hash_vocab, config.dim) if self.n_tables else None
        )
        self.transformer = Transformer(config, backend)
        self.patch_embedding_projection = nn.Linear(config.dim, config.dim * k_rep, bias=False)
        n_cross = config.n_layers if config.cross_attn_all_layers else 1
        self.cross_attn_layers = nn.ModuleList(CrossAttention(config) for _ in range(n_cross))

    def new_cache(
        self, batch_size: int = 1, max_len: int | None = None, static: bool = False
    ) -> EncoderCache:
        """``static``: see :class:`blt.layers.KVCache`."""
        max_len = self.config.max_seq_len if max_len is None else max_len
        return EncoderCache(self, batch_size, max_len, static)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> byte + hash n-gram embeddings [B, T, D] (n-grams reach back over earlier ids)."""
        if self.hash_embeddings is None:
            return self.embed_tokens(ids)
        c = self.config
        return ops.hash_embedding(
            ids,
            self.embed_tokens.weight,
            self.hash_embeddings.weight,
            c.hash_ngram_sizes,
            c.hash_functions,
            c.hash_vocab,
        )

    def forward(self, ids: torch.Tensor, positions=None, cache: EncoderCache | None = None) -> torch.Tensor:
        """Byte states [B, T, D] of ids [B, T]; they do not depend on the patching.

        With ``cache`` the ids continue the cached rows (their n-grams reach into the cached ids); the states
        are not added to the open patch (:meth:`EncoderCache.extend_open` does that).
        """
        if cache is None:
            return self.transformer(self.embed(ids), positions)
        T = ids.shape[1]
        window = torch.cat([cache.recent, ids.long()], dim=1)  # [B, reach - 1 + T]
        cache.recent = window[:, window.shape[1] - cache.recent.shape[1] :]
        if cache.kv.static:  # one memory layout whatever T was (see KVCache)
            cache.recent = standard(cache.recent)
        return self.transformer(self.embed(window)[:, -T:], positions, cache.kv)

    def patches(self, h: torch.Tensor, patch_ids: torch.Tensor | None, num_patches: int) -> torch.Tensor:
        """Patch states [B, P, D * k_rep] from byte states h [B, T, D]; ``patch_ids`` None: all of each row's
        bytes are one patch (P = 1), which needs no patch mask."""
        B, D = h.shape[0], h.shape[-1]
        if patch_ids is None:
            pooled, attend = h.amax(dim=1, keepdim=True), patch_ops.one_patch_attention
        else:
            pooled = ops.patch_pool(h, patch_ids, num_patches, "max")
            attend = lambda q, k, v: ops.patch_query_attention(q, k, v, patch_ids, self.k_rep)
        queries = self.patch_embedding_projection(pooled).reshape(B, num_patches * self.k_rep, D)
        out = self.cross_attn_layers[-1](queries, h, attend)
        return out.reshape(B, num_patches, D * self.k_rep)

    def open_patches(self, cache: EncoderCache, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Patch states [B, 1, D * k_rep] of every row's open patch (``rows`` [n]: of those rows, [n, 1, ..]),
        as :meth:`patches` makes them from the bytes of the patch alone, read through a mask; a static
        cache reads its whole buffer, so that a compiled step has the same shapes at every byte. The
        patches stay open (:meth:`EncoderCache.clear_open` closes them)."""
        states, lengths = cache.open, cache.open_len
        if not cache.kv.static:  # slots past the longest open patch hold nothing
            states = states[:, : max(cache.open_lens)]
        if rows is not None:
            states, lengths = states.index_select(0, rows), lengths.index_select(0, rows)
        outside = torch.arange(states.shape[1], device=states.device) >= lengths.unsqueeze(1)  # [n, W]
        return self.patches(states, outside.long(), 1)  # outside bytes: id 1, no patch


class GlobalTransformer(nn.Module):
    def __init__(self, config: TransformerConfig, input_dim: int, backend: str = "sdpa"):
        super().__init__()
        # the released 1B model feeds encoder patches straight in; wider globals need a projection
        self.token_embedding_projection = (
            nn.Linear(input_dim, config.dim, bias=False) if input_dim != config.dim else None
        )
        self.transformer = Transformer(config, backend)

    def new_cache(
        self, batch_size: int = 1, max_len: int | None = None, static: bool = False, grow: bool = False
    ) -> KVCache:
        return self.transformer.new_cache(batch_size, max_len, static, grow)

    def forward(self, patches: torch.Tensor, positions=None, cache: KVCache | None = None, rows=None):
        """patches [B, P, D_enc * k] -> latent states [B, P, D_global] (``rows``: see Transformer.forward)."""
        x = patches if self.token_embedding_projection is None else self.token_embedding_projection(patches)
        return self.transformer(x, positions, cache, rows=rows)


class DecoderCache:
    """What the local decoder keeps while decoding a batch: its KV cache and, for every cross-attention
    layer, the keys/values of each row's latest closed patch."""

    def __init__(self, decoder: LocalDecoder, batch_size: int, max_len: int, static: bool = False):
        self.kv = decoder.transformer.new_cache(batch_size, max_len, static)
        self.patch: list[tuple[torch.Tensor, torch.Tensor]] = []  # per cross layer: [B, H, k_rep, Dh] each

    def select(self, rows: torch.Tensor) -> None:
        self.kv.select(rows)
        self.patch = [(k[rows], v[rows]) for k, v in self.patch]

    def add_rows(self, others: list[DecoderCache]) -> None:
        """Append the rows of other caches of the same decoder after this one's."""
        caches = [self, *others]
        self.patch = [
            (torch.cat([c.patch[i][0] for c in caches]), torch.cat([c.patch[i][1] for c in caches]))
            for i in range(len(self.patch))
        ]
        self.kv.add_rows([c.kv for c in others])


class LocalDecoder(nn.Module):
    def __init__(
        self, config: LocalDecoderConfig, vocab_size: int, global_dim: int, k_rep: int, backend="sdpa"
    ):
        super().__init__()
        self.config, self.k_rep = config, k_rep
        self.patch_embedding_projection = nn.Linear(global_dim, config.dim * k_rep, bias=False)
        n_cross = config.n_layers if config.cross_attn_all_layers else 1
        self.cross_attn_layers = nn.ModuleList(CrossAttention(config) for _ in range(n_cross))
        self.transformer = Transformer(config, backend)
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, vocab_size, bias=False)

    def new_cache(
        self, batch_size: int = 1, max_len: int | None = None, static: bool = False
    ) -> DecoderCache:
        """``static``: see :class:`blt.layers.KVCache`."""
        max_len = self.config.max_seq_len if max_len is None else max_len
        return DecoderCache(self, batch_size, max_len, static)

    def patch_rows(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent patch states [B, P, D_global] -> the key/value rows [B, P * k_rep, D] bytes attend to."""
        B, P, _ = latent.shape
        return self.patch_embedding_projection(latent).reshape(B, P * self.k_rep, self.config.dim)

    def read_patch(self, cache: DecoderCache, latent: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Make latent [B, 1, D_global] the patch the cached rows read next; with ``rows`` [n], latent [n, 1,
        D_global] is the patch of those rows (the others keep theirs)."""
        memory = self.patch_rows(latent)  # [B or n, k_rep, D]
        new = [layer.keys_values(memory) for layer in self.cross_attn_layers]
        if rows is not None:
            new = [
                (old_k.index_copy(0, rows, k), old_v.index_copy(0, rows, v))
                for (k, v), (old_k, old_v) in zip(new, cache.patch)
            ]
        if cache.kv.static:  # one memory layout, from a prefill or a step (see KVCache)
            new = [(standard(k), standard(v)) for k, v in new]
        cache.patch = new

    def forward(self, h, rows=None, patch_ids=None, positions=None, cache: DecoderCache | None = None):
        """h [B, T, D] byte states, rows [B, P*k, D], patch_ids [B, T] (row group per byte) -> logits.

        With ``cache`` the bytes continue the cached rows; without ``rows`` they all read the cached patch
        (:meth:`read_patch`), as decoding does one byte at a time.
        """
        if rows is None and cache is None:
            raise ValueError("the decoder needs patch rows, or a cache holding the patch each row reads")
        stack = self.transformer
        kv = cache.kv if cache is not None else None
        positions, rot, layer_caches, consecutive = stack.begin(h, positions, kv)
        crosses = list(self.cross_attn_layers)
        if rows is None:  # every byte reads its row's one cached patch
            attend, patches = patch_ops.one_patch_attention, cache.patch
        else:
            attend = lambda q, k, v: ops.byte_query_attention(q, k, v, patch_ids, self.k_rep)
            patches = [None] * len(crosses)
        for i, (layer, layer_cache) in enumerate(zip(stack.layers, layer_caches)):
            if i < len(crosses):
                h = crosses[i](h, rows, attend, patches[i])
            h = layer(h, rot, positions, layer_cache, consecutive=consecutive)
        return self.lm_head(self.norm(h)).float()


def check_blt_config(config: BLTConfig) -> None:
    """Shape constraints between the parts that the dataclasses cannot check one by one."""
    check(
        config.encoder.n_layers >= 1, "encoder.n_layers must be >= 1 (patches are read from its last layer)"
    )
    check(
        config.decoder.n_layers >= 1,
        "decoder.n_layers must be >= 1 (its first layer cross-attends to patches)",
    )
    check(
        config.decoder.dim == config.encoder.dim,
        f"decoder.dim ({config.decoder.dim}) must equal encoder.dim ({config.encoder.dim}): "
        "the decoder starts from the encoder's byte states",
    )


def check_length_values(lengths: torch.Tensor, T: int) -> None:
    """Clear errors for patch lengths [B, P] (int64) that do not cut a sequence of T ids into patches: a
    negative length, a row not summing to T, an empty patch before a non-empty one. Reads their values."""
    if (lengths < 0).any():
        row, col = (lengths < 0).nonzero()[0].tolist()
        raise ValueError(f"patch_lengths[{row}, {col}] = {int(lengths[row, col])} is negative")
    sums = lengths.sum(-1)
    if (sums != T).any():
        row = int((sums != T).nonzero()[0])
        raise ValueError(f"patch_lengths row {row} sums to {int(sums[row])}, but the sequence has {T} ids")
    # zeros are right padding only: an empty patch inside a row would shift the decoder's patch ids
    nonzero = lengths > 0
    if (nonzero[:, 1:] & ~nonzero[:, :-1]).any():
        row = int((nonzero[:, 1:] & ~nonzero[:, :-1]).any(-1).nonzero()[0])
        raise ValueError(
            f"patch_lengths row {row} has an empty patch before a non-empty one (pad on the right)"
        )


class BLT(nn.Module):
    """Byte Latent Transformer; ``patcher`` (frozen EntropyModel) exists iff ``config.entropy_model`` is set."""

    def __init__(self, config: BLTConfig, backend: str = "sdpa"):
        super().__init__()
        check_blt_config(config)
        self.config = config
        k = config.cross_attn_k
        self.encoder = LocalEncoder(config.encoder, config.vocab_size, k, backend)
        self.global_transformer = GlobalTransformer(
            config.global_transformer, config.encoder.dim * k, backend
        )
        self.decoder = LocalDecoder(
            config.decoder, config.vocab_size, config.global_transformer.dim, k, backend
        )
        init_weights(self)
        self.patcher = None
        if config.entropy_model is not None:
            self.patcher = EntropyModel(config.entropy_model, backend)
            self.patcher.requires_grad_(False)
            self.patcher.eval()

    def train(self, mode: bool = True) -> BLT:
        super().train(mode)
        if self.patcher is not None:
            self.patcher.eval()  # frozen: no dropout, ever
        return self

    # ------------------------------------------------------------------------------------------------------
    # input checks and patching

    def check_ids(self, ids: torch.Tensor, check: bool | None = None) -> None:
        check_id_batch(ids, self.config.vocab_size, check)
        limit = min(self.config.encoder.max_seq_len, self.config.decoder.max_seq_len)
        if ids.shape[1] > limit:
            raise ValueError(
                f"sequence of {ids.shape[1]} ids is longer than the configured maximum of {limit}"
            )

    def check_patch_lengths(
        self, lengths: torch.Tensor, ids: torch.Tensor, check: bool | None = None
    ) -> torch.Tensor:
        """Validate caller-given patch lengths [B, P] against ids [B, T]; returns them as int64 on the ids'
        device. Shapes always, values as ``check`` says (:func:`blt.validation.checks_values`)."""
        B, T = ids.shape
        if not isinstance(lengths, torch.Tensor) or lengths.dim() != 2:
            raise ValueError(
                f"patch_lengths must be a [batch, patches] tensor, got {getattr(lengths, 'shape', lengths)}"
            )
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise ValueError(f"patch_lengths must be an integer tensor, got dtype {lengths.dtype}")
        if lengths.shape[0] != B:
            raise ValueError(f"patch_lengths has {lengths.shape[0]} rows but ids has {B}")
        if lengths.shape[1] == 0:
            raise ValueError("patch_lengths has no patches")
        if lengths.shape[1] > self.config.global_transformer.max_seq_len:
            raise ValueError(
                f"{lengths.shape[1]} patches exceed global_transformer.max_seq_len "
                f"({self.config.global_transformer.max_seq_len})"
            )
        if checks_values(check, lengths):  # before the copy to the ids' device: on the host when it is free
            check_length_values(lengths.long(), T)
        return lengths.long().to(ids.device)

    @torch.compiler.disable  # data-dependent: the number of patches is a value here, a shape after it
    @torch.no_grad()
    def compute_patches(
        self, ids: torch.Tensor, patching: PatchingConfig | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Patching of ids [B, T] under ``patching`` (default ``config.patching``; entropies from the bundled
        patcher, which runs only for the schemes that read them).

        Returns lengths [B, P] (rows right-padded with 0, summing to T) and ``next_starts`` [B]: whether
        position T would start a patch. Every scheme decides position t from positions before t, so this is
        known from ids alone; it tells the decoder whether the last byte closes its patch.
        """
        patching = self.config.patching if patching is None else patching
        needs_entropies = patching.scheme in ENTROPY_SCHEMES
        if self.patcher is None and needs_entropies:
            raise ConfigError(
                f"patching scheme {patching.scheme!r} needs an entropy model: set config.entropy_model "
                "(bundled patcher) or pass patch_lengths"
            )
        entropies = self.patcher.entropies(ids) if needs_entropies else None
        starts = decide_starts(ids, patching, entropies)  # [B, T + 1]
        return lengths_from_starts(starts[:, :-1]), starts[:, -1]

    # ------------------------------------------------------------------------------------------------------
    # forward

    def forward(
        self,
        ids: torch.Tensor,
        patch_lengths: torch.Tensor | None = None,
        next_starts: torch.Tensor | None = None,
        *,
        patching=None,
        check: bool | None = None,
    ) -> BLTOutput:
        """ids [B, T] -> logits [B, T, vocab]; patches from ``patch_lengths`` [B, P] or the configured patching.

        Caller-given lengths are taken as they are; ``next_starts`` [B] (bool, from :meth:`compute_patches`)
        says whether position T starts a patch, which decides what the last byte reads (None: it does not).
        ``patching`` overrides ``config.patching`` for this call only (the config stays as it is): a
        PatchingConfig, or a dict of some of its fields, or with ``target_patch_size`` /
        ``target_flops_per_byte`` a threshold calibrated on ``ids`` (:func:`blt.eval.dial.resolve_patching`).
        ``check`` says whether the values of ids and lengths are validated (shapes always are): by default
        when they are on the CPU and nothing is being compiled (:func:`blt.validation.checks_values`). With
        patch lengths given the forward has no graph break and no host sync: ``torch.compile(fullgraph=True)``
        takes it.
        """
        self.check_ids(ids, check)
        B, T = ids.shape
        if patching is not None:
            if patch_lengths is not None:
                raise ValueError(
                    "give patch_lengths or patching, not both: patching decides the patch lengths"
                )
            from blt.eval.dial import resolve_patching

            patching = resolve_patching(self, patching, ids)
        given = patch_lengths is not None
        if not given:
            if next_starts is not None:
                raise ValueError("next_starts needs patch_lengths: it belongs to a given patching")
            patch_lengths, next_starts = self.compute_patches(ids, patching)
        if next_starts is not None and (
            not isinstance(next_starts, torch.Tensor)
            or tuple(next_starts.shape) != (B,)
            or next_starts.dtype != torch.bool
        ):
            got = type(next_starts).__name__
            if isinstance(next_starts, torch.Tensor):
                got = f"{next_starts.dtype} {tuple(next_starts.shape)}"
            raise ValueError(f"next_starts must be a bool tensor of shape [{B}], got {got}")
        # computed lengths are valid by construction: only caller-given values are worth reading
        lengths = self.check_patch_lengths(patch_lengths, ids, check if given else False)
        P = lengths.shape[1]

        h = self.encoder(ids)  # [B, T, De]
        patches = self.encoder.patches(h, patch_ops.patch_ids_from_lengths(lengths, T), P)  # [B, P, De*k]
        latent = self.global_transformer(patches)  # [B, P, Dg]
        logits = self.decoder(h, self.decoder.patch_rows(latent), decoder_patch_ids(lengths, T, next_starts))
        return BLTOutput(logits=logits, patch_lengths=lengths)

    # ------------------------------------------------------------------------------------------------------
    # generation and checkpoints

    generate = generate  # blt.generate.generate(model, prompt, ...), as a method: model.generate(prompt, ...)

    def save_pretrained(self, directory: str | Path, format: str = "blt") -> Path:
        """Write safetensors + JSON config: our layout (``"blt"``) or transformers' (``"hf"``)."""
        return save_pretrained(directory, self, KIND, format=format)

    @classmethod
    def from_pretrained(cls, path: str | Path, backend: str = "sdpa") -> BLT:
        """Our ``blt`` checkpoint, a transformers BLT directory or a blt run directory, in eval mode."""
        return load_pretrained(path, KIND, lambda config, _: cls(config, backend))
