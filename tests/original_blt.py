"""Tiny checkpoints in the original facebookresearch/blt release layout, written from the original module
definitions (names and shapes spelled out here, not derived from our model), and their conversion to the
transformers layout the way transformers' ``convert_blt_weights_to_hf.py`` does it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tiny_blt import SHAPE, tiny_shape
from transformers import BltConfig, BltForCausalLM

# what the released config.json carries besides the shape: the loader must ignore all of it
IGNORED_ARGS = {
    "seed": 42,
    "dim": 512,
    "n_layers": 8,
    "n_heads": 8,
    "weight_tying": False,
    "patch_size": 4.5,
    "patching_mode": "entropy",
    "patching_threshold": 9.0,  # never reaches the original patcher: data.patcher_args.threshold does
    "patching_threshold_add": None,
    "monotonicity": False,
    "patching_batch_size": 1,
    "patching_device": "cuda",
    "max_patch_length": None,
    "tie_local_encoder_decoder_logits": False,
    "encoder_lm_loss": False,
    "pad_to_max_length": False,
    "encoder_enable_byte_group_hash": False,
    "ngram_vocab_sizes": None,
    "cross_attn_use_flex_attention": True,
    "log_patch_lengths": False,
    "recompute_fc1_out": False,
    "recompute_fc3_out": False,
    "recompute_attn": True,
    "custom_bwd": False,
    "layer_ckpt": "all",
    "init_use_gaussian": True,
    "init_use_depth": "current",
    "attn_bias_type": "causal",
    "alpha_depth": "disabled",
    "max_length": 2048,
    "norm_affine": True,
    "pre_norm": True,
    "output_size": -1,
    "architecture": "vanilla",
    "share_encoder_decoder_emb": True,
    "global_local_decoder_residual_layer": None,
    "tokenize_with_bpe_delimiter": False,
    "patching_thresholds_str": None,
    "tie_local_encoder_decoder": False,
    "encoder_preds_low_entropy_toks": None,
    "encoder_preds_random_toks": None,
    "dim_token_emb": None,
    "dim_patch_emb": None,
    "encoder_ngram_table_dir": None,
    "encoder_ngram_to_size_str": None,
    "entropy_model_checkpoint_dir": None,
    "entropy_model_is_ngram_model": False,
    "conv_kernel_size": None,
    "sequence_parallel": False,
    "loss_parallel": False,
    "fuse_sequence_parallel": False,
    "use_fsdp": True,
    "attn_to_keep": "all",
    "full_logging_n_layers": 4,
    "head_dim": None,
    "init_base_std": None,
    "init_std_factor": "disabled",
    "eos_id": 2,
    "attn_impl": "xformers",
    "rope_use_fp32_in_outer_product": False,
    "dim_token": None,
    "pm_size": 0,
    "encoder_enable_byte_ngrams": False,
    "cross_attn_window_encoder": None,
    "cross_attn_window_decoder": None,
}


def original_args(
    kv_global=None, sizes=(3, 4, 5), functions=1, multiplier=1.0, theta=10000.0, **overrides
) -> dict:
    """The original args of a tiny BLT: ``overrides`` are tiny_blt.SHAPE keys or raw args fields."""
    s = tiny_shape(**{key: overrides.pop(key) for key in SHAPE if key in overrides})
    args = dict(
        IGNORED_ARGS,
        vocab_size=260,
        dim_local_encoder=s.enc,
        n_layers_local_encoder=s.enc_layers,
        n_heads_local_encoder=2,
        dim_global=s.glob,
        n_layers_global=1,
        n_heads_global=2,
        n_kv_heads=None,
        n_kv_heads_global=kv_global,
        dim_local_decoder=s.enc,
        n_layers_local_decoder=s.dec_layers,
        n_heads_local_decoder=2,
        cross_attn_encoder=True,
        cross_attn_decoder=True,
        cross_attn_init_by_pooling=True,
        cross_attn_k=s.k,
        cross_attn_nheads=2,
        cross_attn_all_layers_encoder=s.all_enc,
        cross_attn_all_layers_decoder=s.all_dec,
        encoder_hash_byte_group_size=list(sizes),
        encoder_hash_byte_group_vocab=97,
        encoder_hash_byte_group_nb_functions=functions,
        use_local_encoder_transformer=True,
        downsampling_by_pooling="max",
        non_linearity="swiglu",
        use_rope=True,
        norm_type="rmsnorm",
        multiple_of=16,
        ffn_dim_multiplier=multiplier,
        norm_eps=1e-5,
        rope_theta=theta,
        dropout=0.0,
        max_seqlen=128,
        max_encoder_seq_length=512,
        local_attention_window_len=s.window,
        patch_in_forward=True,
    )
    args.update(overrides)
    return args


def entropy_params(window=16, threshold=1.335442066192627, **entropy) -> dict:
    model = {"dim": 32, "n_layers": 1, "n_heads": 2, "max_seqlen": 1024, "vocab_size": 260, "multiple_of": 16,
             "ffn_dim_multiplier": None, "rope_theta": 10000.0, "norm_eps": 1e-5, "attn_bias_type": "local_block_causal",
             "attn_impl": "xformers", "weight_tying": False, "seed": 42}  # fmt: skip
    if window is not None:
        model["sliding_window"] = window
    model.update(entropy)
    patcher = {"patching_mode": "entropy", "threshold": threshold, "patch_size": 4.5, "max_patch_length": None,
               "realtime_patching": True, "patching_batch_size": 1, "monotonicity": False, "threshold_add": None}  # fmt: skip
    return {"entropy_model": model, "data": {"patcher_args": patcher}, "train_entropy_model": True}


def ffn(dim: int, multiple_of: int, multiplier: float | None) -> int:
    """The original FeedForward(hidden_dim=4 * dim) width, spelled out independently of blt.original."""
    hidden = int(2 * (4 * dim) / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return -(-hidden // multiple_of) * multiple_of


def _block(prefix: str, dim: int, heads: int, kv: int, hidden: int) -> dict[str, tuple]:
    hd = dim // heads
    return {
        f"{prefix}.attention.wq.weight": (heads * hd, dim),
        f"{prefix}.attention.wk.weight": (kv * hd, dim),
        f"{prefix}.attention.wv.weight": (kv * hd, dim),
        f"{prefix}.attention.wo.weight": (dim, heads * hd),
        f"{prefix}.feed_forward.w1.weight": (hidden, dim),
        f"{prefix}.feed_forward.w3.weight": (hidden, dim),
        f"{prefix}.feed_forward.w2.weight": (dim, hidden),
        f"{prefix}.attention_norm.weight": (dim,),
        f"{prefix}.ffn_norm.weight": (dim,),
    }


def _cross(prefix: str, dim: int) -> dict[str, tuple]:
    names = ("wq", "wk", "wv", "wo")
    shapes = {f"{prefix}.{n}.weight": (dim, dim) for n in names}  # cross_attn_nheads heads of dim / nheads
    return shapes | {
        f"{prefix}.cross_attn_norm_q.weight": (dim,),
        f"{prefix}.cross_attn_norm_kv.weight": (dim,),
    }


def _local_shapes(a: dict, side: str) -> dict[str, tuple]:
    """The layers and cross-attentions of the local ``side`` ("encoder" or "decoder"): both are E wide."""
    E, heads, n = a["dim_local_encoder"], a[f"n_heads_local_{side}"], a[f"n_layers_local_{side}"]
    width = ffn(E, a["multiple_of"], a["ffn_dim_multiplier"])
    shapes = {}
    for i in range(n):
        shapes |= _block(f"local_{side}.layers.{i}", E, heads, heads, width)
    for i in range(n if a[f"cross_attn_all_layers_{side}"] else 1):
        shapes |= _cross(f"local_{side}.cross_attn_layers.{i}", E)
    return shapes


def blt_shapes(a: dict) -> dict[str, tuple]:
    """Every tensor of the original ByteLatentTransformer for args ``a``."""
    E, G, k, V = a["dim_local_encoder"], a["dim_global"], a["cross_attn_k"], a["vocab_size"]
    mult, mo = a["ffn_dim_multiplier"], a["multiple_of"]
    shapes = {
        "local_encoder.tok_embeddings.weight": (V, E),
        "local_encoder.patch_embedding_projection.weight": (E * k, E),
    }
    shapes |= _local_shapes(a, "encoder")
    kv_g = a["n_kv_heads_global"] or a["n_heads_global"]
    for i in range(a["n_layers_global"]):
        shapes |= _block(f"global_transformer.layers.{i}", G, a["n_heads_global"], kv_g, ffn(G, mo, mult))
    if E * k != G:
        shapes["global_transformer.token_embedding_projection.weight"] = (G, E * k)
    shapes |= _local_shapes(a, "decoder")
    shapes |= {"local_decoder.patch_embedding_projection.weight": (E * k, G), "local_decoder.norm.weight": (E,),
               "local_decoder.output.weight": (V, E)}  # fmt: skip
    for i in range(a["encoder_hash_byte_group_nb_functions"] * len(a["encoder_hash_byte_group_size"])):
        shapes[f"encoder_hash_tok_embedding.{i}.weight"] = (a["encoder_hash_byte_group_vocab"], E)
    return shapes


def entropy_shapes(p: dict) -> dict[str, tuple]:
    """Every tensor of the original LMTransformer entropy model for params ``p``."""
    D, V = p["dim"], p["vocab_size"]
    shapes = {"tok_embeddings.weight": (V, D), "norm.weight": (D,), "output.weight": (V, D)}
    for i in range(p["n_layers"]):
        shapes |= _block(
            f"layers.{i}", D, p["n_heads"], p["n_heads"], ffn(D, p["multiple_of"], p["ffn_dim_multiplier"])
        )
    return shapes


def random_state(shapes: dict[str, tuple], seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if len(shape) == 1:  # norm weights near one, so that they matter
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) / shape[1] ** 0.5
        state[name] = t.to(dtype)
    return state


def write_original(
    directory: Path, args: dict, params: dict | None, seed=0, dtype=torch.float32, nest=True, train_args=None
) -> Path:
    """An original-layout BLT directory: config.json, model.safetensors, entropy_model/, train_args.json."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"args": args}))
    save_file(random_state(blt_shapes(args), seed, dtype), directory / "model.safetensors")
    if params is not None:
        write_entropy_folder(directory / "entropy_model", params, seed + 1, dtype, nest)
    if train_args is not None:
        (directory / "train_args.json").write_text(json.dumps(train_args))
    return directory


