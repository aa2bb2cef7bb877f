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
from blt.checkpoint import (
    CheckpointError,
    checkpoint_kind,
    load_state,
    read_config,
    read_weights,
    save_pretrained,
    typed_config,
)
from blt.config import ConfigError, EntropyModelConfig, check, to_dict
from blt.hf_keys import ENTROPY_MODEL_RULES, from_hf
from blt.lm import CausalLM, in_eval_mode
from blt.patch_ops import entropy_from_logits  # noqa: F401  (its home used to be here)
from blt.tokenizer import VOCAB_SIZE, check_id_batch

KIND = "blt-entropy"
HF_PATCHER_PREFIXES = ("model.patcher.", "patcher.")


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


def check_input_ids(ids: torch.Tensor) -> None:
    """Clear errors for the inputs a user can get wrong: shape, dtype, empty, ids outside 0..259."""
    check_id_batch(ids, VOCAB_SIZE)


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
            return fused_entropy(self(ids, positions=positions, segments=segments))
        chunk_size = self.config.max_seq_len if chunk_size is None else chunk_size
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if ids.shape[1] <= chunk_size:
            return fused_entropy(self(ids))
        cache = self.new_cache(ids.shape[0], ids.shape[1])
        return torch.cat([fused_entropy(self(c, cache=cache)) for c in ids.split(chunk_size, dim=1)], 1)

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_pretrained(directory, self, KIND, to_dict(self.config))

    @classmethod
    def from_pretrained(cls, directory: str | Path, backend: str = "sdpa") -> EntropyModel:
        """Load one of our entropy-model directories, or the patcher bundled in a transformers BLT."""
        data = read_config(directory)
        kind = checkpoint_kind(data)
        if kind == "hf-blt":
            return cls.from_hf_blt(directory, data, backend)
        config = typed_config(directory, data, KIND, EntropyModelConfig, "an entropy model")
        try:
            model = cls(config, backend)
        except ConfigError as e:  # e.g. a vocab_size other than 260
            raise CheckpointError(f"{directory}: bad entropy model config: {e}") from None
        load_state(model, read_weights(directory), str(directory))
        return model.eval()

    @classmethod
    def from_hf_blt(cls, directory: str | Path, data: dict, backend: str = "sdpa") -> EntropyModel:
        """The entropy model (``patcher``) inside a transformers BLT checkpoint directory."""
        hf = data.get("patcher_config")
        if not isinstance(hf, dict):
            raise CheckpointError(f"{directory}: transformers BLT config has no patcher_config (no bundled patcher)")
        try:
            model = cls(EntropyModelConfig(**hf_patcher_config(hf)), backend)
        except ConfigError as e:
            raise CheckpointError(f"{directory}: bad patcher_config: {e}") from None
        state = read_hf_patcher_weights(Path(directory))
        load_state(model, from_hf(state, ENTROPY_MODEL_RULES), f"{directory} (patcher)")
        return model.eval()


def hf_patcher_config(hf: dict) -> dict:
    """Our EntropyModelConfig fields from a transformers ``BltPatcherConfig`` dict (its defaults filled in)."""
    rope = hf.get("rope_parameters") or {}
    dim = hf.get("hidden_size", 768)
    return {
        "dim": dim,
        "n_layers": hf.get("num_hidden_layers", 14),
        "n_heads": hf.get("num_attention_heads", 12),
        "n_kv_heads": hf.get("num_key_value_heads"),
        # as BltPatcherConfig: an absent key means its class default 2048; only 0 (or None) means 8/3 of the width
        "ffn_dim": hf.get("intermediate_size", 2048) or int(8 * dim / 3),
        "window": hf.get("sliding_window", 512),
        "max_seq_len": hf.get("max_position_embeddings", 8192),
        "norm_eps": hf.get("rms_norm_eps", 1e-5),
        "rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        "vocab_size": hf.get("vocab_size", VOCAB_SIZE),
    }


def read_hf_patcher_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Only the patcher tensors of a (possibly sharded) transformers BLT checkpoint, prefix stripped."""
    state = read_weights(directory, keep=lambda name: name.startswith(HF_PATCHER_PREFIXES))
    return strip_patcher_prefix(state, directory)


def strip_patcher_prefix(state: dict[str, torch.Tensor], directory: Path) -> dict[str, torch.Tensor]:
    prefix = next((p for p in HF_PATCHER_PREFIXES if any(k.startswith(p) for k in state)), None)
    if prefix is None:
        raise CheckpointError(f"{directory}: no patcher tensors ({' or '.join(HF_PATCHER_PREFIXES)}*) in the checkpoint")
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
