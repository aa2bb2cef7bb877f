"""The transformers BLT layout: config conversion both ways and tensor renaming.

A transformers BLT directory (``BltForCausalLM.save_pretrained``, the released ``facebook/blt-*`` layout)
holds ``config.json`` (``"model_type": "blt"`` with encoder/decoder/global/patcher sub-configs) and
``model.safetensors``. Missing config keys take transformers' defaults. Things our config can express but
that layout cannot (a decoder window different from the encoder's, a windowed global transformer, a
non-entropy patching scheme inside forward) are refused on export with a clear error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from blt.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    atomic_write,
    drop_stale_index,
    read_weights,
)
from blt.config import (
    BLTConfig,
    ConfigError,
    EntropyModelConfig,
    LocalDecoderConfig,
    LocalEncoderConfig,
    PatchingConfig,
    TransformerConfig,
)
from blt.hf_keys import BLOCK_RULES, ENTROPY_MODEL_RULES, to_hf

# ours -> transformers, applied in order (BLOCK_RULES then rename the inside of each block)
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
PATCHER_PREFIX = "model.patcher."

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


def hf_names(model: torch.nn.Module) -> dict[str, str]:
    """Our state-dict key -> the transformers key, for every tensor of ``model`` (a BLT)."""
    names = {}
    for key in model.state_dict():
        if key.startswith("patcher."):
            names[key] = next(
                iter(to_hf({key[len("patcher.") :]: None}, ENTROPY_MODEL_RULES, PATCHER_PREFIX))
            )
        else:
            names[key] = next(iter(to_hf({key: None}, BLT_RULES)))
    return names


# ----------------------------------------------------------------------------------------------------------
# config: transformers -> ours


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
    from blt.patcher.entropy_model import hf_patcher_config

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
            entropy_model = EntropyModelConfig(**hf_patcher_config(hf.get("patcher_config") or {}))
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


def load_hf(directory: str | Path, data: dict[str, Any], backend: str = "sdpa"):
    """A BLT with the weights of a transformers BLT directory (``data`` is its parsed config.json)."""
    from blt.model import BLT

    config = config_from_hf(data)
    model = BLT(config, backend)
    state = read_weights(directory)
    names = hf_names(model)
    own = model.state_dict()
    for ours, theirs in names.items():
        if theirs not in state:
            raise CheckpointError(
                f"{directory}: missing tensor '{theirs}' (expected shape {tuple(own[ours].shape)})"
            )
        if tuple(state[theirs].shape) != tuple(own[ours].shape):
            raise CheckpointError(
                f"{directory}: tensor '{theirs}' has shape {tuple(state[theirs].shape)}, "
                f"the config needs {tuple(own[ours].shape)}"
            )
    known = set(names.values())
    extra = [k for k in state if k not in known]
    if extra:
        raise CheckpointError(f"{directory}: unexpected tensor '{extra[0]}' that the config has no place for")
    model.load_state_dict({ours: state[theirs] for ours, theirs in names.items()}, strict=True)
    return model


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
        "encoder_config": dict(
            _hf_stack(enc),
            vocab_size=config.vocab_size,
            cross_attn_all_layers=enc.cross_attn_all_layers,
            cross_attn_k=k,
            hidden_size_global=glob.dim,
            sliding_window=enc.window,
        ),
        "decoder_config": dict(
            _hf_stack(dec),
            vocab_size=config.vocab_size,
            cross_attn_all_layers=dec.cross_attn_all_layers,
            cross_attn_k=k,
            hidden_size_global=glob.dim,
        ),
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


def save_hf(model, directory: str | Path) -> Path:
    """Write ``model`` (a BLT) as a transformers BLT directory: config.json + model.safetensors."""
    hf_config = config_to_hf(model.config)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = hf_names(model)
    state = {names[k]: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    drop_stale_index(directory)
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    text = json.dumps(hf_config, indent=2)
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory
