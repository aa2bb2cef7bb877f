"""Forward (inference) and training FLOPs per byte, following the BLT paper's accounting.

Conventions (the BLT paper, Appendix B, which follows Chinchilla's transformer equations):

- A matrix product of an ``m x k`` by a ``k x n`` matrix costs ``2 m k n`` FLOPs (one multiply and one add
  per multiply-accumulate). Everything below is a sum of such products; norms, rotary embeddings,
  activations, softmax and residual additions are negligible and count 0.
- Input embeddings (byte, token and hash n-gram tables) are lookups and count 0.
- Training costs 3x the forward pass (the backward pass computes gradients with respect to both the
  activations and the weights, each as expensive as the forward product).

Per position (token, byte or patch) of one Llama-style layer of width ``d`` with ``H`` query heads and
``H_kv`` key/value heads of size ``d_h`` (so ``d_kv = H_kv d_h``) and a SwiGLU of hidden size ``f``::

    qkvo       = 2 d (H d_h) + 2 * 2 d d_kv + 2 (H d_h) d     = 2 d (2 d + 2 d_kv)   (when H d_h = d)
    ffn        = 3 * 2 d f                                    (gate, up and down projections)
    attention  = 2 * 2 (H d_h) n_att                          (Q K^T scores and the weighted sum of V)

``n_att`` is the number of keys a query actually attends to, averaged over the positions of a context of
``n`` positions. With causal attention restricted to a window of ``w`` positions, position ``t`` sees
``min(t + 1, w)`` keys, so (see :func:`attended_context`)::

    n_att = (n + 1) / 2                  if there is no window or w >= n (the paper's (m + 1) / 2)
    n_att = w - w (w - 1) / (2 n)        otherwise (close to w for long contexts)

The output projection (de-embedding) onto a vocabulary ``V`` costs ``2 d V`` per predicted position.

Tokenized transformer (:func:`tokenized_flops_per_byte`): a context of ``n_ctx`` bytes holds
``m = n_ctx / b`` tokens of ``b`` bytes on average; FLOPs per token are
``L (qkvo + ffn + attention(m)) + 2 d V``, and FLOPs per byte are those divided by ``b``. For Llama 2 shapes
(24 layers, width 1280, V = 32000, n_ctx = 8192 bytes, b = 3.7) this gives 3.1e8 FLOPs/byte, and 2.1e9 for
32 layers of width 3072, the paper's figures.

Byte latent transformer (:func:`blt_flops_per_byte`), with mean patch size ``p`` bytes, ``k``
(``cross_attn_k``) patch query rows per patch, encoder / global / decoder widths ``d_E, d_G, d_D``:

- local encoder, per byte: its layers over a context of ``n_ctx`` bytes (sliding window ``w_E``);
- encoder cross-attention, for each layer that has one (the last, or all): per patch, the max-pooled patch
  embedding is projected to ``k`` rows (``2 d_E k d_E``) whose queries and outputs cost ``k * 4 d_E^2``; per
  byte, keys and values cost ``4 d_E d_kv``; each of the ``k`` query rows attends to the ``p`` bytes of its
  patch: ``k * 4 d_E p`` per patch, i.e. ``4 k d_E`` per byte;
- global transformer, per patch: the projection of the ``k d_E`` encoder output to ``d_G`` (only when the
  widths differ, as in the released models) and its layers over a context of ``n_ctx / p`` patches, with no
  output projection; divided by ``p``;
- decoder cross-attention: per patch, the global state is projected once to ``k`` rows (``2 d_G k d_D``);
  then for each layer that has a cross-attention (the first, or all): per patch, keys and values of the
  rows ``k * 4 d_D d_kv``; per byte, query and output ``4 d_D^2`` and attention over the ``k`` rows of its
  patch, ``4 d_D k``;
- local decoder, per byte: its layers (window ``w_D``) and the output projection onto the 260 byte ids.

The entropy model that decides patch boundaries is a byte-level transformer and is reported separately
(:func:`entropy_flops_per_byte`): whether to count it is the reader's choice (the paper reports BLT FLOPs
without it; at inference it runs once per byte, during BLT training it runs forward only).

FLOPs spent on one input (:func:`blt_flops_spent`, :func:`tokenized_flops_spent`): the same terms, summed
over the positions and patches the input actually has instead of multiplied by means. For one forward pass
over ``T`` positions cut into patches of lengths ``l_0 .. l_{P-1}`` (``sum l_i = T``), counting the positions
``t >= first`` (a scoring window recomputes the positions before ``first`` as context; the window that
scores them counts them) and the ``P_c`` patches that start at or after ``first``:

- a stack's linear terms (qkvo, ffn) cost their per-position figure times the positions counted (``T -
  first``; ``P_c`` for the global transformer), the output projection likewise;
- its attention costs ``2 * 2 (H d_h)`` per key actually attended: position ``t`` attends ``min(t + 1, w)``
  keys, so ``sum_{t = first}^{T-1} min(t + 1, w)`` in all (:func:`causal_keys`); the global transformer
  does the same over patch indices, from the first counted patch;
- per-patch terms of the cross-attentions and the global input projection cost their figure times ``P_c``,
  per-byte terms times ``T - first``; the encoder's ``k`` rows of patch ``i`` attend to its ``l_i`` bytes,
  ``4 k (H d_h)`` per byte, and each decoder byte attends to ``k`` rows, so neither depends on the lengths.

So the patch lengths enter only through ``P_c`` and the global attention, and for ``P`` equal patches of
``p`` bytes over a context of ``T = P p`` bytes the FLOPs spent are exactly ``T`` times the per-byte figures
of :func:`blt_flops_per_byte` and :func:`entropy_flops_per_byte` at ``context_bytes = T`` (the mean number
of keys attended is ``causal_keys(T, w) / T = attended_context(T, w)``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from blt.config import BLTConfig, EntropyModelConfig, TransformerConfig

TRAINING_MULTIPLIER = 3.0  # forward + backward (activation and weight gradients)
PAPER_CONTEXT_BYTES = 8192  # context length used for the paper's FLOP comparisons
LLAMA2_BYTES_PER_TOKEN = 3.7  # Llama 2 tokenizer on the paper's training data


@dataclass(frozen=True)
class FlopCount:
    """Forward FLOPs per byte of one model, by component; training FLOPs are 3x the forward pass."""

    parts: dict[str, float] = field(default_factory=dict)

    @property
    def inference_flops_per_byte(self) -> float:
        return float(sum(self.parts.values()))

    @property
    def training_flops_per_byte(self) -> float:
        return TRAINING_MULTIPLIER * self.inference_flops_per_byte

    def to_dict(self) -> dict:
        return {
            "inference_flops_per_byte": self.inference_flops_per_byte,
            "training_flops_per_byte": self.training_flops_per_byte,
            "parts": dict(self.parts),
        }


def _check_positive(value: float, name: str, minimum: float = 0.0) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > minimum):
        raise ValueError(f"{name} must be a finite number > {minimum:g}, got {value!r}")


def attended_context(n_ctx: float, window: int | None = None) -> float:
    """Mean number of keys a causal query attends to over a context of ``n_ctx`` positions.

    Position t (0-based) attends to ``min(t + 1, window)`` keys. Averaged over t < n this is
    ``(n + 1) / 2`` for full causal attention and ``w - w (w - 1) / (2 n)`` for a window ``w < n``.
    ``n_ctx`` may be fractional (contexts measured in tokens or patches of a mean size).
    """
    _check_positive(n_ctx, "context length")
    if window is None or window >= n_ctx:
        return (n_ctx + 1) / 2
    return window - window * (window - 1) / (2 * n_ctx)


def layer_flops(config: TransformerConfig, n_ctx: float) -> dict[str, float]:
    """Forward FLOPs per position of ``config.n_layers`` layers over a context of ``n_ctx`` positions."""
    d, q_dim, kv_dim = config.dim, config.n_heads * config.head_dim, config.kv_heads * config.head_dim
    n_att = attended_context(n_ctx, config.window)
    return {
        "qkvo": config.n_layers * 2 * (d * q_dim + 2 * d * kv_dim + q_dim * d),
        "ffn": config.n_layers * 3 * 2 * d * config.hidden_dim,
        "attention": config.n_layers * 2 * 2 * q_dim * n_att,
    }


def _prefixed(prefix: str, parts: dict[str, float], scale: float = 1.0) -> dict[str, float]:
    return {f"{prefix}.{name}": value * scale for name, value in parts.items()}


def tokenized_flops_per_byte(
    config: TransformerConfig,
    vocab_size: int | None = None,
    context_bytes: float = PAPER_CONTEXT_BYTES,
    bytes_per_token: float = LLAMA2_BYTES_PER_TOKEN,
) -> FlopCount:
    """FLOPs per byte of a token-level causal LM (``vocab_size`` defaults to ``config.vocab_size``).

    Per token: layers over ``context_bytes / bytes_per_token`` tokens plus the output projection; divided by
    ``bytes_per_token``. With ``bytes_per_token = 1`` and the byte vocabulary this is a byte-level model.
    """
    vocab_size = vocab_size if vocab_size is not None else getattr(config, "vocab_size", None)
    if vocab_size is None:
        raise ValueError("vocab_size is needed: the config has none")
    _check_positive(vocab_size, "vocab_size")
    _check_positive(bytes_per_token, "bytes_per_token")
    _check_positive(context_bytes, "context_bytes")
    per_token = layer_flops(config, context_bytes / bytes_per_token)
    per_token["output"] = 2 * config.dim * vocab_size
    return FlopCount({name: value / bytes_per_token for name, value in per_token.items()})


def entropy_flops_per_byte(
    config: EntropyModelConfig, context_bytes: float = PAPER_CONTEXT_BYTES
) -> FlopCount:
    """FLOPs per byte of the entropy model: a byte-level LM with its sliding window."""
    return tokenized_flops_per_byte(config, config.vocab_size, context_bytes, bytes_per_token=1.0)


def _encoder_cross_terms(config: BLTConfig) -> tuple[float, float, float]:
    """Encoder cross-attention (see the module docstring): FLOPs per patch, per byte, attention per byte."""
    enc, k = config.encoder, config.cross_attn_k
    n_cross = enc.n_layers if enc.cross_attn_all_layers else 1  # pooling into patches happens regardless
    d, q_dim, kv_dim = enc.dim, enc.n_heads * enc.head_dim, enc.kv_heads * enc.head_dim
    per_patch = 2 * d * k * d + k * 2 * (d * q_dim + q_dim * d)  # pooled-patch projection, Q and O
    per_byte = 2 * 2 * d * kv_dim  # K and V
    attention = k * 2 * 2 * q_dim  # k rows x p bytes per patch, spread over the patch's p bytes
    return n_cross * per_patch, n_cross * per_byte, n_cross * attention


def _decoder_cross_terms(config: BLTConfig) -> tuple[float, float, float]:
    """Decoder cross-attention (see the module docstring): FLOPs per patch, per byte, attention per byte."""
    dec, k, d_global = config.decoder, config.cross_attn_k, config.global_transformer.dim
    n_cross = dec.n_layers if dec.cross_attn_all_layers else min(1, dec.n_layers)
    d, q_dim, kv_dim = dec.dim, dec.n_heads * dec.head_dim, dec.kv_heads * dec.head_dim
    rows = 2 * d_global * k * d  # the global state becomes k rows once, shared by every cross-attention
    per_patch = k * 2 * 2 * d * kv_dim  # K and V of the k rows
    per_byte = 2 * (d * q_dim + q_dim * d)  # Q and O
    attention = 2 * 2 * q_dim * k  # each byte attends to the k rows of its patch
    return rows + n_cross * per_patch, n_cross * per_byte, n_cross * attention


def _cross_flops(terms: tuple[float, float, float], patch_size: float) -> dict[str, float]:
    """Per byte: a cross-attention's per-patch terms spread over a patch of ``patch_size`` bytes."""
    per_patch, per_byte, attention = terms
    return {"proj": per_patch / patch_size + per_byte, "attention": attention}


