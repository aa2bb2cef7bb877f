"""Next-byte entropy and the entropy patch boundaries, without a [B, T, V] probability tensor.

With ``x`` the logits shifted by their row maximum, ``Z = sum exp(x)`` and ``p = exp(x) / Z``:

    H = log Z - sum_i p_i x_i               (nats)
    dH/dx_i = -p_i (x_i - sum_j p_j x_j)

The PyTorch path evaluates this on chunks of rows, so the probabilities exist for one chunk at a time
(the backward pass recomputes them from the logits, which exist anyway); the Triton kernel keeps one block of
rows in registers. Logits of -inf (masked ids) have p = 0 and contribute nothing.

The boundary decision follows the released BLT patcher: position 0 (BOS) and position 1 start patches, and
for t >= 2 a patch starts at t when H(t-1) > threshold.
"""

from __future__ import annotations

import torch
from blt.kernels.dispatch import choose

CHUNK_ELEMENTS = 1 << 22  # float32 probabilities alive at once in the PyTorch path (16 MB)


def _entropy_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [N, V] -> (H [N], p [N, V], x - E_p[x] [N, V] with 0 where p == 0), all float32."""
    x = x.float()
    x = x - x.amax(-1, keepdim=True)
    e = torch.exp(x)
    z = e.sum(-1, keepdim=True)
    p = e / z
    px = torch.where(p > 0, p * x, 0.0)
    mean = px.sum(-1, keepdim=True)
    centred = torch.where(p > 0, x - mean, 0.0)
    return torch.log(z).squeeze(-1) - mean.squeeze(-1), p, centred


class _Entropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits):
        ctx.save_for_backward(logits)
        rows = logits.reshape(-1, logits.shape[-1])
        step = max(1, CHUNK_ELEMENTS // max(1, rows.shape[1]))
        h = torch.cat([_entropy_rows(rows[i : i + step])[0] for i in range(0, rows.shape[0], step)])
        return h.view(logits.shape[:-1])

    @staticmethod
    def backward(ctx, grad):
        (logits,) = ctx.saved_tensors
        rows, g = logits.reshape(-1, logits.shape[-1]), grad.reshape(-1, 1).float()
        step = max(1, CHUNK_ELEMENTS // max(1, rows.shape[1]))
        parts = []
        for i in range(0, rows.shape[0], step):
            _, p, centred = _entropy_rows(rows[i : i + step])
            parts.append((-g[i : i + step] * p * centred).to(logits.dtype))
        return torch.cat(parts).view(logits.shape)


def _check(logits: torch.Tensor) -> None:
    if not logits.is_floating_point() or logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must be a float tensor [..., V] with V > 0, got {logits.dtype} {tuple(logits.shape)}")


def entropy_from_logits(logits: torch.Tensor, *, impl: str | None = None) -> torch.Tensor:
    """Softmax entropy in nats: logits [..., V] -> float32 [...]. Same semantics as
    :func:`blt.patcher.entropy_from_logits`; differentiable."""
    path = choose("entropy_from_logits", logits, impl)
    if path == "reference":
        from blt.patcher import entropy_from_logits as reference

        return reference(logits)
    _check(logits)
    if path == "triton":
        from blt.kernels.entropy_triton import triton_entropy

        return triton_entropy(logits, None)[0]
    return _Entropy.apply(logits)


def entropy_patch_starts(
    logits: torch.Tensor, threshold: float, *, impl: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropies and patch starts in one pass: logits [B, T, V] -> (H [B, T] float32, starts [B, T] bool).

    Same result as ``blt.patcher.schemes.entropy_starts(entropy_from_logits(logits), threshold)``:
    ``starts[:, 0]`` and ``starts[:, 1]`` are True; ``starts[:, t] = H[:, t - 1] > threshold`` for t >= 2.
    """
    from blt.patcher.schemes import check_threshold, entropy_starts, forced_starts

    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    path = choose("entropy_patch_starts", logits, impl)
    if path != "triton":
        h = entropy_from_logits(logits, impl=path)
        return h, entropy_starts(h, threshold)
    check_threshold(threshold, "threshold", allow_negative=False)
    _check(logits)
    from blt.kernels.entropy_triton import triton_entropy

    h, above = triton_entropy(logits, float(threshold))
    starts = forced_starts(above.shape, above.device)
    starts[:, 1:] |= above[:, :-1]
    return h, starts
