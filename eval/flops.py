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
"""

from __future__ import annotations

import math
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


def _encoder_cross_flops(config: BLTConfig, patch_size: float) -> dict[str, float]:
    """Per byte: patch-query cross-attention in the local encoder (see the module docstring)."""
    enc, k = config.encoder, config.cross_attn_k
    n_cross = enc.n_layers if enc.cross_attn_all_layers else 1  # pooling into patches happens regardless
    d, q_dim, kv_dim = enc.dim, enc.n_heads * enc.head_dim, enc.kv_heads * enc.head_dim
    per_patch = 2 * d * k * d + k * 2 * (d * q_dim + q_dim * d)  # pooled-patch projection, Q and O
    per_byte = 2 * 2 * d * kv_dim  # K and V
    attention = k * 2 * 2 * q_dim  # k rows x p bytes per patch, spread over the patch's p bytes
    return {"proj": n_cross * (per_patch / patch_size + per_byte), "attention": n_cross * attention}


def _decoder_cross_flops(config: BLTConfig, patch_size: float) -> dict[str, float]:
    """Per byte: byte-query cross-attention in the local decoder (see the module docstring)."""
    dec, k, d_global = config.decoder, config.cross_attn_k, config.global_transformer.dim
    n_cross = dec.n_layers if dec.cross_attn_all_layers else min(1, dec.n_layers)
    d, q_dim, kv_dim = dec.dim, dec.n_heads * dec.head_dim, dec.kv_heads * dec.head_dim
    rows = 2 * d_global * k * d  # the global state becomes k rows once, shared by every cross-attention
    per_patch = k * 2 * 2 * d * kv_dim  # K and V of the k rows
    per_byte = 2 * (d * q_dim + q_dim * d)  # Q and O
    attention = 2 * 2 * q_dim * k  # each byte attends to the k rows of its patch
    proj = rows / patch_size + n_cross * (per_patch / patch_size + per_byte)
    return {"proj": proj, "attention": n_cross * attention}


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
    parts |= _prefixed("encoder.cross", _encoder_cross_flops(config, p))
    if enc.dim * k != glob.dim:  # the released models project the k encoder rows to the global width
        parts["global.input_proj"] = 2 * enc.dim * k * glob.dim / p
    parts |= _prefixed("global", layer_flops(glob, context_bytes / p), scale=1 / p)
    parts |= _prefixed("decoder.cross", _decoder_cross_flops(config, p))
    parts |= _prefixed("decoder", layer_flops(dec, context_bytes))
    parts["decoder.output"] = 2 * dec.dim * config.vocab_size
    return FlopCount(parts)


# ----------------------------------------------------------------------------------------------------------
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
