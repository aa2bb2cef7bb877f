"""The transformers BLT layout: config both ways, tensor names, and the patcher bundled inside it.

A transformers BLT directory (``BltForCausalLM.save_pretrained``, the released ``facebook/blt-*`` layout)
holds ``config.json`` (``"model_type": "blt"`` with encoder/decoder/global/patcher sub-configs) and
``model.safetensors``; its entropy model sits under ``model.patcher.`` with its config in
``patcher_config``. Missing config keys take transformers' defaults. Things our config can express but
that layout cannot (a decoder window different from the encoder's, a windowed global transformer, a
non-entropy patching scheme inside forward) are refused on export with a clear error.

Our blocks keep transformers' projection names (q_proj, gate_proj, ...) and differ only in a few path
segments, so a tensor's name there is ours rewritten by a list of regex rules. Loading goes the same way:
every tensor of our model is looked up under its transformers name, so errors name the file's tensors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from blt.checkpoint.files import CheckpointError, read_weights, write_checkpoint
from blt.config import (
    BLTConfig,
    ConfigError,
    EntropyModelConfig,
    LocalDecoderConfig,
    LocalEncoderConfig,
    PatchingConfig,
    TransformerConfig,
)
from blt.tokenizer import VOCAB_SIZE

# ----------------------------------------------------------------------------------------------------------
# tensor names: ours -> transformers, rules applied in order

# one transformer block: ours "layers.3.attn_norm.weight" -> "layers.3.input_layernorm.weight"
BLOCK_RULES = [
    (r"layers\.(\d+)\.attn_norm\.", r"layers.\g<1>.input_layernorm."),
    (r"layers\.(\d+)\.mlp_norm\.", r"layers.\g<1>.post_attention_layernorm."),
    (r"layers\.(\d+)\.attn\.", r"layers.\g<1>.self_attn."),
]
# our entropy model (a CausalLM) -> BltPatcher, whose stack sits directly under it
PATCHER_RULES = [(r"^transformer\.layers\.", "layers.")] + BLOCK_RULES
BLT_RULES = [
    (r"^encoder\.transformer\.layers\.", "model.local_encoder.layers."),
    (r"^encoder\.embed_tokens\.", "model.local_encoder.embed_tokens."),
    (r"^encoder\.hash_embeddings\.", "model.encoder_hash_tok_embedding."),
    (r"^encoder\.", "model.local_encoder."),
    (r"^global_transformer\.transformer\.layers\.", "model.global_transformer.layers."),
    (r"^global_transformer\.", "model.global_transformer."),
    (r"^decoder\.transformer\.layers\.", "model.local_decoder.layers."),
    (r"^decoder\.lm_head\.", "lm_head."),
    (r"^decoder\.", "model.local_decoder."),
] + BLOCK_RULES
PATCHER_PREFIX = "model.patcher."  # BltForCausalLM's patcher; a bare BltModel's sits under "patcher."
PATCHER_PREFIXES = (PATCHER_PREFIX, "patcher.")
OUR_PATCHER = "patcher."  # the bundled entropy model inside our BLT


def rename(key: str, rules: list[tuple[str, str]]) -> str:
    for ours, theirs in rules:
        key = re.sub(ours, theirs, key)
    return key


def patcher_name(key: str) -> str:
    """The BltPatcher name of our entropy model's tensor ``key`` (without the patcher's prefix)."""
    return rename(key, PATCHER_RULES)


def blt_name(key: str) -> str:
    """The BltForCausalLM name of our BLT's tensor ``key``, bundled patcher included."""
    if key.startswith(OUR_PATCHER):
        return PATCHER_PREFIX + patcher_name(key[len(OUR_PATCHER) :])
    return rename(key, BLT_RULES)


# ----------------------------------------------------------------------------------------------------------
# config: transformers -> ours

# transformers' defaults for keys a config.json may leave out (configuration_blt.py)
_ENCODER = {
    "hidden_size": 1024,
    "num_attention_heads": 16,
    "num_hidden_layers": 1,
    "max_position_embeddings": 24576,
    "cross_attn_all_layers": False,
}
_DECODER = {
    "hidden_size": 1024,
    "num_attention_heads": 16,
    "num_hidden_layers": 9,
    "max_position_embeddings": 24576,
    "cross_attn_all_layers": True,
    "intermediate_size": 2816,
}
_GLOBAL = {
    "hidden_size": 2048,
    "num_attention_heads": 16,
    "num_hidden_layers": 25,
    "max_position_embeddings": 4096,
    "intermediate_size": 5632,
}
_THETA = 500000.0


