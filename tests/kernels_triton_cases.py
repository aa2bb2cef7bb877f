"""Triton kernels vs their references, forward and backward, on the CPU through Triton's interpreter.

Not collected by the main test run (the name does not start with ``test_``): ``tests/test_kernels_triton.py``
runs this file in a subprocess with ``TRITON_INTERPRET=1``, which must be set before Triton is imported.
It also provides the patch-id cases shared with ``tests/test_kernels.py``.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from blt import kernels, patch_ops
from blt.config import BLTConfig, LocalDecoderConfig, LocalEncoderConfig, TransformerConfig
from blt.model import BLT
from blt.patcher import entropy_from_logits
from blt.patcher.schemes import entropy_starts

needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="run by tests/test_kernels_triton.py with TRITON_INTERPRET=1",
)


def patch_ids_case(seed: int, B: int, T: int, max_len: int, pad_patches: int = 2, orphans: int = 2):
    """Patch ids [B, T] from random patch lengths in 1..max_len (the first row starts with a patch of length
    1 and one of max_len), ``pad_patches`` empty patches at the end, and the last ``orphans`` bytes of the
    last row in no patch (id -1). Returns (patch_ids, num_patches)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(B):
        lengths, left = ([1, max_len] if b == 0 else []), T - (1 + max_len if b == 0 else 0)
        while left > 0:
            n = min(left, int(torch.randint(1, max_len + 1, (1,), generator=g)))
            lengths.append(n)
            left -= n
        rows.append(lengths)
    P = max(len(r) for r in rows) + pad_patches
    lengths = torch.zeros(B, P, dtype=torch.long)
    for b, r in enumerate(rows):
        lengths[b, : len(r)] = torch.tensor(r)
    ids = patch_ops.patch_ids_from_lengths(lengths, T)
    if orphans:
        ids[-1, -orphans:] = -1
    return ids, P