def blt_flops_per_byte(
    config: BLTConfig, mean_patch_size: float | None = None, context_bytes: float = PAPER_CONTEXT_BYTES
) -> FlopCount:
    """FLOPs per byte of a BLT without its entropy model (see :func:`entropy_flops_per_byte`).

    ``mean_patch_size`` defaults to ``config.patching.patch_size``; the global transformer runs once per
    patch over ``context_bytes / mean_patch_size`` patches, the local models once per byte.
    """
    p = float(config.patching.patch_size if mean_patch_size is None else mean_patch_size)
    _check_positive(p, "mean patch size")
    if p < 1:
        raise ValueError(f"mean patch size must be at least 1 byte, got {p:g}")
    _check_positive(context_bytes, "context_bytes")
    enc, glob, dec, k = config.encoder, config.global_transformer, config.decoder, config.cross_attn_k
    parts = _prefixed("encoder", layer_flops(enc, context_bytes))
    parts |= _prefixed("encoder.cross", _cross_flops(_encoder_cross_terms(config), p))
    if enc.dim * k != glob.dim:  # the released models project the k encoder rows to the global width
        parts["global.input_proj"] = 2 * enc.dim * k * glob.dim / p
    parts |= _prefixed("global", layer_flops(glob, context_bytes / p), scale=1 / p)
    parts |= _prefixed("decoder.cross", _cross_flops(_decoder_cross_terms(config), p))
    parts |= _prefixed("decoder", layer_flops(dec, context_bytes))
    parts["decoder.output"] = 2 * dec.dim * config.vocab_size
    return FlopCount(parts)


