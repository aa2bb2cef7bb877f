"""Next-byte entropy and the entropy patch boundaries, without a [B, T, V] probability tensor.

With ``x`` the logits shifted by their row maximum, ``Z = sum exp(x)`` and ``p = exp(x) / Z``:

    H = log Z - sum_i p_i x_i               (nats)
    dH/dx_i = -p_i (x_i - sum_j p_j x_j)

The PyTorch path evaluates this on chunks of rows, so the probabilities exist for one chunk at a time
(the backward pass recomputes them from the logits, which exist anyway); the Triton kernel keeps one block of
rows in registers. Logits of -inf (masked ids) have p = 0 and contribute nothing. Logits that fit one chunk
and need no gradient (a decoding step) take the reference's few ops instead, which already stay in a chunk.

The boundary decision follows the released BLT patcher: position 0 (BOS) and position 1 start patches, and
for t >= 2 a patch starts at t when H(t-1) > threshold.
"""

from __future__ import annotations

import torch

from blt import patch_ops
from blt.kernels.dispatch import choose

CHUNK_ELEMENTS = 1 << 20  # logits per chunk in the PyTorch path: two float32 temporaries of 4 MB each


def _entropy_chunk(x: torch.Tensor) -> torch.Tensor:
    """x [N, V] -> H [N] float32 with two [N, V] temporaries (shifted logits, their exponentials)."""
    x = x.float() - x.amax(-1, keepdim=True).float()
    x.clamp_(min=torch.finfo(torch.float32).min)  # -inf logits: exp gives 0 and 0 * x stays finite
    e = torch.exp(x)
    z = e.sum(-1)
    return torch.log(z) - (e.unsqueeze(-2) @ x.unsqueeze(-1)).view(-1) / z  # log Z - sum_i p_i x_i


def _entropy_grad_chunk(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """dH/dx [N, V] times the incoming gradient g [N, 1]."""
    x = x.float() - x.amax(-1, keepdim=True).float()
    x.clamp_(min=torch.finfo(torch.float32).min)
    p = torch.softmax(x, dim=-1)
    mean = (p.unsqueeze(-2) @ x.unsqueeze(-1)).view(-1, 1)
    return -g * p * (x - mean)


class _Entropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits):
        ctx.save_for_backward(logits)
        rows = logits.reshape(-1, logits.shape[-1])
        step = max(1, CHUNK_ELEMENTS // max(1, rows.shape[1]))
        chunks = [_entropy_chunk(rows[i : i + step]) for i in range(0, rows.shape[0], step)]
        h = torch.cat(chunks) if chunks else rows.new_zeros(0, dtype=torch.float32)  # no rows: empty batch
        return h.view(logits.shape[:-1])

    @staticmethod
    def backward(ctx, grad):
        (logits,) = ctx.saved_tensors
        rows, g = logits.reshape(-1, logits.shape[-1]), grad.reshape(-1, 1).float()
        step = max(1, CHUNK_ELEMENTS // max(1, rows.shape[1]))
        parts = [rows[:0]]  # keeps torch.cat defined without rows
        for i in range(0, rows.shape[0], step):
            parts.append(_entropy_grad_chunk(rows[i : i + step], g[i : i + step]).to(logits.dtype))
        return torch.cat(parts).view(logits.shape)


MAX_TRITON_VOCAB = 16384  # one row of logits must fit one Triton program


def _too_big(logits: torch.Tensor) -> str | None:
    if logits.shape[-1] > MAX_TRITON_VOCAB:
        return f"a vocabulary of {logits.shape[-1]} exceeds the Triton kernel's {MAX_TRITON_VOCAB}"
    return None


def _check(logits: torch.Tensor) -> None:
    if not logits.is_floating_point() or logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(
            f"logits must be a float tensor [..., V] with V > 0, got {logits.dtype} {tuple(logits.shape)}"
        )


def entropy_from_logits(logits: torch.Tensor, *, impl: str | None = None) -> torch.Tensor:
    """Softmax entropy in nats: logits [..., V] -> float32 [...]. Same semantics as
    :func:`blt.patch_ops.entropy_from_logits`; differentiable."""
    _check(logits)
    path = choose("entropy_from_logits", logits, impl, _too_big(logits))
    if path == "reference":
        return patch_ops.entropy_from_logits(logits)
    if path == "triton":
        from blt.kernels.entropy_triton import triton_entropy

        return triton_entropy(logits, None)[0]
    if logits.numel() <= CHUNK_ELEMENTS and not (torch.is_grad_enabled() and logits.requires_grad):
        return patch_ops.entropy_from_logits(logits)
    return _Entropy.apply(logits)


def entropy_patch_starts(
    logits: torch.Tensor, threshold: float, *, impl: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropies and patch starts in one pass: logits [B, T, V] -> (H [B, T] float32, starts [B, T] bool).

    Same result as ``blt.patch_ops.entropy_starts(entropy_from_logits(logits), threshold)``:
    ``starts[:, 0]`` and ``starts[:, 1]`` are True; ``starts[:, t] = H[:, t - 1] > threshold`` for t >= 2.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    _check(logits)
    path = choose("entropy_patch_starts", logits, impl, _too_big(logits))
    if path != "triton":
        h = entropy_from_logits(logits, impl=path)
        return h, patch_ops.entropy_starts(h, threshold)
    patch_ops.check_threshold(threshold, "threshold", allow_negative=False)
    from blt.kernels.entropy_triton import triton_entropy

    h, above = triton_entropy(logits, float(threshold))
    starts = patch_ops.forced_starts(above.shape, above.device)
    starts[:, 1:] |= above[:, :-1]
    return h, starts
