"""The paper-scale configs against the shapes the released checkpoints carry.

Each config is built on the meta device (no memory) and compared tensor by tensor, name and shape, with
transformers' BltForCausalLM built on the meta device from a transformers config written here from the
released values (facebook/blt-1b as transformers' BltConfig defaults and its itazap/blt-1b-hf conversion;
facebook/blt-7b as its config.json and entropy_model/params.json describe it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BltConfig, BltForCausalLM

from blt.checkpoint.hf import blt_name
from blt.checkpoint.original import ffn_dim
from blt.config import BLTConfig, EntropyModelConfig, from_dict
from blt.model import BLT

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

ENTROPY = {
    "dim": 768,
    "layers": 14,
    "heads": 12,
    "ffn": 2048,
    "window": 512,
    "theta": 10000.0,
    "max_len": 8192,
}
RELEASED = {
    "blt-1b": {
        "encoder": {"dim": 1024, "layers": 1, "heads": 16, "ffn": 2816},
        "global": {"dim": 2048, "layers": 25, "heads": 16, "ffn": 5632},
        "decoder": {"dim": 1024, "layers": 9, "heads": 16, "ffn": 2816},
        "k": 2,
        "params": (4.5e9, 4.7e9),  # about 4.6B, 3.1B of them the hash tables
    },
    "blt-7b": {
        "encoder": {"dim": 1280, "layers": 1, "heads": 20, "ffn": 3584},
        "global": {"dim": 4096, "layers": 32, "heads": 32, "ffn": 11008},
        "decoder": {"dim": 1280, "layers": 6, "heads": 20, "ffn": 3584},
        "k": 4,  # 4 x 1280 = 5120-wide patch rows, projected to 4096
        "params": (10.4e9, 10.8e9),
    },
}
COMMON = {"theta": 500000.0, "window": 512, "sizes": [3, 4, 5, 6, 7, 8], "hash_vocab": 500002, "functions": 1,
          "threshold": 1.335442066192627, "local_len": 24576, "global_len": 4096}  # fmt: skip


def yaml_config(name: str) -> BLTConfig:
    """The BLT of ``configs/<name>.yaml`` with its entropy section as the bundled patcher (what `blt` trains)."""
    sections = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    entropy = from_dict(EntropyModelConfig, sections["entropy"], prefix="entropy.")
    return dataclasses.replace(from_dict(BLTConfig, sections["blt"], prefix="blt."), entropy_model=entropy)


def _hf_stack(s: dict, max_len: int) -> dict:
    return {"hidden_size": s["dim"], "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"],
            "intermediate_size": s["ffn"], "max_position_embeddings": max_len,
            "rope_parameters": {"rope_type": "default", "rope_theta": s.get("theta", COMMON["theta"])}}  # fmt: skip


def released_hf_config(name: str) -> BltConfig:
    r = RELEASED[name]
    glob = r["global"]["dim"]
    side = {"cross_attn_k": r["k"], "hidden_size_global": glob}
    return BltConfig(
        vocab_size=260,
        cross_attn_k=r["k"],
        patching_threshold=COMMON["threshold"],
        local_attention_window_len=COMMON["window"],
        encoder_hash_byte_group_size=COMMON["sizes"],
        encoder_hash_byte_group_vocab=COMMON["hash_vocab"],
        encoder_hash_byte_group_nb_functions=COMMON["functions"],
        encoder_config=_hf_stack(r["encoder"], COMMON["local_len"]) | side | {"cross_attn_all_layers": False},
        decoder_config=_hf_stack(r["decoder"], COMMON["local_len"]) | side | {"cross_attn_all_layers": True},
        global_config=_hf_stack(r["global"], COMMON["global_len"]),
        patcher_config=_hf_stack(ENTROPY, ENTROPY["max_len"]) | {"sliding_window": ENTROPY["window"]},
        use_cache=False,
    )


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_config_has_the_released_shapes(name):
    r, config = RELEASED[name], yaml_config(name)
    for ours, key in (
        (config.encoder, "encoder"),
        (config.global_transformer, "global"),
        (config.decoder, "decoder"),
    ):
        s = r[key]
        assert (ours.dim, ours.n_layers, ours.n_heads, ours.hidden_dim) == (
            s["dim"],
            s["layers"],
            s["heads"],
            s["ffn"],
        )
        assert s["ffn"] == ffn_dim(s["dim"])  # the original FeedForward rule, multiple_of 256, multiplier 1
        assert ours.rope_theta == COMMON["theta"] and ours.kv_heads == s["heads"]
    assert config.cross_attn_k == r["k"]
    assert (
        config.encoder.window == config.decoder.window == COMMON["window"]
        and config.global_transformer.window is None
    )
    enc = config.encoder
    assert (enc.hash_ngram_sizes, enc.hash_vocab, enc.hash_functions) == (
        COMMON["sizes"],
        COMMON["hash_vocab"],
        1,
    )
    assert not enc.cross_attn_all_layers and config.decoder.cross_attn_all_layers
    assert config.patching.scheme == "entropy" and config.patching.threshold == COMMON["threshold"]
    e = config.entropy_model
    assert (e.dim, e.n_layers, e.n_heads, e.hidden_dim, e.window, e.rope_theta, e.max_seq_len) == tuple(
        ENTROPY.values()
    )
    assert ENTROPY["ffn"] == ffn_dim(ENTROPY["dim"])


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_every_tensor_matches_transformers_on_the_meta_device(name):
    with torch.device("meta"):
        ours = BLT(yaml_config(name))
        theirs = BltForCausalLM(released_hf_config(name))

    own = {blt_name(key): tuple(t.shape) for key, t in ours.state_dict().items()}
    reference = {key: tuple(t.shape) for key, t in theirs.state_dict().items()}
    assert sorted(own) == sorted(reference)
    assert {k: v for k, v in own.items() if reference[k] != v} == {}
    if name == "blt-7b":
        assert own["model.global_transformer.token_embedding_projection.weight"] == (4096, 5120)
    total = sum(t.numel() for t in ours.parameters())
    hash_rows = ours.encoder.hash_embeddings.weight.numel()
    patcher = sum(t.numel() for t in ours.patcher.parameters())
    print(f"\n{name}: {total / 1e9:.3f}B parameters ({hash_rows / 1e9:.3f}B in hash tables, "
          f"{patcher / 1e6:.1f}M in the entropy model)")  # fmt: skip
    low, high = RELEASED[name]["params"]
    assert low < total < high and total == sum(t.numel() for t in theirs.parameters())
