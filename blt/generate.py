"""Sampling bytes from a BLT, with cached incremental decoding.

Each new byte costs one step of every part, and none of them grows with the context except the global
transformer's cache, which gains one entry per patch:

- the streaming patcher (entropy model with a windowed KV cache) says whether the next byte starts a patch;
- the local encoder runs the byte through its windowed layers (KV cache bounded by the window);
- when a patch closes, its byte states are pooled and cross-attended into one patch, and the global
  transformer takes one step with its KV cache;
- the local decoder runs the byte against the latest closed patch (windowed KV cache) and gives the logits.

The logits equal those of :meth:`BLT.forward` on the whole sequence (patch boundaries at t depend only on
bytes before t), so greedy cached decoding reproduces greedy decoding that recomputes everything.
Prompts of different lengths are decoded one after the other, each with its own caches.
"""

from __future__ import annotations

import torch

from blt import patch_ops
from blt.model import decoder_patch_ids
from blt.patcher import StreamingPatcher, lengths_from_starts
from blt.tokenizer import EOS_ID, OFFSET, check_ids, decode, encode


class IncrementalDecoder:
    """Caches of all four parts for one sequence; :attr:`logits` predict the byte after the last one fed."""

    @torch.no_grad()
    def __init__(self, model, ids: torch.Tensor):
        """ids [T] (T >= 1): the prompt, run in one chunk through every part."""
        self.model = model
        self.max_patches = model.config.global_transformer.max_seq_len
        self.ngram_reach = max(model.config.encoder.hash_ngram_sizes, default=1)
        self.patcher = StreamingPatcher(model.config.patching, model.patcher)
        self.encoder_cache = model.encoder.transformer.new_cache()
        self.global_cache = model.global_transformer.transformer.new_cache()
        self.decoder_cache = model.decoder.transformer.new_cache()
        self.ids = ids.tolist()
        T = len(self.ids)
        x = ids.unsqueeze(0)  # [1, T]
        starts = self.patcher.feed(x)  # [1, T]
        next_starts = self.patcher.next_starts()  # [1]
        positions = torch.arange(T, device=x.device)
        h = model.encoder.bytes(model.encoder.embed(x), positions, self.encoder_cache)  # [1, T, D]

        lengths = lengths_from_starts(starts)  # [1, P]
        P = lengths.shape[1]
        closed = P - 1 + int(next_starts[0])  # every patch but the open one (position 1 always starts one)
        patches = model.encoder.patches(h, patch_ops.patch_ids_from_lengths(lengths, T), P)[:, :closed]
        self._check_patches(closed)
        latent = model.global_transformer(patches, torch.arange(closed, device=x.device), self.global_cache)
        rows = model.decoder.patch_rows(latent)  # [1, closed * k, D]
        dec_ids = decoder_patch_ids(lengths, T, next_starts)
        logits = model.decoder(h, rows, dec_ids, positions, self.decoder_cache)
        self.logits = logits[0, -1]  # [vocab]

        self.k = model.config.cross_attn_k
        self.rows = rows[:, -self.k :]  # rows of the latest closed patch
        self.patches = closed
        open_len = 0 if next_starts[0] else int(lengths[0, lengths[0] > 0][-1])
        self.open_h = [h[:, T - open_len :]] if open_len else []  # byte states of the open patch

    def _check_patches(self, n: int) -> None:
        if n > self.max_patches:
            raise ValueError(f"{n} patches exceed global_transformer.max_seq_len ({self.max_patches})")

    @torch.no_grad()
    def push(self, token: int) -> torch.Tensor:
        """Feed one id; returns the logits [vocab] for the id after it."""
        model = self.model
        t = len(self.ids)
        self.ids.append(token)
        self.patcher.push(token)
        next_starts = bool(self.patcher.next_starts()[0])
        device = self.rows.device
        # hash n-grams of the new byte reach back ngram_reach - 1 ids
        tail = torch.tensor(self.ids[-self.ngram_reach :], device=device).unsqueeze(0)
        x = model.encoder.embed(tail)[:, -1:]  # [1, 1, D]
        position = torch.tensor([t], device=device)
        h = model.encoder.bytes(x, position, self.encoder_cache)  # [1, 1, D]
        self.open_h.append(h)
        if next_starts:  # the new byte closes its patch: one global step
            self._check_patches(self.patches + 1)
            hp = torch.cat(self.open_h, dim=1)  # [1, n, D]
            patch = model.encoder.patches(hp, torch.zeros(hp.shape[:2], dtype=torch.long, device=device), 1)
            latent = model.global_transformer(
                patch, torch.tensor([self.patches], device=device), self.global_cache
            )
            self.rows = model.decoder.patch_rows(latent)  # [1, k, D]
            self.patches += 1
            self.open_h = []
        zero = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.logits = model.decoder(h, self.rows, zero, position, self.decoder_cache)[0, -1]
        return self.logits


class Recompute:
    """Reference decoding: the whole forward again for every new byte."""

    def __init__(self, model, ids: torch.Tensor):
        self.model, self.ids = model, ids.unsqueeze(0)
        self.logits = model(self.ids).logits[0, -1]

    def push(self, token: int) -> torch.Tensor:
        self.ids = torch.cat([self.ids, self.ids.new_tensor([[token]])], dim=1)
        self.logits = self.model(self.ids).logits[0, -1]
        return self.logits


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


@torch.no_grad()
def generate(
    model,
    prompt,
    max_new_bytes: int = 128,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: bytes | None = None,
    seed: int | None = None,
    use_cache: bool = True,
):
    """Continue ``prompt`` by up to ``max_new_bytes`` bytes.

    ``prompt``: str / bytes (BOS is added; returns the new bytes), a list of them (returns a list of bytes),
    or ids as a LongTensor [T] / [B, T] or a list of [T] tensors, used exactly as given (returns the new
    ids as a tensor / list of tensors). A row stops after EOS or any byte in ``stop`` (kept in the output).
    ``temperature=0`` is greedy; ``seed`` makes sampling reproducible (row i uses seed + i).
    ``use_cache=False`` recomputes the whole forward for every byte (the reference).
    """
    rows, kind = _prompt_rows(prompt)
    if max_new_bytes < 0:
        raise ValueError(f"max_new_bytes must be >= 0, got {max_new_bytes}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be positive or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    stop_ids = {EOS_ID} | {b + OFFSET for b in (stop or b"")}
    limit = min(model.config.encoder.max_seq_len, model.config.decoder.max_seq_len)
    device = next(model.parameters()).device
    outputs = []
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
        generator = torch.Generator(device=device).manual_seed(seed + i) if seed is not None else None
        new: list[int] = []
        if max_new_bytes:
            state = (IncrementalDecoder if use_cache else Recompute)(model, row.long().to(device))
            while True:
                token = sample(state.logits, temperature, top_k, top_p, generator)
                new.append(token)
                if token in stop_ids or len(new) == max_new_bytes:
                    break
                state.push(token)
        outputs.append(new)
    if kind == "bytes":
        return decode(outputs[0])
    if kind == "list":
        return [decode(o) for o in outputs]
    tensors = [torch.tensor(o, dtype=torch.long) for o in outputs]
    return tensors[0] if kind == "tensor" else tensors
