"""Streaming patcher: patch boundaries of sequences that grow a few bytes at a time (generation).

The entropy model keeps a KV cache bounded by its sliding window, so each new byte costs O(window) rather
than a pass over the prefix. Every scheme's rule at position t reads only positions t-1 and t-2 (see
:mod:`blt.patcher.schemes`), so the patcher keeps a two-column tail and runs the very same decision,
:func:`~blt.patcher.schemes.decide_starts`, on it: its boundaries equal the batch patcher's on the same
bytes, and after every feed it knows whether the next byte will start a patch.
"""

from __future__ import annotations

import torch

from blt.config import PatchingConfig
from blt.layers import standard

from .entropy_model import EntropyModel, check_input_ids, fused_entropy
from .schemes import ENTROPY_SCHEMES, check_patching, decide_starts, lengths_from_starts

TAIL = 2  # the rules look back this many positions


class StreamingPatcher:
    """Patches ``batch_size`` sequences fed together (each :meth:`feed` adds n ids to every row).

    Rows may be at different positions (:meth:`add_rows` joins patchers fed separately). ``max_len``: how long
    the rows may grow, if known (only sizes the entropy model's cache); ``static``: the entropy model's cache
    is static (see :class:`blt.layers.KVCache`), and the patcher's own state keeps one memory layout. ``history``: keep the starts and entropies of everything fed
    (:meth:`starts`, :meth:`entropies`, :meth:`patch_lengths`); a decoder that only needs each step's answer
    keeps none (its memory then stays bounded, and a feed's Python state is the same at every step, so
    ``torch.compile`` traces it once).
    """

    def __init__(
        self,
        patching: PatchingConfig,
        model: EntropyModel | None = None,
        batch_size: int = 1,
        max_len: int | None = None,
        static: bool = False,
        history: bool = True,
    ):
        if patching.scheme in ENTROPY_SCHEMES and model is None:
            raise ValueError(f"scheme {patching.scheme!r} needs an entropy model")
        check_patching(patching, has_entropies=True)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.patching, self.model = patching, model
        self.static = static
        self.cache = model.new_cache(batch_size, max_len, static) if model is not None else None
        device = next(model.parameters()).device if model is not None else torch.device("cpu")
        self.length = torch.zeros(batch_size, dtype=torch.long, device=device)  # [B] positions fed so far
        self.tail_ids = torch.zeros(batch_size, 0, dtype=torch.long, device=device)  # [B, <=TAIL]
        self.tail_entropies = torch.zeros(batch_size, 0, device=device)
        # bytes in the open patch, counted only under max_patch_length (splitting long patches reads it)
        self.open_length = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._next = torch.ones(batch_size, dtype=torch.bool, device=device)  # position 0 starts a patch
        self.history = history
        # [B, n] per feed; None: not kept, or rows that differ in length (joined by add_rows)
        self.start_history: list[torch.Tensor] | None = [] if history else None
        self.entropy_history: list[torch.Tensor] | None = [] if history else None

    @property
    def batch_size(self) -> int:
        return self.tail_ids.shape[0]

    def next_starts(self) -> torch.Tensor:
        """Whether the next byte fed will start a patch, per row [B] (known before the byte is)."""
        return self._next

    def feed(self, ids: torch.Tensor, check: bool | None = None) -> torch.Tensor:
        """Feed ids [B, n] (a prompt, or one step when n == 1); returns their start mask [B, n]. ``check``:
        whether to check the ids' range (:func:`blt.validation.checks_values`; False: the caller did)."""
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] != self.batch_size:
            raise ValueError(f"feed takes ids [{self.batch_size}, n], got shape {tuple(getattr(ids, 'shape', ()))}")
        check_input_ids(ids, check)
        ids = ids.to(self.tail_ids.device, torch.long)
        n = ids.shape[1]
        if self.model is not None:  # the cache continues every row, as EntropyModel.entropies would
            with torch.no_grad():
                entropies = fused_entropy(self.model(ids, cache=self.cache))
        else:
            entropies = torch.zeros(ids.shape, device=ids.device)
        k = self.tail_ids.shape[1]
        tail_ids = torch.cat([self.tail_ids, ids], dim=1)  # [B, k + n]
        tail_entropies = torch.cat([self.tail_entropies, entropies], dim=1)
        decided = decide_starts(
            tail_ids,
            self.patching,
            tail_entropies,
            offset=(self.length - k).unsqueeze(1),
            context=k,
            open_length=self.open_length,
        )  # [B, n + 1]: the new ids, then the next one
        starts, self._next = decided[:, :n], decided[:, n]
        if self.patching.max_patch_length is not None:  # only splitting long patches reads it
            last = torch.where(starts, torch.arange(n, device=ids.device), -1).amax(dim=1)  # [B], -1: no start
            self.open_length = torch.where(last >= 0, n - last, self.open_length + n)
        self.tail_ids, self.tail_entropies = tail_ids[:, -TAIL:], tail_entropies[:, -TAIL:]
        if self.static:  # one memory layout whatever n was (see KVCache)
            self.tail_ids, self.tail_entropies = standard(self.tail_ids), standard(self.tail_entropies)
        self.length = self.length + n
        if self.start_history is not None:
            self.start_history.append(starts)
            self.entropy_history.append(entropies)
        return starts

    def push(self, ids: torch.Tensor | int) -> torch.Tensor:
        """Feed one id per row (an int when batch_size is 1); returns whether each starts a patch [B]."""
        ids = torch.as_tensor(ids).reshape(-1, 1)  # no dtype cast: a float id must fail, not be truncated
        return self.feed(ids)[:, 0]

    def _history(self, history: list[torch.Tensor] | None, empty: torch.Tensor) -> torch.Tensor:
        if not self.history:
            raise ValueError("this patcher keeps no history (made with history=False)")
        if history is None:
            raise ValueError("the rows of this patcher differ in length (joined by add_rows): no [B, T] history")
        return torch.cat(history, dim=1) if history else empty

    def entropies(self) -> torch.Tensor:
        """Entropies of every position fed so far [B, T] (zeros without a model)."""
        return self._history(self.entropy_history, self.tail_entropies[:, :0])

    def starts(self) -> torch.Tensor:
        """Start mask of every position fed so far [B, T]."""
        return self._history(self.start_history, self.tail_ids[:, :0].bool())

    def patch_lengths(self) -> torch.Tensor:
        """Patch lengths of everything fed so far [B, P], as :func:`blt.patcher.patch_lengths` returns them."""
        starts = self.starts()
        if starts.shape[1] == 0:
            raise ValueError("empty input: nothing has been fed yet")
        return lengths_from_starts(starts)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (finished sequences leave a batched generation)."""
        if self.cache is not None:
            self.cache.select(rows)
        self.tail_ids, self.tail_entropies = self.tail_ids[rows], self.tail_entropies[rows]
        self.length, self.open_length, self._next = self.length[rows], self.open_length[rows], self._next[rows]
        if self.start_history is not None:
            self.start_history = [s[rows] for s in self.start_history]
            self.entropy_history = [e[rows] for e in self.entropy_history]

    def add_rows(self, others: list[StreamingPatcher]) -> None:
        """Append the rows of other patchers of the same patching after this one's (prompts fed one by one
        become one batch). Rows of different lengths keep no [B, T] history."""
        patchers = [self, *others]
        if self.cache is not None:
            self.cache.add_rows([p.cache for p in others])
        # a tail is shorter than TAIL only at the very start; its left padding is never read by a rule
        width = max(p.tail_ids.shape[1] for p in patchers)
        self.tail_ids = torch.cat([_left_pad(p.tail_ids, width) for p in patchers])
        self.tail_entropies = torch.cat([_left_pad(p.tail_entropies, width) for p in patchers])
        self.history = all(p.history for p in patchers)
        lengths = {n for p in patchers for n in p.length.tolist()} if self.history else set()
        if len(lengths) == 1 and all(p.start_history is not None for p in patchers):
            self.start_history = [torch.cat([p.starts() for p in patchers])]
            self.entropy_history = [torch.cat([p.entropies() for p in patchers])]
        else:
            self.start_history = self.entropy_history = None
        for name in ("length", "open_length", "_next"):
            setattr(self, name, torch.cat([getattr(p, name) for p in patchers]))


def _left_pad(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (width - x.shape[1], 0))
