"""The original facebookresearch/blt release layout (``facebook/blt-1b``, ``facebook/blt-7b``), read as published.

A released BLT directory holds

- ``config.json``: ``{"args": {...}}``, the run's ``ByteLatentTransformerArgs`` (about a hundred fields: the
  few that shape the model are read, those naming something this model does not implement are checked, the
  rest are ignored);
- ``model.safetensors``: the weights under the original module names (``local_encoder.layers.0.attention.wq``,
  ``...feed_forward.w1``, ``cross_attn_norm_q``, one ``encoder_hash_tok_embedding.N`` per hash table, ...);
- ``entropy_model/params.json`` (``{"entropy_model": {...}, "data": {"patcher_args": {...}}}``) and
  ``entropy_model/consolidated.pth`` (a plain state dict, possibly under ``"model"``): the entropy model;
- ``train_args.json`` where present: the run's whole training config.

An entropy model alone is such an ``entropy_model/`` folder (``params.json`` + ``consolidated.pth``), or
``config.json`` ``{"args": {...}}`` holding ``LMTransformerArgs`` next to its ``model.safetensors``.

Facts of the original code that the conversion follows:

- patching uses ``data.patcher_args`` (threshold, patch size, max patch length) of ``train_args.json``, else of
  ``entropy_model/params.json``: that is what the original pipeline patches with (``args.patching_threshold``
  never reaches its patcher);
- feed-forward widths follow the original ``FeedForward``: ``int(2 * 4 * dim / 3)``, times
  ``ffn_dim_multiplier``, rounded up to ``multiple_of``; they are checked against the weights;
- the local window is ``args.local_attention_window_len``; the entropy model's is its ``sliding_window``,
  512 when the params leave it out or null (the original loader always uses 512);
- one ``rope_theta``, ``norm_eps`` and ``dropout`` serve all three BLT stacks; the entropy model has its own;
- the original masks restart attention at EOS ids inside a sequence (``local_block_causal``); like
  transformers' BLT, this model does not, so the two agree on inputs without an EOS inside.

Weights are taken as stored (bfloat16 in the releases) and copied into the model's parameters, whose dtype the
caller chooses (``model.to(torch.bfloat16)``). Pickle is read only with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from blt import config as cfg  # cfg.X: our config classes, beside the original release's "args"
from blt.checkpoint.files import CheckpointError, read_pickle

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TRAIN_ARGS = "train_args.json"
ENTROPY_DIR = "entropy_model"
PARAMS = "params.json"
PICKLE = "consolidated.pth"

# The kinds of blt.checkpoint.checkpoint_kind, which name the class that loads a directory: an original BLT is
# read by BLT.from_pretrained (and its entropy model by EntropyModel.from_pretrained) as a transformers one is.
BLT_KIND = "blt-original"
ENTROPY_KIND = "blt-entropy-original"

PATCHER_DEFAULTS = {"threshold": 1.335442066192627, "patch_size": 4.5}  # the original PatcherArgs
ENTROPY_WINDOW = 512  # what the original load_entropy_model always uses

# Args of the original model that this one implements one way only: field -> (the value it needs, the
# original default when the field is absent). Another value is an error naming the field.
IMPLEMENTED = {
    "use_rope": (True, True),
    "non_linearity": ("swiglu", "swiglu"),
    "norm_type": ("rmsnorm", "rmsnorm"),
    "cross_attn_encoder": (True, False),
    "cross_attn_decoder": (True, False),
    "cross_attn_init_by_pooling": (True, False),
    "use_local_encoder_transformer": (True, False),
    "downsampling_by_pooling": ("max", None),
    "encoder_enable_byte_ngrams": (False, False),
    "cross_attn_window_encoder": (None, None),
    "cross_attn_window_decoder": (None, None),
    "dim_token": (None, None),
    "pm_size": (0, 0),
}

# original module path segment -> ours (blocks keep transformers' projection names; see blt.layers)
SEGMENTS = {
    "local_encoder": "encoder",
    "local_decoder": "decoder",
    "tok_embeddings": "embed_tokens",
    "attention": "attn",
    "attention_norm": "attn_norm",
    "feed_forward": "mlp",
    "ffn_norm": "mlp_norm",
    "cross_attn_norm_q": "q_norm",
    "cross_attn_norm_kv": "k_norm",
    "wq": "q_proj",
    "wk": "k_proj",
    "wv": "v_proj",
    "wo": "o_proj",
    "w1": "gate_proj",
    "w3": "up_proj",
    "w2": "down_proj",
    "output": "lm_head",
}
_BLOCK = r"layers\.\d+\.(attention\.w[qkvo]|feed_forward\.w[123]|attention_norm|ffn_norm)"
_CROSS = r"cross_attn_layers\.\d+\.(w[qkvo]|cross_attn_norm_q|cross_attn_norm_kv)"
BLT_NAMES = re.compile(
    rf"((local_encoder|local_decoder|global_transformer)\.{_BLOCK}|(local_encoder|local_decoder)\.{_CROSS}"
    r"|local_encoder\.tok_embeddings|(local_encoder|local_decoder)\.patch_embedding_projection"
    r"|local_decoder\.(norm|output)|global_transformer\.token_embedding_projection)\.weight"
)
HASH_NAME = re.compile(r"encoder_hash_tok_embedding\.(\d+)\.weight")
ENTROPY_NAMES = re.compile(rf"({_BLOCK}|tok_embeddings|norm|output)\.weight")
HASH_OURS = "encoder.hash_embeddings.weight"
PATCHER_PREFIX = "patcher."


# ----------------------------------------------------------------------------------------------------------
# which layout a directory holds


def layout(directory: str | Path) -> str | None:
    """``"blt"`` or ``"entropy"`` for the original release layout, None for another; mixed layouts raise."""
    directory = Path(directory)
    config = _json_or_none(directory / CONFIG)
    foreign = config is not None and ("kind" in config or "model_type" in config)
    has_args = config is not None and isinstance(config.get("args"), dict)
    entropy_dir = (directory / ENTROPY_DIR / PARAMS).is_file()
    params = (directory / PARAMS).is_file()
    if foreign and (has_args or entropy_dir or params):
        ours_or_hf = f"of kind {config['kind']!r}" if "kind" in config else "a transformers BLT config"
        original = "an 'args' section" if has_args else f"{ENTROPY_DIR}/{PARAMS}" if entropy_dir else PARAMS
        raise CheckpointError(
            f"{directory} mixes checkpoint layouts: its {CONFIG} is {ours_or_hf}, yet there is the original "
            f"release's {original}; a directory must hold one layout"
        )
    if has_args and params:
        raise CheckpointError(
            f"{directory} mixes checkpoint layouts: a BLT {CONFIG} with 'args' and an entropy model's {PARAMS}; "
            f"the released layout keeps the entropy model in {ENTROPY_DIR}/"
        )
    if has_args:
        return "blt" if is_blt_args(config["args"]) else "entropy"
    if config is None and (entropy_dir or params):
        return "entropy"
    return None


def is_blt_args(args: dict) -> bool:
    """ByteLatentTransformerArgs (as opposed to an entropy model's LMTransformerArgs)."""
    return any(key in args for key in ("dim_global", "n_layers_global", "dim_local_encoder"))


def read_config(directory: str | Path) -> dict | None:
    """The parsed ``config.json`` (or entropy ``params.json``) of an original-layout directory, else None."""
    directory = Path(directory)
    if layout(directory) is None:
        return None
    for path in (directory / CONFIG, directory / PARAMS, directory / ENTROPY_DIR / PARAMS):
        if path.is_file():
            return read_json(path) if path.name == CONFIG else entropy_params(path.parent)
    return None  # unreachable: layout() saw one of them


def kind(config: dict[str, Any]) -> str | None:
    """The checkpoint kind of an original-layout config dict (see BLT_KIND), None for any other."""
    if not isinstance(config, dict) or "kind" in config or "model_type" in config:
        return None
    if isinstance(config.get("args"), dict):
        return BLT_KIND if is_blt_args(config["args"]) else ENTROPY_KIND
    if isinstance(config.get("entropy_model"), dict):
        return ENTROPY_KIND
    return None


# ----------------------------------------------------------------------------------------------------------
# reading: directory -> (our config, state dict under our names)


def read_blt_config(directory: str | Path, data: dict | None = None) -> cfg.BLTConfig:
    """Our config of an original BLT directory (``data``: its config.json, read again when not given)."""
    return _blt_config(Path(directory))[0]


def _blt_config(directory: Path) -> tuple[cfg.BLTConfig, dict]:
    args = read_json(directory / CONFIG)["args"]
    params = entropy_params(directory / ENTROPY_DIR) if (directory / ENTROPY_DIR).is_dir() else None
    entropy = entropy_config(params["entropy_model"], directory / ENTROPY_DIR / PARAMS) if params else None
    patching = patching_config(*patcher_args(directory, params))
    return blt_config(args, patching, entropy, directory / CONFIG), args


def read_blt_tensors(directory: str | Path) -> tuple[dict[str, torch.Tensor], None]:
    """The weights of an original BLT directory under our names, its entropy model bundled as ``patcher.*``."""
    directory = Path(directory)
    config, args = _blt_config(directory)
    original = read_safetensors(directory / WEIGHTS)
    check_ffn_widths(original, args, config, directory / WEIGHTS)
    state = blt_state(original, config, directory / WEIGHTS)
    if config.entropy_model is not None:
        pickle = directory / ENTROPY_DIR / PICKLE
        for name, tensor in entropy_state(read_pickle(pickle), config.entropy_model, pickle).items():
            state[PATCHER_PREFIX + name] = tensor
    return state, None


def _entropy_files(directory: Path) -> tuple[dict, Path, Path]:
    """(the entropy model's original args, the file they came from, its weights file)."""
    config = _json_or_none(directory / CONFIG)
    if config is not None and isinstance(config.get("args"), dict) and not is_blt_args(config["args"]):
        return config["args"], directory / CONFIG, directory / WEIGHTS
    folder = directory / ENTROPY_DIR if (directory / ENTROPY_DIR).is_dir() else directory
    if not (folder / PARAMS).is_file():
        raise CheckpointError(
            f"{directory} has no {ENTROPY_DIR}/{PARAMS}: the BLT comes without its entropy model"
        )
    return entropy_params(folder)["entropy_model"], folder / PARAMS, folder / PICKLE


def read_entropy_config(directory: str | Path, data: dict | None = None) -> cfg.EntropyModelConfig:
    """Our config of an original entropy model: a BLT directory's ``entropy_model/``, such a folder alone, or
    ``config.json`` with LMTransformerArgs (+ ``model.safetensors``)."""
    args, where, _ = _entropy_files(Path(directory))
    return entropy_config(args, where)


def read_entropy_tensors(directory: str | Path) -> tuple[dict[str, torch.Tensor], None]:
    args, where, weights = _entropy_files(Path(directory))
    entropy = entropy_config(args, where)
    original = read_safetensors(weights) if weights.suffix == ".safetensors" else read_pickle(weights)
    return entropy_state(original, entropy, weights), None


def entropy_params(folder: Path) -> dict:
    """The entropy model's ``params.json``, which must describe the entropy model."""
    params = read_json(folder / PARAMS)
    if not isinstance(params.get("entropy_model"), dict):
        raise CheckpointError(
            f"{folder / PARAMS} has no 'entropy_model' section (the entropy model's dim, n_layers, n_heads, ...)"
        )
    return params


def patcher_args(directory: Path, params: dict | None) -> tuple[dict, Path | None]:
    """``data.patcher_args`` and the file it came from: train_args.json first, else entropy params.json."""
    sources = [
        (directory / TRAIN_ARGS, _json_or_none(directory / TRAIN_ARGS)),
        (directory / ENTROPY_DIR / PARAMS, params),
    ]
    for path, data in sources:
        found = ((data or {}).get("data") or {}).get("patcher_args")
        if found is not None:
            if not isinstance(found, dict):
                raise CheckpointError(f"{path}: data.patcher_args must be a JSON object, got {found!r}")
            return found, path
    return {}, None


# ----------------------------------------------------------------------------------------------------------
# configs: original args -> ours


def ffn_dim(dim: int, multiple_of: int = 256, multiplier: float | None = None) -> int:
    """The original FeedForward width: int(2 * 4 * dim / 3), times ``multiplier``, up to a ``multiple_of``."""
    hidden = int(2 * 4 * dim / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class Fields:
    """Typed reads of one JSON section; every error names the file and the field."""

    def __init__(self, data: dict, where: Path, prefix: str):
        self.data, self.where, self.prefix = data, where, prefix

    def error(self, key: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.where}: {self.prefix}{key} {problem}")

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key, default)
        return default if value is None else value

    def int(self, key: str, default: int | None = None, optional: bool = False) -> int | None:
        value = self.data.get(key, default)
        if value is None:
            if optional:
                return None
            raise self.error(key, "is required")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise self.error(key, f"must be an integer, got {value!r}")
        return int(value)

    def float(self, key: str, default: float) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"must be a number, got {value!r}")
        return float(value)

    def ffn(self, dim_key: str) -> int:
        multiplier = self.get("ffn_dim_multiplier")
        return ffn_dim(
            self.int(dim_key), self.int("multiple_of", 256), None if multiplier is None else float(multiplier)
        )

    def head_dim(self, dim_key: str, heads_key: str) -> None:
        """The original's one ``head_dim`` for every stack must be dim / heads of this one (ours derives it)."""
        head_dim, dim, heads = self.int("head_dim", optional=True), self.int(dim_key), self.int(heads_key)
        if head_dim is not None and head_dim * heads != dim:
            raise self.error("head_dim", f"is {head_dim}, but {dim_key} / {heads_key} is {dim} / {heads}")