def grads(out: torch.Tensor, inputs: tuple[torch.Tensor, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    return torch.autograd.grad(out, inputs, g)


def assert_same(a, b, atol=1e-5):
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-5)


def leaf(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).requires_grad_()


def tiny_blt(cross_all: bool) -> tuple[BLT, torch.Tensor, torch.Tensor]:
    """A tiny random BLT, ids [2, 30] and patch lengths with patches of length 1, a long one and padding."""
    torch.manual_seed(0)
    layer = {"dim": 32, "n_heads": 2, "window": 16, "max_seq_len": 64}
    config = BLTConfig(
        cross_attn_k=2,
        encoder=LocalEncoderConfig(
            n_layers=2, hash_ngram_sizes=[3, 4], hash_vocab=61, cross_attn_all_layers=cross_all, **layer
        ),
        global_transformer=TransformerConfig(dim=48, n_layers=1, n_heads=2, max_seq_len=64),
        decoder=LocalDecoderConfig(n_layers=2, cross_attn_all_layers=cross_all, **layer),
    )
    ids = torch.randint(4, 260, (2, 30), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([[1, 1, 12, 3, 1, 5, 7, 0], [1, 4, 4, 4, 4, 4, 4, 5]])
    return BLT(config), ids, lengths


def model_logits_and_grads(model: BLT, ids, lengths):
    model.zero_grad()
    logits = model(ids, lengths).logits
    logits.square().mean().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def assert_model_unchanged(monkeypatch, impl: str, model: BLT, ids, lengths):
    """The model's logits and gradients with BLT_KERNELS=impl match those of the plain references."""
    monkeypatch.setenv("BLT_KERNELS", "reference")
    ref_logits, ref_grads = model_logits_and_grads(model, ids, lengths)
    monkeypatch.setenv("BLT_KERNELS", impl)
    logits, grads_ = model_logits_and_grads(model, ids, lengths)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert len(grads_) == len(ref_grads)
    for g, r in zip(grads_, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


@needs_interpreter
@pytest.mark.parametrize("sizes,n_functions,T", [([3, 4, 5], 1, 21), ([4, 1, 4, 7], 2, 21), ([6, 8], 1, 3)])
def test_hash_embedding(sizes, n_functions, T):
    B, D, V = 3, 24, 53  # 63 bytes: two byte blocks; D not a power of two; T=3: n-grams longer than rows
    ids = torch.randint(0, 260, (B, T), generator=torch.Generator().manual_seed(1))
    ids[0, :3] = 0
    bw = leaf(260, D, seed=2)
    hw = leaf(n_functions * len(sizes) * V, D, seed=3)
    ref = patch_ops.hash_embedding(ids, bw, hw, sizes, n_functions, V)
    out = kernels.hash_embedding(ids, bw, hw, sizes, n_functions, V, impl="triton")
    assert_same(out, ref)
    assert_same(grads(out, (bw, hw)), grads(ref, (bw, hw)))


@needs_interpreter
@pytest.mark.parametrize("mode", ["max", "mean"])
def test_patch_pool(mode):
    B, T, D = 2, 37, 20
    patch_ids, P = patch_ids_case(0, B, T, max_len=19)
    # values on a half-integer grid: ties inside patches (the max backward splits them like scatter_reduce)
    h = (torch.randint(-3, 3, (B, T, D), generator=torch.Generator().manual_seed(4)) + 0.5).requires_grad_()
    ref = patch_ops.patch_pool(h, patch_ids, P, mode)
    out = kernels.patch_pool(h, patch_ids, P, mode, impl="triton")
    assert_same(out, ref)
    assert_same(grads(out, (h,)), grads(ref, (h,)))


@needs_interpreter
@pytest.mark.parametrize("k_rep,max_len", [(1, 19), (2, 5), (3, 19)])
def test_patch_query_attention(k_rep, max_len):
    B, H, T, Dh = 2, 2, 37, 12  # patches longer than one 16-byte block exercise the online softmax
    patch_ids, P = patch_ids_case(k_rep, B, T, max_len)
    q, k, v = leaf(B, H, P * k_rep, Dh, seed=5), leaf(B, H, T, Dh, seed=6), leaf(B, H, T, Dh, seed=7)
    ref = patch_ops.patch_query_attention(q, k, v, patch_ids, k_rep)
    out = kernels.patch_query_attention(q, k, v, patch_ids, k_rep, impl="triton")
    assert_same(out, ref)
    assert_same(grads(out, (q, k, v)), grads(ref, (q, k, v)))


@needs_interpreter
@pytest.mark.parametrize("k_rep,max_len", [(1, 19), (2, 5), (3, 19)])
def test_byte_query_attention(k_rep, max_len):
    B, H, T, Dh = 2, 2, 37, 12
    patch_ids, P = patch_ids_case(10 + k_rep, B, T, max_len)
    q, k, v = leaf(B, H, T, Dh, seed=8), leaf(B, H, P * k_rep, Dh, seed=9), leaf(B, H, P * k_rep, Dh, seed=10)
    ref = patch_ops.byte_query_attention(q, k, v, patch_ids, k_rep)
    out = kernels.byte_query_attention(q, k, v, patch_ids, k_rep, impl="triton")
    assert_same(out, ref)
    assert_same(grads(out, (q, k, v)), grads(ref, (q, k, v)))


@needs_interpreter
def test_entropy_and_boundaries():
    logits = leaf(3, 19, 260, seed=11, scale=3.0)
    ref = entropy_from_logits(logits)
    out = kernels.entropy_from_logits(logits, impl="triton")
    assert_same(out, ref)
    assert_same(grads(out, (logits,)), grads(ref, (logits,)))
    masked = logits.detach().clone()
    masked[0, 0, :7] = float("-inf")  # masked ids have probability 0 and contribute nothing
    expected = torch.distributions.Categorical(logits=masked).entropy()
    assert_same(kernels.entropy_from_logits(masked, impl="triton"), expected)
    threshold = float(ref.detach().median())
    h, starts = kernels.entropy_patch_starts(logits, threshold, impl="triton")
    assert_same(h, ref)
    assert torch.equal(starts, entropy_starts(ref.detach(), threshold))
    assert 0 < int(starts[:, 2:].sum()) < starts[:, 2:].numel()


@needs_interpreter
def test_half_precision_runs_in_triton():
    B, H, T, Dh, k_rep = 1, 2, 16, 8, 2
    patch_ids, P = patch_ids_case(3, B, T, 4, orphans=0)
    q, k, v = (
        leaf(B, H, n, Dh, seed=s).detach().bfloat16() for n, s in ((T, 1), (P * k_rep, 2), (P * k_rep, 3))
    )
    out = kernels.byte_query_attention(q, k, v, patch_ids, k_rep, impl="triton")
    assert out.dtype == torch.bfloat16
    ref = patch_ops.byte_query_attention(q.float(), k.float(), v.float(), patch_ids, k_rep)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


@needs_interpreter
def test_unsupported_dtype_falls_back_with_one_warning():
    h = torch.randn(2, 9, 4, dtype=torch.float64)
    patch_ids, P = patch_ids_case(5, 2, 9, 3)
    with pytest.warns(RuntimeWarning, match="no Triton kernel for dtype torch.float64"):
        out = kernels.patch_pool(h, patch_ids, P, impl="triton")
    assert_same(out, patch_ops.patch_pool(h, patch_ids, P))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.patch_pool(h, patch_ids, P, impl="triton")  # warned once only


@needs_interpreter
def test_blt_forward_and_backward_unchanged_with_triton(monkeypatch):
    model, ids, lengths = tiny_blt(cross_all=True)
    assert_model_unchanged(monkeypatch, "triton", model, ids, lengths)


@needs_interpreter
def test_shapes_too_big_for_triton_fall_back_with_a_warning():
    patch_ids, P = patch_ids_case(6, 1, 10, 3)
    q, k = torch.randn(1, 1, 10, 128), torch.randn(1, 1, P * 64, 128)  # 64 rows x 128 dims per patch
    with pytest.warns(RuntimeWarning, match="k_rep=64 x head_dim=128 exceeds"):
        out = kernels.byte_query_attention(q, k, k, patch_ids, 64, impl="triton")
    assert_same(out, patch_ops.byte_query_attention(q, k, k, patch_ids, 64))
    logits = torch.randn(1, 2, 20000)
    with pytest.warns(RuntimeWarning, match="vocabulary of 20000 exceeds"):
        h = kernels.entropy_from_logits(logits, impl="triton")
    assert_same(h, entropy_from_logits(logits))
