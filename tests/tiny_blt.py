"""Tiny BLT models shared by the model, transformers-parity and generation tests."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from blt.config import (
    BLTConfig,
    EntropyModelConfig,
    LocalDecoderConfig,
    LocalEncoderConfig,
    PatchingConfig,
    TransformerConfig,
    from_dict,
)
from blt.model import BLT

# the tiny shape the transformers (test_hf) and original-release (original_blt) checkpoints default to:
# encoder/decoder width, global width, cross_attn_k, layers, all-layer cross-attentions, local window
SHAPE = dict(enc=32, glob=64, k=2, enc_layers=1, dec_layers=2, all_enc=False, all_dec=True, window=8)


def tiny_shape(**given) -> SimpleNamespace:
    """SHAPE with the ``given`` values; a key SHAPE lacks is a mistake."""
    assert set(given) <= set(SHAPE), sorted(set(given) - set(SHAPE))
    return SimpleNamespace(**(SHAPE | given))


def blt_config(**sections) -> BLTConfig:
    """A BLTConfig from plain dicts of its sections, as a config file gives them: a test names only the
    sizes it is about, and needs no import of each section's class."""
    return from_dict(BLTConfig, sections)


def tiny_config(
    threshold: float = 5.0, entropy: bool = True, max_seq_len: int = 512, **patching
) -> BLTConfig:
    return BLTConfig(
        cross_attn_k=2,
        encoder=LocalEncoderConfig(
            dim=32, n_heads=2, window=8, hash_vocab=61, hash_ngram_sizes=[2, 3, 4], max_seq_len=max_seq_len
        ),
        decoder=LocalDecoderConfig(
            dim=32, n_heads=2, n_layers=2, window=8, ffn_dim=48, max_seq_len=max_seq_len
        ),
        global_transformer=TransformerConfig(
            dim=48, n_layers=1, n_heads=2, ffn_dim=64, max_seq_len=max_seq_len
        ),
        patching=PatchingConfig(threshold=threshold, **patching),
        entropy_model=EntropyModelConfig(dim=32, n_layers=1, n_heads=2, ffn_dim=48, window=16)
        if entropy
        else None,
    )


def tiny_blt(seed: int = 0, **kwargs) -> BLT:
    """A random tiny BLT whose entropy threshold sits at the median entropy, so patches vary in length."""
    torch.manual_seed(seed)
    model = BLT(tiny_config(**kwargs)).eval()
    if model.patcher is not None and "threshold" not in kwargs:
        ids = random_ids(2, 64, seed)
        model.config.patching.threshold = median_gap(model.patcher.entropies(ids))
    return model


def median_gap(entropies: torch.Tensor) -> float:
    """A threshold halfway between the two middle entropies: no sample entropy sits on it."""
    values = entropies.flatten().sort().values
    mid = values.numel() // 2
    return float(values[mid - 1] + values[mid]) / 2


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Random byte ids with BOS first."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 260, (batch, length), generator=g)
    ids[:, 0] = 1
    return ids