def _stack(hf: dict[str, Any], defaults: dict[str, Any], window: int | None) -> dict[str, Any]:
    get = lambda k: hf.get(k, defaults.get(k))
    dim = get("hidden_size")
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"rope_type {rope['rope_type']!r} is not supported (only 'default')")
    return {
        "dim": dim,
        "n_layers": get("num_hidden_layers"),
        "n_heads": get("num_attention_heads"),
        "n_kv_heads": hf.get("num_key_value_heads"),
        "ffn_dim": get("intermediate_size") or int(8 * dim / 3),
        "window": window,
        "max_seq_len": get("max_position_embeddings"),
        "norm_eps": hf.get("rms_norm_eps", 1e-5),
        "rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", _THETA))),
        "dropout": float(hf.get("dropout") or 0.0),
    }


def config_from_hf(hf: dict[str, Any]) -> BLTConfig:
    """Our BLTConfig from a transformers BLT ``config.json`` dict."""
    k = hf.get("cross_attn_k", 2)
    enc_hf, dec_hf, glob_hf = (hf.get(n) or {} for n in ("encoder_config", "decoder_config", "global_config"))
    for name, sub in (("encoder_config", enc_hf), ("decoder_config", dec_hf), ("global_config", glob_hf)):
        if not isinstance(sub, dict):
            raise CheckpointError(f"transformers BLT config: {name} must be a JSON object, got {sub!r}")
    for name, sub in (("encoder_config", enc_hf), ("decoder_config", dec_hf)):
        if sub.get("cross_attn_k", k) != k:
            raise CheckpointError(
                f"{name}.cross_attn_k ({sub['cross_attn_k']}) differs from cross_attn_k ({k})"
            )
    glob_dim = glob_hf.get("hidden_size", _GLOBAL["hidden_size"])
    if dec_hf.get("hidden_size_global", 2048) != glob_dim:
        raise CheckpointError(
            f"decoder_config.hidden_size_global ({dec_hf.get('hidden_size_global', 2048)}) must equal "
            f"global_config.hidden_size ({glob_dim})"
        )
    window = hf.get("local_attention_window_len", 512)
    mode = hf.get("patching_mode", "entropy")
    if mode != "entropy":
        raise CheckpointError(f"patching_mode {mode!r} is not supported (only 'entropy')")
    patch_in_forward = hf.get("patch_in_forward", True)
    try:
        encoder = LocalEncoderConfig(
            **_stack(enc_hf, _ENCODER, window),
            cross_attn_all_layers=enc_hf.get("cross_attn_all_layers", False),
            hash_ngram_sizes=list(hf.get("encoder_hash_byte_group_size") or [3, 4, 5, 6, 7, 8]),
            hash_vocab=hf.get("encoder_hash_byte_group_vocab", 500002),
            hash_functions=hf.get("encoder_hash_byte_group_nb_functions", 1),
        )
        decoder = LocalDecoderConfig(
            **_stack(dec_hf, _DECODER, window),
            cross_attn_all_layers=dec_hf.get("cross_attn_all_layers", True),
        )
        global_transformer = TransformerConfig(**_stack(glob_hf, _GLOBAL, None))
        patching = PatchingConfig(
            scheme="entropy",
            threshold=float(hf.get("patching_threshold", 1.335442066192627)),
            patch_size=hf.get("patch_size") or 4,
            max_patch_length=hf.get("max_patch_length"),
        )
        entropy_model = None
        if patch_in_forward:
            entropy_model = EntropyModelConfig(**patcher_config_from_hf(hf.get("patcher_config") or {}))
        return BLTConfig(
            vocab_size=hf.get("vocab_size", 260),
            cross_attn_k=k,
            encoder=encoder,
            global_transformer=global_transformer,
            decoder=decoder,
            patching=patching,
            entropy_model=entropy_model,
        )
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"transformers BLT config cannot be converted: {e}") from None


def patcher_config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
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


# ----------------------------------------------------------------------------------------------------------
# ours -> transformers


def _hf_stack(c: TransformerConfig) -> dict[str, Any]:
    return {
        "hidden_size": c.dim,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.kv_heads,
        "num_hidden_layers": c.n_layers,
        "intermediate_size": c.hidden_dim,
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "dropout": c.dropout,
        "hidden_act": "silu",
    }


