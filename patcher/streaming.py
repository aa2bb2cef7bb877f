"""Streaming patcher: patch boundaries of sequences that grow one byte at a time (generation).

The entropy model keeps a KV cache bounded by its sliding window, so each new byte costs O(window) rather
than a pass over the prefix. Every scheme's rule at position t reads only positions t-1 and t-2 (see
:mod:`blt.patcher.schemes`), so the patcher keeps a two-column tail and calls the very same scheme
functions on it: its boundaries equal the batch patcher's on the same bytes.
"""

from __future__ import annotations

import torch

from blt.config import ConfigError, PatchingConfig

from .entropy_model import EntropyModel, check_input_ids, fused_entropy
from .schemes import ENTROPY_SCHEMES, SCHEMES, lengths_from_starts, patch_starts, split_long_patches

TAIL = 2  # the rules look back this many positions


class StreamingPatcher:
    """Patches ``batch_size`` sequences fed in lockstep (one id per row per :meth:`push`)."""

    def __init__(self, patching: PatchingConfig, model: EntropyModel | None = None, batch_size: int = 1):
        if patching.scheme not in SCHEMES:
            raise ConfigError(f"unknown patching scheme {patching.scheme!r}; choose one of {list(SCHEMES)}")
        if patching.scheme in ENTROPY_SCHEMES and model is None:
            raise ValueError(f"scheme {patching.scheme!r} needs an entropy model")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.patching, self.model = patching, model
        self.cache = model.new_cache() if model is not None else None
        device = next(model.parameters()).device if model is not None else torch.device("cpu")
        self.length = 0  # positions fed so far
        self.tail_ids = torch.zeros(batch_size, 0, dtype=torch.long, device=device)  # [B, <=TAIL]
        self.tail_entropies = torch.zeros(batch_size, 0, device=device)
        self.open_length = torch.zeros(batch_size, dtype=torch.long, device=device)  # bytes in the open patch
        self.start_history: list[torch.Tensor] = []  # [B, n] per feed
        self.entropy_history: list[torch.Tensor] = []

    @property
    def batch_size(self) -> int:
        return self.tail_ids.shape[0]

    def _starts(self, ids: torch.Tensor, entropies: torch.Tensor) -> torch.Tensor:
        """Starts of the new columns ``ids`` [B, n], read off the scheme functions run on tail + new."""
        k = self.tail_ids.shape[1]
        window_ids = torch.cat([self.tail_ids, ids], dim=1)
        window_entropies = torch.cat([self.tail_entropies, entropies], dim=1)
        starts = patch_starts(window_ids, self.patching, window_entropies, offset=self.length - k)[:, k:]
        if self.patching.max_patch_length is not None:
            starts = split_long_patches(starts, self.patching.max_patch_length, carried=self.open_length)
        return starts

    def next_starts(self) -> torch.Tensor:
        """Whether the next byte fed will start a patch, per row [B] (known before the byte is)."""
        # the rules never read the column they decide, so placeholder values stand in for the next byte
        placeholder = torch.zeros(self.batch_size, 1, dtype=torch.long, device=self.tail_ids.device)
        return self._starts(placeholder, placeholder.float())[:, 0]

    @torch.no_grad()
    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed ids [B, n] (a prompt, or one step when n == 1); returns their start mask [B, n]."""
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] != self.batch_size:
            raise ValueError(f"feed takes ids [{self.batch_size}, n], got shape {tuple(getattr(ids, 'shape', ()))}")
        check_input_ids(ids)
        ids = ids.to(self.tail_ids.device, torch.long)
        if self.model is not None:
            entropies = fused_entropy(self.model(ids, cache=self.cache))  # as EntropyModel.entropies
        else:
            entropies = torch.zeros(ids.shape, device=ids.device)
        starts = self._starts(ids, entropies)
        n = ids.shape[1]
        pos = torch.arange(n, device=ids.device)
        last = torch.where(starts, pos, torch.full_like(pos, -1)).max(dim=1).values  # [B], -1: no start
        self.open_length = torch.where(last >= 0, n - last, self.open_length + n)
        self.tail_ids = torch.cat([self.tail_ids, ids], dim=1)[:, -TAIL:]
        self.tail_entropies = torch.cat([self.tail_entropies, entropies], dim=1)[:, -TAIL:]
        self.length += n
        self.start_history.append(starts)
        self.entropy_history.append(entropies)
        return starts

    def push(self, ids: torch.Tensor | int) -> torch.Tensor:
        """Feed one id per row (an int when batch_size is 1); returns whether each starts a patch [B]."""
        ids = torch.as_tensor(ids).reshape(-1, 1)  # no dtype cast: a float id must fail, not be truncated
        return self.feed(ids)[:, 0]

    def entropies(self) -> torch.Tensor:
        """Entropies of every position fed so far [B, T] (zeros without a model)."""
        return torch.cat(self.entropy_history, dim=1) if self.entropy_history else self.tail_entropies[:, :0]

    def starts(self) -> torch.Tensor:
        """Start mask of every position fed so far [B, T]."""
        return torch.cat(self.start_history, dim=1) if self.start_history else self.tail_ids[:, :0].bool()

    def patch_lengths(self) -> torch.Tensor:
        """Patch lengths of everything fed so far [B, P], as :func:`blt.patcher.patch_lengths` returns them."""
        if self.length == 0:
            raise ValueError("empty input: nothing has been fed yet")
        return lengths_from_starts(self.starts())

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (finished sequences leave a batched generation)."""
        for layer in self.cache or []:
            layer.select(rows)
        self.tail_ids, self.tail_entropies = self.tail_ids[rows], self.tail_entropies[rows]
        self.open_length = self.open_length[rows]
        self.start_history = [s[rows] for s in self.start_history]
        self.entropy_history = [e[rows] for e in self.entropy_history]