def check_implemented(args: Fields) -> None:
    """Refuse args naming a feature this model does not implement, by the field."""
    for key, (needed, default) in IMPLEMENTED.items():
        value = args.data.get(key, default)
        if value != needed:
            raise args.error(key, f"is {value!r}; this model implements only {needed!r}")
    if args.data.get("patching_mode") == "":
        raise args.error(
            "patching_mode", "is '' (static patches after BOE padding), which this model does not implement"
        )
    if args.data.get("patch_in_forward") and args.data.get("patching_mode") not in (None, "entropy"):
        mode = args.data["patching_mode"]
        raise args.error(
            "patching_mode",
            f"is {mode!r} with patch_in_forward; this model patches in forward by entropy only",
        )


def check_heads(args: Fields) -> None:
    """Ours (and transformers') patch cross-attention uses its stack's heads; the original has its own count."""
    for stack in ("local_encoder", "local_decoder"):
        heads = args.int(f"n_heads_{stack}", 8)
        cross = args.int("cross_attn_nheads", optional=True)
        if cross is not None and cross != heads:
            raise args.error(
                "cross_attn_nheads",
                f"is {cross}, but this model's cross-attention uses n_heads_{stack} ({heads})",
            )
        kv = args.int("n_kv_heads", optional=True)
        if kv is not None and kv != heads:
            raise args.error(
                "n_kv_heads",
                f"is {kv}: the original cross-attention keeps all {heads} key/value heads of "
                f"n_heads_{stack} while its self-attention groups them, which this model cannot express",
            )
        args.head_dim(f"dim_{stack}", f"n_heads_{stack}")
    args.head_dim("dim_global", "n_heads_global")