def _hf_local(c: LocalEncoderConfig | LocalDecoderConfig, config: BLTConfig) -> dict[str, Any]:
    return dict(
        _hf_stack(c),
        vocab_size=config.vocab_size,
        cross_attn_all_layers=c.cross_attn_all_layers,
        cross_attn_k=config.cross_attn_k,
        hidden_size_global=config.global_transformer.dim,
    )


def config_to_hf(config: BLTConfig) -> dict[str, Any]:
    """A transformers BLT config.json dict for ``config``; raises ValueError for what the layout lacks."""
    enc, dec, glob = config.encoder, config.decoder, config.global_transformer
    if enc.window != dec.window:
        raise ValueError(
            f"transformers' BLT uses one local window for encoder and decoder; got {enc.window} and {dec.window}"
        )
    if glob.window is not None:
        raise ValueError(
            "transformers' BLT global transformer has no sliding window; set global_transformer.window None"
        )
    if config.entropy_model is not None and config.patching.scheme != "entropy":
        raise ValueError(
            f"transformers' BLT patches in forward by entropy only, not {config.patching.scheme!r}"
        )
    k = config.cross_attn_k
    out: dict[str, Any] = {
        "model_type": "blt",
        "architectures": ["BltForCausalLM"],
        "vocab_size": config.vocab_size,
        "max_position_embeddings": glob.max_seq_len,
        "patch_in_forward": config.entropy_model is not None,
        "patch_size": config.patching.patch_size,
        "patching_mode": "entropy",
        "patching_threshold": config.patching.threshold,
        "patching_batch_size": 1,
        "max_patch_length": config.patching.max_patch_length,
        "local_attention_window_len": enc.window,
        "cross_attn_k": k,
        "encoder_hash_byte_group_size": list(enc.hash_ngram_sizes),
        "encoder_hash_byte_group_vocab": enc.hash_vocab,
        "encoder_hash_byte_group_nb_functions": enc.hash_functions,
        "encoder_config": dict(_hf_local(enc, config), sliding_window=enc.window),
        "decoder_config": _hf_local(dec, config),
        "global_config": _hf_stack(glob),
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": glob.rope_theta},
        "dtype": "float32",
        "use_cache": False,  # transformers' BLT cache path fails (5.x); without it forward and generate work
    }
    if config.entropy_model is not None:
        e = config.entropy_model
        out["patcher_config"] = dict(_hf_stack(e), vocab_size=e.vocab_size, sliding_window=e.window)
    return out


# ----------------------------------------------------------------------------------------------------------
# reading and writing transformers BLT directories


def read_blt_config(directory: Path, data: dict[str, Any]) -> BLTConfig:
    try:
        return config_from_hf(data)
    except CheckpointError as e:
        raise CheckpointError(f"{directory}: {e}") from None


def read_blt_tensors(directory: Path) -> tuple[dict[str, torch.Tensor], Any]:
    """Every tensor of the directory, and where each of our BLT's tensors sits among them."""
    return read_weights(directory), blt_name


def read_patcher_config(directory: Path, data: dict[str, Any]) -> EntropyModelConfig:
    hf = data.get("patcher_config")
    if not isinstance(hf, dict):
        raise CheckpointError(
            f"{directory}: transformers BLT config has no patcher_config (no bundled patcher)"
        )
    try:
        return EntropyModelConfig(**patcher_config_from_hf(hf))
    except ConfigError as e:
        raise CheckpointError(f"{directory}: bad patcher_config: {e}") from None


def read_patcher_tensors(directory: Path) -> tuple[dict[str, torch.Tensor], Any]:
    """Only the patcher's tensors (a sharded 7B checkpoint never loads the rest), and where ours sit."""
    state = read_weights(directory, keep=lambda name: name.startswith(PATCHER_PREFIXES))
    prefix = next((p for p in PATCHER_PREFIXES if any(k.startswith(p) for k in state)), None)
    if prefix is None:
        raise CheckpointError(
            f"{directory}: no patcher tensors ({' or '.join(PATCHER_PREFIXES)}*) in the checkpoint"
        )
    state = {k: v for k, v in state.items() if k.startswith(prefix)}
    return state, lambda key: prefix + patcher_name(key)


def save_blt(model, directory: str | Path) -> Path:
    """Write ``model`` (a BLT) as a transformers BLT directory: config.json + model.safetensors."""
    config = config_to_hf(model.config)  # first: refuse what the layout cannot hold before writing anything
    state = {blt_name(k): v for k, v in model.state_dict().items()}
    return write_checkpoint(directory, state, config, metadata={"format": "pt"})