# ----------------------------------------------------------------------------------------------------------
# FLOPs spent on one input, from its actual patches (see the module docstring)


@dataclass(frozen=True)
class FlopsSpent:
    """Forward FLOPs one input actually cost, by component (totals, not per byte).

    ``positions``: the positions counted (bytes for byte-level models, tokens for a tokenized one);
    ``units``: the patches (BLT), tokens or bytes among them. Spent FLOPs of several inputs add up.
    """

    parts: dict[str, float] = field(default_factory=dict)
    positions: int = 0
    units: int = 0

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))

    def share(self, prefix: str) -> float:
        """FLOPs of the parts named ``prefix.*`` (e.g. ``"entropy"``, ``"global"``)."""
        return float(sum(v for k, v in self.parts.items() if k.startswith(prefix + ".")))

    def __add__(self, other: FlopsSpent) -> FlopsSpent:
        parts = dict(self.parts)
        for name, value in other.parts.items():
            parts[name] = parts.get(name, 0.0) + value
        return FlopsSpent(parts, self.positions + other.positions, self.units + other.units)


def causal_keys(n: int, window: int | None = None, first: int = 0) -> int:
    """Keys attended by queries ``first .. n - 1`` of a causal stack over ``n`` positions.

    Query t sees ``min(t + 1, w)`` keys; summed over t < n that is ``n (n + 1) / 2`` without a window (or when
    ``w >= n``) and ``w (w + 1) / 2 + (n - w) w`` otherwise. The queries before ``first`` are subtracted.
    """

    def upto(m: int) -> int:
        if window is None or m <= window:
            return m * (m + 1) // 2
        return window * (window + 1) // 2 + (m - window) * window

    if not 0 <= first <= n:
        raise ValueError(f"first must be in [0, {n}], got {first}")
    return upto(n) - upto(first)