def _stack(args: Fields, name: str, window: int | None, max_seq_len: int) -> dict[str, Any]:
    """TransformerConfig fields of the original stack ``name`` (local_encoder, global or local_decoder)."""
    return {
        "dim": args.int(f"dim_{name}", 512),
        "n_layers": args.int(f"n_layers_{name}", 8),
        "n_heads": args.int(f"n_heads_{name}", 8),
        "n_kv_heads": args.int("n_kv_heads_global" if name == "global" else "n_kv_heads", optional=True),
        "ffn_dim": args.ffn(f"dim_{name}"),
        "window": window,
        "max_seq_len": max_seq_len,
        "norm_eps": args.float("norm_eps", 1e-5),
        "rope_theta": args.float("rope_theta", 10000.0),
        "dropout": args.float("dropout", 0.0),
    }


def blt_config(
    args: dict, patching: cfg.PatchingConfig, entropy: cfg.EntropyModelConfig | None, where: Path
) -> cfg.BLTConfig:
    """Our BLTConfig from the original ``args`` (``where`` names the file in errors)."""
    fields = Fields(args, where, "args.")
    check_implemented(fields)
    check_heads(fields)
    if fields.int("dim_local_decoder", 512) != fields.int("dim_local_encoder", 512):
        raise fields.error(
            "dim_local_decoder",
            "must equal dim_local_encoder: the decoder starts from the encoder's byte states",
        )
    window = fields.int("local_attention_window_len", optional=True)
    local_len = fields.int("max_encoder_seq_length", optional=True) or fields.int("max_seqlen", 1024)
    sizes = args.get("encoder_hash_byte_group_size")
    if isinstance(sizes, str):  # the original accepts "3,4,5" too
        sizes = [int(s) for s in sizes.split(",") if s]
    try:
        return cfg.BLTConfig(
            vocab_size=fields.int("vocab_size"),
            cross_attn_k=fields.int("cross_attn_k"),
            encoder=cfg.LocalEncoderConfig(
                **_stack(fields, "local_encoder", window, local_len),
                cross_attn_all_layers=bool(args.get("cross_attn_all_layers_encoder", False)),
                hash_ngram_sizes=list(sizes or []),
                hash_vocab=fields.int("encoder_hash_byte_group_vocab", 30000),
                hash_functions=fields.int("encoder_hash_byte_group_nb_functions", 3),
            ),
            global_transformer=cfg.TransformerConfig(
                **_stack(fields, "global", None, fields.int("max_seqlen", 1024))
            ),
            decoder=cfg.LocalDecoderConfig(
                **_stack(fields, "local_decoder", window, local_len),
                cross_attn_all_layers=bool(args.get("cross_attn_all_layers_decoder", False)),
            ),
            patching=patching,
            entropy_model=entropy,
        )
    except (cfg.ConfigError, TypeError) as e:
        raise CheckpointError(f"{where}: args cannot be converted: {e}") from None


