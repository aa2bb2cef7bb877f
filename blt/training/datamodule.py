"""Batches for Lightning: an endless, resumable training stream and a fixed validation set.

Byte-level tasks batch the data pipeline's :class:`blt.data.PackedBatches`; the BPE baseline packs its
token stream the same way (:class:`TokenBatches`). Training batches carry the loader state *after* them
(``data_state``), so the module can checkpoint the position of the batches it actually consumed (Lightning
fetches one batch ahead of the step).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from blt.data import DataConfig, PackedBatches, iter_documents


class TokenBatches(PackedBatches):
    """:class:`PackedBatches` (same windows, shuffle, shards and state) over a BPE token stream.

    ``tokens`` is the split's documents as BOS + token ids + EOS, concatenated (see :func:`token_stream`).
    """

    vocab_size = None  # token ids from the run's own tokenizer: nothing a user gave

    def __init__(
        self, config: DataConfig, tokens: np.ndarray, split: str = "train", rank: int = 0, world_size: int = 1
    ):
        super().__init__(config, split, rank, world_size)
        self.ids = tokens
        self.windows_per_rank = (len(tokens) - 1) // config.seq_len // world_size
        full, rest = divmod(self.windows_per_rank, config.batch_size)
        self.batches_per_epoch = full + (1 if rest and not self.drop_last else 0)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the {split} split of {config.source!r} has {len(tokens)} tokens: fewer than one batch of "
                f"{config.batch_size} windows of {config.seq_len + 1} tokens per rank; use more data, or a "
                "smaller data.seq_len / data.batch_size"
            )


def token_stream(config: DataConfig, split: str, encode) -> np.ndarray:
    """The documents of ``split`` encoded by ``encode(bytes, add_bos, add_eos)``, concatenated (int32)."""
    parts = [np.asarray(encode(doc, True, True), dtype=np.int32) for doc in iter_documents(config, split)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


class TrainStream:
    """Endless packed training batches ``{"ids": [B, T+1], "data_state": ...}`` of one rank's shard."""

    def __init__(self, packed: PackedBatches, state: dict[str, Any] | None = None):
        self.packed = packed
        if state is not None:
            self.packed.load_state_dict(state)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:  # one PackedBatches iteration is one epoch; the step budget ends the run
            for ids in self.packed:
                yield {"ids": ids, "data_state": self.packed.state_dict()}


class ValSet:
    """The validation batches of one rank's shard in corpus order, the same ones every time (Lightning's
    ``limit_val_batches`` takes the first of them)."""

    def __init__(self, packed: PackedBatches):
        self.packed = packed

    def __len__(self) -> int:
        return len(self.packed)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(len(self.packed)):
            yield {"ids": self.packed.batch_at(i)}