def _stack_spent(config: TransformerConfig, n: int, first: int) -> dict[str, float]:
    """Forward FLOPs of ``config.n_layers`` layers spent on positions ``first .. n - 1`` of ``n``."""
    per_position = layer_flops(config, 1)  # qkvo and ffn do not depend on the context
    q_dim = config.n_heads * config.head_dim
    return {
        "qkvo": per_position["qkvo"] * (n - first),
        "ffn": per_position["ffn"] * (n - first),
        "attention": config.n_layers * 2 * 2 * q_dim * causal_keys(n, config.window, first),
    }


def _one_row(values, name: str) -> list[int]:
    """A 1-D sequence of ints (a list, a 1-D tensor or a one-row 2-D tensor) as a list."""
    shape = tuple(getattr(values, "shape", (len(values),)))
    if len(shape) == 2 and shape[0] == 1:
        values = values[0]
    elif len(shape) != 1:
        raise ValueError(f"{name} must be one sequence (1-D, or a [1, n] row), got shape {shape}")
    return [int(v) for v in values]


def _positions(ids, first: int) -> int:
    n = int(ids) if isinstance(ids, numbers.Integral) else len(_one_row(ids, "ids"))
    if n < 1:
        raise ValueError("ids must hold at least one id")
    if not 0 <= first < n:
        raise ValueError(f"first must be in [0, {n - 1}] for {n} ids, got {first}")
    return n


