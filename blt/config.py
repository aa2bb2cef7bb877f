"""Typed configuration: small dataclasses with their documentation, built from plain data.

Every config is a dataclass whose fields carry their documentation in ``field(metadata={"doc": ...})``
(use :func:`doc`; the command lines of :mod:`blt.cli` show it in ``--help``). Configs nest: a field whose
type is another config dataclass is a section. :func:`from_dict` builds a config from plain data (a
checkpoint's JSON, a YAML section) with jsonargparse, the command lines' parser, so an unknown key or a
value of the wrong type is named the same way everywhere; :func:`to_dict` goes the other way.

Model configs of the byte latent transformer live here too; data, optimisation and trainer configs live
next to the code that uses them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
# plain data <-> configs


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build config ``cls`` from plain (nested) data, e.g. a checkpoint's JSON or a YAML section.

    jsonargparse (the command lines' parser) checks keys and types, so an unknown key or a value of the
    wrong type is a :class:`ConfigError` naming its dotted key; the dataclasses' own checks then run
    section by section and their errors name the section (``prefix`` names the whole, e.g. ``"blt."``).
    """
    from jsonargparse import ArgumentParser

    where = prefix.rstrip(".") or cls.__name__
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    parser = ArgumentParser(exit_on_error=False, default_env=False)
    nested = prefix.rstrip(".") or None
    parser.add_class_arguments(cls, nested)
    try:
        parsed = parser.parse_object({nested: data or {}} if nested else data or {}, defaults=True)
    except Exception as e:  # noqa: BLE001 - jsonargparse's ArgumentError and friends: the message names the key
        raise ConfigError(_unwrap(str(e), nested)) from None
    values = parsed[nested] if nested else parsed
    return _build(cls, values.as_dict(), prefix)


def _unwrap(message: str, nested: str | None) -> str:
    line = one_line(message)
    if nested and line.startswith("unknown config key '") and not line.startswith(f"unknown config key '{nested}."):
        line = line.replace("unknown config key '", f"unknown config key '{nested}.", 1)
    return line


def one_line(message: str) -> str:
    """A jsonargparse error as one line: ``key: expected int. Got value: x``, ``unknown config key 'k'``."""
    group = re.search(r"Group '([^']+)' does not accept (?:option|nested key) '([^']+)'", message)
    if group:
        return f"unknown config key '{group[1]}.{group[2]}'"
    unknown = re.search(r"does not accept (?:option|nested key) '([^']+)'|Option '([^']+)' is not accepted", message)
    if unknown:
        return f"unknown config key '{unknown[1] or unknown[2]}'"
    keyed = re.match(r'Parser key "([^"]+)":\s*(.*)', message, re.DOTALL)
    if not keyed:
        return " ".join(message.split())
    key, rest = keyed.groups()
    expected = [_type_name(t) for t in re.findall(r"Expected an? (.+?)(?=\. Got value:|$)", rest, re.M)]
    got = re.search(r"(?:Got|Given) value: (.*)", rest)
    if expected and got:
        return f"{key}: expected {' or '.join(dict.fromkeys(expected))}. Got value: {got[1].strip()}"
    return f"{key}: {' '.join(rest.split())}"


def _type_name(text: str) -> str:
    """``<class 'int'>`` -> int, ``typing.Literal['a', 'b']`` -> one of ['a', 'b'], NoneType -> null."""
    text = text.strip().rstrip(".")
    text = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", text).replace("typing.", "")
    if text == "NoneType":
        return "null"
    return re.sub(r"^Literal\[(.*)\]$", r"one of [\1]", text)


def _build(cls: type[T], values: dict[str, Any], prefix: str) -> T:
    """Instantiate ``cls`` (nested sections first) from already type-checked values."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name not in values:
            continue
        value, inner = values[f.name], _section_type(hints[f.name])
        if inner is not None and isinstance(value, dict):
            value = _build(inner, value, f"{prefix}{f.name}.")
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without a value
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None
    except ConfigError as e:  # a check of __post_init__: say which section it is about
        if not prefix or str(e).startswith(prefix):
            raise
        raise ConfigError(f"{prefix.rstrip('.')}: {e}") from None


def _section_type(tp: Any) -> type | None:
    """The config dataclass behind a field type (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config (YAML/JSON friendly; tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(config)


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
