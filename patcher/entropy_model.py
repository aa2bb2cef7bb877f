"""The entropy model: a small causal byte-level LM whose next-byte entropy decides patch boundaries.

It is a plain :class:`blt.lm.CausalLM` over the 260 byte ids with sliding-window attention. Entropies are
computed without leakage: rows of a batch never see each other (padding goes on the right, so a causal model
never reads it), packed documents are kept apart with ``segments`` and get their own positions, and inputs
longer than ``chunk_size`` run in chunks that continue a KV cache bounded by the window, which gives the
same result as one pass.
"""

from __future__ import annotations

from pathlib import Path

import torch

from blt import kernels
from blt.checkpoint import load_pretrained, save_pretrained
from blt.config import EntropyModelConfig, check
from blt.lm import CausalLM, in_eval_mode
from blt.patch_ops import entropy_from_logits  # noqa: F401  (its home used to be here)
from blt.tokenizer import VOCAB_SIZE, check_id_batch

KIND = "blt-entropy"


def fused_entropy(logits: torch.Tensor) -> torch.Tensor:
    """:func:`entropy_from_logits` (the plain reference) computed chunk by chunk, Triton on CUDA, so that no
    [B, T, 260] probability tensor is ever kept."""
    return kernels.entropy_from_logits(logits)


def segment_positions(segments: torch.Tensor) -> torch.Tensor:
    """Position of every id inside its segment: [B, T] segment ids -> [B, T] 0, 1, 2, ... per segment."""
    T = segments.shape[1]
    idx = torch.arange(T, device=segments.device).expand_as(segments)
    new = torch.ones_like(segments, dtype=torch.bool)
    new[:, 1:] = segments[:, 1:] != segments[:, :-1]
    start = torch.where(new, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start


def check_input_ids(ids: torch.Tensor, check: bool | None = None) -> None:
    """Clear errors for the inputs a user can get wrong: shape, dtype, empty, ids outside 0..259 (the range as
    ``check`` says, see :func:`blt.validation.checks_values`)."""
    check_id_batch(ids, VOCAB_SIZE, check)


class EntropyModel(CausalLM):
    def __init__(self, config: EntropyModelConfig, backend: str = "sdpa"):
        check(config.vocab_size == VOCAB_SIZE, f"entropy model vocab_size must be {VOCAB_SIZE}, got {config.vocab_size}")
        super().__init__(config, VOCAB_SIZE, backend)

    @torch.no_grad()
    @in_eval_mode
    def entropies(
        self, ids: torch.Tensor, segments: torch.Tensor | None = None, chunk_size: int | None = None
    ) -> torch.Tensor:
        """Next-byte entropy in nats at every position: ids [B, T] -> [B, T] float32.

        ``segments`` [B, T] (document ids of packed rows) keeps documents apart and restarts positions at
        each document. Without segments, inputs longer than ``chunk_size`` (default: the config's
        max_seq_len) run chunk by chunk with a KV cache; with a sliding window this is exact.
        """
        check_input_ids(ids)
        ids = ids.long()  # the embedding takes int32/int64 only; uint8 or int16 ids are fine otherwise
        if segments is not None:
            if not isinstance(segments, torch.Tensor) or segments.shape != ids.shape:
                shape = tuple(getattr(segments, "shape", ()))
                raise ValueError(f"segments must be a tensor of the ids' shape {tuple(ids.shape)}, got {shape}")
            positions = segment_positions(segments)
            # positions restart at every document and step by one inside it: windowed attention stays linear
            return fused_entropy(self(ids, positions=positions, segments=segments, consecutive=True))
        chunk_size = self.config.max_seq_len if chunk_size is None else chunk_size
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if ids.shape[1] <= chunk_size:
            return fused_entropy(self(ids))
        cache = self.new_cache(ids.shape[0], ids.shape[1])
        return torch.cat([fused_entropy(self(c, cache=cache)) for c in ids.split(chunk_size, dim=1)], 1)

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_pretrained(directory, self, KIND)

    @classmethod
    def from_pretrained(cls, path: str | Path, backend: str = "sdpa") -> EntropyModel:
        """An entropy model directory, or the patcher a BLT bundles (ours or transformers'); run directories
        stand for their ``model/``."""
        return load_pretrained(path, KIND, lambda config, _: cls(config, backend))