def tokenized_flops_spent(
    config: TransformerConfig, ids, vocab_size: int | None = None, first: int = 0
) -> FlopsSpent:
    """FLOPs one forward pass of a causal LM spends on ``ids`` (1-D ids, or their number).

    Positions ``first ..`` are counted (see the module docstring); each costs the layers, attention over the
    keys it actually attends (its window respected) and the output projection. For the entropy model pass
    its config (the 260 byte ids are its vocabulary); for the baseline the positions are tokens.
    """
    vocab_size = vocab_size if vocab_size is not None else getattr(config, "vocab_size", None)
    if vocab_size is None:
        raise ValueError("vocab_size is needed: the config has none")
    n = _positions(ids, first)
    parts = _stack_spent(config, n, first)
    parts["output"] = 2 * config.dim * vocab_size * (n - first)
    return FlopsSpent({k: float(v) for k, v in parts.items()}, n - first, n - first)


def blt_flops_spent(
    config: BLTConfig,
    ids,
    patch_lengths,
    first: int = 0,
    entropy_model: EntropyModelConfig | None = None,
) -> FlopsSpent:
    """FLOPs one BLT forward pass spends on ``ids`` cut into ``patch_lengths`` (see the module docstring).

    ``ids``: the input (1-D, a [1, T] row, or its length T); ``patch_lengths``: the patches the model used
    (``BLTOutput.patch_lengths`` of that row; trailing zeros are padding), summing to T. Positions and
    patches from ``first`` on are counted. ``entropy_model``: the config of the entropy model that patched
    the input (``config.entropy_model`` under an entropy scheme), whose FLOPs are added as ``entropy.*``
    parts; None when the patches came without one.
    """
    T = _positions(ids, first)
    lengths = _one_row(patch_lengths, "patch_lengths")
    while lengths and lengths[-1] == 0:
        lengths.pop()
    if not lengths or any(n <= 0 for n in lengths) or sum(lengths) != T:
        raise ValueError(
            f"patch_lengths must be positive (zeros only as right padding) and sum to the {T} ids, "
            f"got {len(lengths)} patches summing to {sum(lengths)}"
        )
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    skipped = sum(1 for s in starts if s < first)  # patches of the context before ``first``
    P, counted, n_bytes = len(lengths), len(lengths) - skipped, T - first
    enc, glob, dec, k = config.encoder, config.global_transformer, config.decoder, config.cross_attn_k

    parts: dict[str, float] = {}
    if entropy_model is not None:
        parts |= _prefixed("entropy", tokenized_flops_spent(entropy_model, T, first=first).parts)
    parts |= _prefixed("encoder", _stack_spent(enc, T, first))
    per_patch, per_byte, attention = _encoder_cross_terms(config)
    parts["encoder.cross.proj"] = per_patch * counted + per_byte * n_bytes
    parts["encoder.cross.attention"] = attention * n_bytes
    if enc.dim * k != glob.dim:
        parts["global.input_proj"] = 2 * enc.dim * k * glob.dim * counted
    parts |= _prefixed("global", _stack_spent(glob, P, skipped))
    per_patch, per_byte, attention = _decoder_cross_terms(config)
    parts["decoder.cross.proj"] = per_patch * counted + per_byte * n_bytes
    parts["decoder.cross.attention"] = attention * n_bytes
    parts |= _prefixed("decoder", _stack_spent(dec, T, first))
    parts["decoder.output"] = 2 * dec.dim * config.vocab_size * n_bytes
    return FlopsSpent({name: float(v) for name, v in parts.items()}, n_bytes, counted)


# The 6N figure: the convention of torchtitan, nanoGPT and PaLM, so MFU compares across code bases