def write_entropy_folder(folder: Path, params: dict, seed=1, dtype=torch.float32, nest=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(params))
    state = random_state(entropy_shapes(params["entropy_model"]), seed, dtype)
    torch.save({"model": state} if nest else state, folder / "consolidated.pth")
    return folder


# ----------------------------------------------------------------------------------------------------------
# the transformers conversion (convert_blt_weights_to_hf.py: its renaming and hash-table fusion; the config
# with the FFN widths of the weights, where that script assumes the default ffn_dim_multiplier)

RENAMES = {
    ".attention.": ".self_attn.",
    ".feed_forward.": ".mlp.",
    ".attention_norm.": ".input_layernorm.",
    ".ffn_norm.": ".post_attention_layernorm.",
    ".tok_embeddings.": ".embed_tokens.",
    ".cross_attn_norm_q.": ".q_norm.",
    ".cross_attn_norm_kv.": ".k_norm.",
    ".w1.": ".gate_proj.",
    ".w2.": ".down_proj.",
    ".w3.": ".up_proj.",
    ".wq.": ".q_proj.",
    ".wk.": ".k_proj.",
    ".wv.": ".v_proj.",
    ".wo.": ".o_proj.",
    ".output.": ".lm_head.",
}


def _stack_config(dim, heads, kv, layers, hidden, eps, theta, max_len):
    return {"hidden_size": dim, "num_attention_heads": heads, "num_key_value_heads": kv, "num_hidden_layers": layers,
            "intermediate_size": hidden, "rms_norm_eps": eps, "max_position_embeddings": max_len,
            "rope_parameters": {"rope_type": "default", "rope_theta": theta}}  # fmt: skip