def entropy_config(params: dict, where: Path) -> cfg.EntropyModelConfig:
    """Our EntropyModelConfig from the original entropy model params (LMTransformerArgs)."""
    fields = Fields(params, where, "entropy_model." if where.name == PARAMS else "args.")
    if fields.get("weight_tying", False):
        raise fields.error("weight_tying", "is true; this model's entropy model has its own output head")
    fields.head_dim("dim", "n_heads")
    vocab = fields.int("vocab_size")
    if vocab != 260:
        raise fields.error("vocab_size", f"is {vocab}; the entropy model predicts the 260 byte ids")
    window = fields.int("sliding_window", optional=True) or ENTROPY_WINDOW
    try:
        return cfg.EntropyModelConfig(
            dim=fields.int("dim"),
            n_layers=fields.int("n_layers"),
            n_heads=fields.int("n_heads"),
            n_kv_heads=fields.int("n_kv_heads", optional=True),
            ffn_dim=fields.ffn("dim"),
            window=window,
            max_seq_len=fields.int("max_seqlen", 1024),
            norm_eps=fields.float("norm_eps", 1e-5),
            rope_theta=fields.float("rope_theta", 10000.0),
            vocab_size=vocab,
        )
    except cfg.ConfigError as e:
        raise CheckpointError(f"{where}: entropy model params cannot be converted: {e}") from None