def six_n_flops_per_token(non_embedding_params: float, n_layers: int, dim: int, context: float) -> float:
    """Training FLOPs per token by the 6N rule: ``6 N + 12 L d T`` (torchtitan's and nanoGPT's MFU).

    Derivation (Kaplan et al. 2020, PaLM Appendix B): a weight takes part in one multiply-accumulate per
    token in the forward pass (2 FLOPs) and in two in the backward pass (the gradient of the activation and
    that of the weight), so every weight costs 6 FLOPs per token trained: ``6 N`` for the ``N`` parameters
    outside embedding tables (lookups cost nothing; an output head that is not tied counts). Attention adds,
    per layer and token, the scores ``Q K^T`` and the weighted sum of ``V``: two products of the query
    width ``d`` (heads x head size) by the ``T`` keys, ``2 * 2 d T`` FLOPs forward, times 3 for training:
    ``12 d T`` per layer.

    How it differs from the paper's accounting (:func:`tokenized_flops_per_byte`, :func:`blt_flops_per_byte`):
    ``T`` here is every key of the context, not the ``(T + 1) / 2`` a causal query attends to on average,
    so its attention term is about twice the paper's; norm gains count as weights (a few thousandths of
    ``N``). The linear layers agree: ``2 N`` forward is the paper's q/k/v/o, feed-forward and output
    products. MFU against this figure is therefore at least the paper-convention MFU, by the attention's
    share.
    """
    return 6 * non_embedding_params + 12 * n_layers * dim * context


def non_embedding_params(module) -> int:
    """Trainable parameters of ``module`` outside ``nn.Embedding`` tables, each counted once.

    A weight shared by an embedding and a linear layer (a tied output head) counts: its product runs.
    Frozen parameters (a BLT's entropy model) get no weight gradient and are left out.
    """
    from torch import nn

    seen: set[int] = set()
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            continue
        for p in m.parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def _keys(config: TransformerConfig, context: float) -> float:
    """Keys a query of ``config``'s layers can see in a context of ``context`` positions, unmasked."""
    return min(context, config.window) if config.window is not None else context


def six_n_flops_per_byte(
    config: TransformerConfig, non_embedding_params: int, context: float, bytes_per_token: float = 1.0
) -> float:
    """The 6N figure per byte of a causal LM (entropy model, tokenized baseline) of shape ``config``.

    ``context`` is in tokens (bytes for a byte-level model); a windowed layer sees at most its window.
    Per token :func:`six_n_flops_per_token`, per byte that divided by ``bytes_per_token``.
    """
    _check_positive(bytes_per_token, "bytes_per_token")
    width = config.n_heads * config.head_dim
    per_token = six_n_flops_per_token(non_embedding_params, config.n_layers, width, _keys(config, context))
    return per_token / bytes_per_token


def blt_params(model) -> tuple[int, int]:
    """(byte-level, patch-level) non-embedding parameters of a BLT: encoder + decoder, global transformer."""
    local = non_embedding_params(model.encoder) + non_embedding_params(model.decoder)
    return local, non_embedding_params(model.global_transformer)


def blt_six_n_flops_per_byte(
    config: BLTConfig, local_params: int, global_params: int, mean_patch_size: float, context_bytes: float
) -> float:
    """The 6N figure per byte of a BLT (parameters from :func:`blt_params`; entropy model not counted).

    The 6N rule applied where each stack runs: the local encoder and decoder (``local_params``,
    cross-attentions and output head included) on every byte, their self-attention over ``context_bytes``
    keys or their window; the global transformer (``global_params``, input projection included) once per
    patch, over ``context_bytes / p`` patches, so its figure is divided by ``p``::

        6 N_local + 12 (L_E d_E T_E + L_D d_D T_D) + (6 N_global + 12 L_G d_G T / p) / p

    The cross-attentions' scores (a query sees only its patch's k rows or bytes) are left out, and their
    per-patch projections (encoder queries and outputs, decoder keys and values, the patch projections)
    are counted per byte: about 15% of ``N_local`` at BLT-1B shapes, which makes this figure a few
    percent high there. It is a rule of thumb to compare with other code bases; :func:`blt_flops_per_byte`
    is the accounting.
    """
    p = float(mean_patch_size)
    if p < 1:
        raise ValueError(f"mean patch size must be at least 1 byte, got {p:g}")
    _check_positive(context_bytes, "context_bytes")
    enc, glob, dec = config.encoder, config.global_transformer, config.decoder
    attention = sum(12 * c.n_layers * c.n_heads * c.head_dim * _keys(c, context_bytes) for c in (enc, dec))
    width = glob.n_heads * glob.head_dim
    per_patch = six_n_flops_per_token(global_params, glob.n_layers, width, _keys(glob, context_bytes / p))
    return 6 * local_params + attention + per_patch / p