def transformers_blt(directory: Path, attn: str = "eager") -> BltForCausalLM:
    """transformers' BltForCausalLM holding the weights of the original-layout ``directory``."""
    from safetensors.torch import load_file

    a = json.loads((directory / "config.json").read_text())["args"]
    params = json.loads((directory / "entropy_model" / "params.json").read_text())
    e, patcher = params["entropy_model"], params["data"]["patcher_args"]
    blt = load_file(directory / "model.safetensors")
    entropy = torch.load(directory / "entropy_model" / "consolidated.pth", weights_only=True)
    entropy = entropy.get("model", entropy)
    E, G, k, eps, theta = (
        a["dim_local_encoder"],
        a["dim_global"],
        a["cross_attn_k"],
        a["norm_eps"],
        a["rope_theta"],
    )
    local_len = a["max_encoder_seq_length"] or a["max_seqlen"]
    width = lambda prefix: blt[f"{prefix}.layers.0.feed_forward.w1.weight"].shape[0]
    config = {
        "vocab_size": a["vocab_size"],
        "max_position_embeddings": a["max_seqlen"],
        "patch_in_forward": True,
        "patching_mode": "entropy",
        "patch_size": int(patcher["patch_size"]),
        "patching_threshold": patcher["threshold"],
        "max_patch_length": patcher["max_patch_length"],
        "cross_attn_k": k,
        "local_attention_window_len": a["local_attention_window_len"],
        "encoder_hash_byte_group_size": a["encoder_hash_byte_group_size"],
        "encoder_hash_byte_group_vocab": a["encoder_hash_byte_group_vocab"],
        "encoder_hash_byte_group_nb_functions": a["encoder_hash_byte_group_nb_functions"],
        "encoder_config": _stack_config(E, a["n_heads_local_encoder"], None, a["n_layers_local_encoder"],
                                        width("local_encoder"), eps, theta, local_len)
        | {"cross_attn_all_layers": a["cross_attn_all_layers_encoder"], "cross_attn_k": k, "hidden_size_global": G},
        "decoder_config": _stack_config(E, a["n_heads_local_decoder"], None, a["n_layers_local_decoder"],
                                        width("local_decoder"), eps, theta, local_len)
        | {"cross_attn_all_layers": a["cross_attn_all_layers_decoder"], "cross_attn_k": k, "hidden_size_global": G},
        "global_config": _stack_config(G, a["n_heads_global"], a["n_kv_heads_global"], a["n_layers_global"],
                                       width("global_transformer"), eps, theta, a["max_seqlen"]),
        "patcher_config": _stack_config(e["dim"], e["n_heads"], None, e["n_layers"],
                                        entropy["layers.0.feed_forward.w1.weight"].shape[0], e["norm_eps"],
                                        e["rope_theta"], e["max_seqlen"])
        | {"vocab_size": e["vocab_size"], "sliding_window": e.get("sliding_window") or 512},
        "tie_word_embeddings": False,
        "use_cache": False,
    }  # fmt: skip
    unified = dict(blt) | {f"patcher.{name}": t for name, t in entropy.items()}
    renamed = {}
    for name, tensor in unified.items():
        for old, new in RENAMES.items():
            name = name.replace(old, new)
        renamed[name] = tensor
    state = {"lm_head.weight": renamed.pop("local_decoder.lm_head.weight")}
    tables = sorted(
        (n for n in renamed if n.startswith("encoder_hash_tok_embedding.")),
        key=lambda n: int(n.split(".")[1]),
    )
    state["model.encoder_hash_tok_embedding.weight"] = torch.cat([renamed.pop(n) for n in tables])
    state |= {f"model.{name}": t for name, t in renamed.items()}
    hf_config = BltConfig(**config)
    hf_config._attn_implementation = attn
    model = BltForCausalLM(hf_config).eval()
    model.load_state_dict(state, strict=True)
    return model