def patching_config(args: dict, where: Path | None) -> cfg.PatchingConfig:
    """Our PatchingConfig from ``data.patcher_args`` (the original PatcherArgs defaults where absent)."""
    fields = Fields(args, where or Path("(original PatcherArgs defaults)"), "data.patcher_args.")
    mode = fields.get("patching_mode", "entropy")
    if mode != "entropy":
        raise fields.error("patching_mode", f"is {mode!r}; this model patches by entropy only")
    if fields.get("monotonicity", False) or fields.get("threshold_add") is not None:
        raise fields.error(
            "monotonicity", "(or threshold_add) is set: only the global entropy threshold is implemented"
        )
    try:
        return cfg.PatchingConfig(
            scheme="entropy",
            threshold=fields.float("threshold", PATCHER_DEFAULTS["threshold"]),
            # a float in the original (4.5: the mean it aims for); transformers' converter keeps its integer part
            patch_size=int(fields.float("patch_size", PATCHER_DEFAULTS["patch_size"])),
            max_patch_length=fields.int("max_patch_length", optional=True),
        )
    except cfg.ConfigError as e:
        raise CheckpointError(f"{fields.where}: data.patcher_args cannot be converted: {e}") from None


# ----------------------------------------------------------------------------------------------------------
# tensors: original names -> ours


def ours(name: str) -> str:
    """Our name of an original tensor: ``local_encoder.layers.0.attention.wq.weight`` ->
    ``encoder.transformer.layers.0.attn.q_proj.weight``."""
    parts = []
    for part in name.split("."):
        if part == "layers":
            parts.append("transformer")
        parts.append(SEGMENTS.get(part, part))
    return ".".join(parts)


def theirs(name: str) -> str:
    """The original name of one of our tensors (the inverse of :func:`ours`)."""
    if name == HASH_OURS:
        return "encoder_hash_tok_embedding.N.weight"
    inverse = {v: k for k, v in SEGMENTS.items()}
    return ".".join(inverse.get(part, part) for part in name.split(".") if part != "transformer")


