"""Batches for Lightning: an endless, resumable training stream and a fixed validation set.

Training batches carry the loader state *after* them (``data_state``), so the module can checkpoint the
position of the batches it actually consumed (Lightning fetches one batch ahead of the step).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from blt.data import DataConfig, PackedBatches


class TrainStream:
    """Endless packed training batches ``{"ids": [B, T+1], "data_state": ...}`` of one rank's shard."""

    def __init__(self, config: DataConfig, rank: int = 0, world_size: int = 1, state: dict[str, Any] | None = None):
        self.packed = PackedBatches(config, "train", rank, world_size)
        if state is not None:
            self.packed.load_state_dict(state)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:  # one PackedBatches iteration is one epoch; the step budget ends the run
            for ids in self.packed:
                yield {"ids": ids, "data_state": self.packed.state_dict()}


class ValSet:
    """The first ``limit`` validation batches of one rank's shard, the same ones every time."""

    def __init__(self, config: DataConfig, limit: int, rank: int = 0, world_size: int = 1):
        self.packed = PackedBatches(config, "val", rank, world_size)
        self.limit = min(limit, len(self.packed))

    def __len__(self) -> int:
        return self.limit

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(self.limit):
            yield {"ids": self.packed.batch_at(i)}
