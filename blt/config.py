"""Typed configuration: small dataclasses, YAML files and ``--section.key value`` overrides.

Every config is a dataclass whose fields carry their documentation in ``field(metadata={"doc": ...})``
(use :func:`doc`). Configs nest: a field whose type is another config dataclass is a section. The same
machinery serves every component, so validation errors look alike everywhere:

- :func:`from_dict` builds a config from plain data and rejects unknown keys by their dotted name;
- :func:`load_yaml` reads a YAML file into a dict (a missing file is a clear error);
- :func:`apply_overrides` applies ``["--encoder.dim", "64", ...]`` style command-line overrides;
- :func:`to_dict` / :func:`describe` go the other way (``--print_config`` and ``--help``).

Model configs of the byte latent transformer live here too; data, optimisation and trainer configs live
next to the code that uses them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key the user got wrong."""


def doc(text: str, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its documentation attached (shown by ``--help``)."""
    kwargs: dict[str, Any] = {"metadata": {"doc": text}}
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    return field(**kwargs)


# ----------------------------------------------------------------------------------------------------------
# generic machinery


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to type ``tp``, or raise naming ``name``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{name}: cannot be None")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{name}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ConfigError(f"{name}: {value!r} is not a valid list (write [3, 4] or 3,4)") from None
        elif isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        items = [_coerce(v, item_tp, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value.replace("_", ""))
            except ValueError:
                number = math.nan
            if number.is_integer():
                return int(number)
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    if _is_config(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a section (mapping), got {value!r}")
        return from_dict(tp, value, prefix=f"{name}.")
    raise ConfigError(f"{name}: unsupported config type {tp!r}")


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build config ``cls`` from a (nested) dict; unknown keys and bad values raise :class:`ConfigError`."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: expected a mapping of keys, got {data!r}")
    data = dict(data or {})
    types_ = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (valid keys here: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, types_[k], f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without a value
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None
    except ConfigError as e:  # a check of __post_init__: say which section it is about
        if not prefix or str(e).startswith(prefix):
            raise
        raise ConfigError(f"{prefix.rstrip('.')}: {e}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config (YAML/JSON friendly; tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(config)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict; a missing or malformed file is a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping at the top level")
    return data


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--a.b", "1", "--c=x"]`` -> ``{"a": {"b": "1"}, "c": "x"}`` (values stay strings until coerced)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"expected an option like --section.key, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"option --{key} needs a value")
            value = args[i + 1]
            i += 1
        i += 1
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"option --{key} sets a key inside a value")
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``update`` wins, sections merge key by key."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_overrides(config: T, args: list[str]) -> T:
    """A copy of ``config`` with ``--section.key value`` overrides applied and validated."""
    return from_dict(type(config), merge(to_dict(config), parse_overrides(args)))


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(--dotted.name, type, doc)`` for every leaf field of ``cls``: the body of ``--help``."""
    rows = []
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = types_[f.name]
        if _is_config(tp):
            rows += describe(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        type_name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        rows.append((f"--{prefix}{f.name}", type_name, f"{f.metadata.get('doc', '')} (default: {default!r})"))
    return rows


def check(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds (user-facing validation)."""
    if not condition:
        raise ConfigError(message)


# ----------------------------------------------------------------------------------------------------------
# model configs


@dataclass
class TransformerConfig:
    """Shape of one Llama-style stack (RMSNorm, RoPE, SwiGLU, no biases), shared by every BLT component."""

    dim: int = doc("model width (hidden size)", 256)
    n_layers: int = doc("number of transformer layers", 2)
    n_heads: int = doc("attention heads; dim must be divisible by it", 4)
    n_kv_heads: int | None = doc("key/value heads for grouped-query attention (None: same as n_heads)", None)
    ffn_dim: int | None = doc("SwiGLU hidden size (None: int(8 * dim / 3))", None)
    window: int | None = doc("sliding attention window in positions (None: full causal attention)", None)
    max_seq_len: int = doc("longest sequence (bytes, or patches for the global model) it accepts", 4096)
    norm_eps: float = doc("RMSNorm epsilon", 1e-5)
    rope_theta: float = doc("RoPE base frequency", 500000.0)
    dropout: float = doc("dropout on attention outputs and residual branches during training", 0.0)

    def __post_init__(self) -> None:
        check(self.dim > 0 and self.n_layers >= 0 and self.n_heads > 0, "dim, n_heads must be > 0, n_layers >= 0")
        check(self.dim % self.n_heads == 0, f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        check((self.dim // self.n_heads) % 2 == 0, f"head dim {self.dim // self.n_heads} must be even for RoPE")
        check(
            self.n_kv_heads is None or self.n_kv_heads > 0,
            f"n_kv_heads must be > 0 or None, got {self.n_kv_heads}",
        )
        check(self.ffn_dim is None or self.ffn_dim > 0, f"ffn_dim must be > 0 or None, got {self.ffn_dim}")
        kv = self.kv_heads
        check(kv > 0 and self.n_heads % kv == 0, f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({kv})")
        check(self.window is None or self.window > 0, f"window must be positive or None, got {self.window}")
        check(self.max_seq_len > 0, f"max_seq_len must be positive, got {self.max_seq_len}")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        check(self.norm_eps > 0 and self.rope_theta > 0, "norm_eps and rope_theta must be positive")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hidden_dim(self) -> int:
        return self.ffn_dim or int(8 * self.dim / 3)


@dataclass
class EntropyModelConfig(TransformerConfig):
    """The small byte-level causal transformer whose next-byte entropy decides patch boundaries."""

    vocab_size: int = doc("byte vocabulary size (260: 256 bytes + 4 special ids)", 260)
    window: int | None = doc("sliding attention window in bytes (512 in the BLT paper)", 512)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.vocab_size > 0, f"vocab_size must be positive, got {self.vocab_size}")


@dataclass
class LocalEncoderConfig(TransformerConfig):
    """Byte-level encoder: hash n-gram embeddings, windowed self-attention, patch cross-attention."""

    dim: int = doc("model width (hidden size)", 128)
    n_layers: int = doc("number of transformer layers", 1)
    window: int | None = doc("sliding attention window in bytes (512 in the released models)", 512)
    cross_attn_all_layers: bool = doc("patch cross-attention after every layer (False: after the last only)", False)
    hash_ngram_sizes: list[int] = doc("n-gram sizes hashed into extra byte embeddings", default_factory=lambda: [3, 4, 5, 6, 7, 8])
    hash_vocab: int = doc("rows per hash embedding table (500002 in the released models)", 500002)
    hash_functions: int = doc("hash functions per n-gram size", 1)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(all(n >= 1 for n in self.hash_ngram_sizes), f"hash_ngram_sizes must be >= 1, got {self.hash_ngram_sizes}")
        check(self.hash_vocab > 0 and self.hash_functions >= 0, "hash_vocab must be > 0 and hash_functions >= 0")


@dataclass
class LocalDecoderConfig(TransformerConfig):
    """Byte-level decoder: cross-attends to the latent patch states, then byte-level layers and the head."""

    dim: int = doc("model width (hidden size); the released models use the encoder's width", 128)
    n_layers: int = doc("number of transformer layers", 2)
    window: int | None = doc("sliding attention window in bytes", 512)
    cross_attn_all_layers: bool = doc("cross-attend before every layer (False: before the first only)", True)


PatchScheme = typing.Literal["entropy", "relative", "combined", "static", "space", "byte"]


@dataclass
class PatchingConfig:
    """How bytes are grouped into patches."""

    scheme: PatchScheme = doc(
        "entropy (global threshold), relative (monotonic), combined, static (fixed size), space, byte", "entropy"
    )
    threshold: float = doc("global entropy threshold in nats (entropy and combined schemes)", 1.335442066192627)
    relative_threshold: float = doc("threshold on H(t-1) - H(t-2) (relative and combined schemes)", 0.0)
    patch_size: int = doc("bytes per patch for the static scheme; expected mean for FLOP estimates", 4)
    max_patch_length: int | None = doc("split patches longer than this (None: no limit)", None)

    def __post_init__(self) -> None:
        check(not math.isnan(self.threshold), "patching.threshold must be a number, got NaN")
        check(not math.isnan(self.relative_threshold), "patching.relative_threshold must be a number, got NaN")
        check(self.patch_size > 0, f"patching.patch_size must be > 0, got {self.patch_size}")
        check(
            self.max_patch_length is None or self.max_patch_length > 0,
            f"patching.max_patch_length must be > 0 or None, got {self.max_patch_length}",
        )


@dataclass
class BLTConfig:
    """The whole byte latent transformer: local encoder, global (latent) transformer, local decoder."""

    vocab_size: int = doc("byte vocabulary size (260)", 260)
    cross_attn_k: int = doc("query heads per patch in the patch cross-attentions", 2)
    encoder: LocalEncoderConfig = doc("local encoder", default_factory=LocalEncoderConfig)
    global_transformer: TransformerConfig = doc(
        "global latent transformer over patches",
        default_factory=lambda: TransformerConfig(dim=256, n_layers=4, n_heads=4, max_seq_len=2048),
    )
    decoder: LocalDecoderConfig = doc("local decoder", default_factory=LocalDecoderConfig)
    patching: PatchingConfig = doc("patching scheme", default_factory=PatchingConfig)
    entropy_model: EntropyModelConfig | None = doc(
        "entropy model bundled with the BLT for patching inside forward (None: patch lengths come from outside)",
        None,
    )

    def __post_init__(self) -> None:
        check(self.cross_attn_k > 0, f"cross_attn_k must be > 0, got {self.cross_attn_k}")
        check(self.vocab_size > 0, f"vocab_size must be positive, got {self.vocab_size}")


@dataclass
class BaselineConfig(TransformerConfig):
    """Tokenized baseline: a Llama-style transformer over a SentencePiece BPE vocabulary."""

    vocab_size: int = doc("SentencePiece BPE vocabulary size (byte fallback included)", 4096)