def blt_state(state: dict[str, torch.Tensor], config: cfg.BLTConfig, where: Path) -> dict[str, torch.Tensor]:
    """The BLT tensors under our names, the per-table hash embeddings concatenated (ours is one table)."""
    tables, out = {}, {}
    for name, tensor in state.items():
        if name.endswith("freqs_cis"):
            continue  # rotary tables: derived from rope_theta, not learned
        if match := HASH_NAME.fullmatch(name):
            tables[int(match[1])] = tensor
        elif BLT_NAMES.fullmatch(name):
            out[ours(name)] = tensor
        else:
            raise _unexpected(name, where, "BLT")
    enc = config.encoder
    n_tables = enc.hash_functions * len(enc.hash_ngram_sizes)
    if sorted(tables) != list(range(n_tables)):
        raise CheckpointError(
            f"{where} has {len(tables)} hash tables encoder_hash_tok_embedding.*, but args give {n_tables} "
            f"(encoder_hash_byte_group_nb_functions {enc.hash_functions} x {len(enc.hash_ngram_sizes)} "
            "encoder_hash_byte_group_size)"
        )
    for i, table in tables.items():
        if tuple(table.shape) != (enc.hash_vocab, enc.dim):
            raise CheckpointError(
                f"{where}: encoder_hash_tok_embedding.{i}.weight has shape {tuple(table.shape)}, args give "
                f"({enc.hash_vocab}, {enc.dim}) (encoder_hash_byte_group_vocab, dim_local_encoder)"
            )
    if n_tables:
        out[HASH_OURS] = torch.cat([tables[i] for i in range(n_tables)])  # table i holds rows i*V..(i+1)*V
    return out


def entropy_state(
    state: dict[str, torch.Tensor], config: cfg.EntropyModelConfig, where: Path
) -> dict[str, torch.Tensor]:
    """The entropy model tensors under our names (blt.lm.CausalLM)."""
    out = {}
    for name, tensor in state.items():
        if name.endswith("freqs_cis"):
            continue
        if not ENTROPY_NAMES.fullmatch(name):
            raise _unexpected(name, where, "entropy model")
        out[ours(name)] = tensor
    rows = out.get("transformer.layers.0.mlp.gate_proj.weight")
    if rows is not None and rows.shape[0] != config.hidden_dim:
        raise CheckpointError(
            f"{where}: layers.0.feed_forward.w1.weight has {rows.shape[0]} rows, but the params give "
            f"{config.hidden_dim} (int(2 * 4 * dim / 3) x ffn_dim_multiplier, rounded up to multiple_of)"
        )
    return out


def _unexpected(name: str, where: Path, what: str) -> CheckpointError:
    if name.startswith(("model.", "encoder.", "decoder.", "transformer.", "embed_tokens.", "lm_head.")):
        return CheckpointError(
            f"{where} mixes checkpoint layouts: tensor '{name}' is named as in transformers' or this package's "
            "layout, but the config is the original release's"
        )
    return CheckpointError(f"{where}: unexpected tensor '{name}' that the original {what} has no place for")


def check_ffn_widths(state: dict[str, torch.Tensor], args: dict, config: cfg.BLTConfig, where: Path) -> None:
    """Each stack's feed-forward weight against the original rule, naming the args that set it."""
    stacks = [
        ("local_encoder", config.encoder),
        ("global_transformer", config.global_transformer),
        ("local_decoder", config.decoder),
    ]
    for prefix, stack in stacks:
        key = f"{prefix}.layers.0.feed_forward.w1.weight"
        if key in state and state[key].shape[0] != stack.hidden_dim:
            raise CheckpointError(
                f"{where}: {key} has {state[key].shape[0]} rows, but args give {stack.hidden_dim} for width "
                f"{stack.dim} (int(2 * 4 * dim / 3) x ffn_dim_multiplier {args.get('ffn_dim_multiplier')}, "
                f"rounded up to multiple_of {args.get('multiple_of', 256)})"
            )


# ----------------------------------------------------------------------------------------------------------
# files


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, with clear errors for a missing or malformed file."""
    if not path.is_file():
        raise CheckpointError(f"missing {path.name} in {path.parent}")
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _json_or_none(path: Path) -> dict | None:
    """A JSON object at ``path``, or None when absent or not one (its own reader reports that)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"missing {path.name} in {path.parent} (the original layout's weights)")
    try:
        with safe_open(path, framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None


def label(name: str) -> str:
    """The original files' name of our tensor ``name`` (a bundled patcher's tensors live in consolidated.pth)."""
    return theirs(name.removeprefix(PATCHER_PREFIX))
