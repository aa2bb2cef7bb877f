"""blt.kernels PyTorch paths vs the plain references, dispatch, errors, and the model with kernels on.

The Triton kernels are checked by tests/test_kernels_triton.py (a subprocess under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernels_triton_cases import assert_model_unchanged, assert_same, grads, leaf, patch_ids_case, tiny_blt
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from blt import kernels, patch_ops
from blt.config import ConfigError, EntropyModelConfig
from blt.kernels import entropy as entropy_module
from blt.kernels.hash_embedding import SHORT_POSITIONS, table_rows
from blt.model import BLT
from blt.patcher import entropy_from_logits
from blt.patcher.schemes import entropy_starts

SETTINGS = settings(max_examples=30, deadline=None)


@pytest.fixture(autouse=True)
def _default_mode(monkeypatch):
    monkeypatch.delenv("BLT_KERNELS", raising=False)


# ----------------------------------------------------------------------------------------------------------
# hash n-gram embedding


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    T=st.integers(1, 24),
    sizes=st.lists(st.integers(1, 8), min_size=0, max_size=4),
    n_functions=st.integers(0, 12),  # more functions than primes: the primes cycle
)
def test_hash_rows_are_bit_exact(seed, T, sizes, n_functions):
    ids = torch.randint(0, 260, (2, T), generator=torch.Generator().manual_seed(seed))
    ref = patch_ops.hash_ngram_indices(ids, sizes, n_functions, 500002)
    ours = list(table_rows(ids, sizes, n_functions, 500002))
    assert len(ours) == ref.shape[-1]
    assert sorted(tuple(r.flatten().tolist()) for r in ours) == sorted(
        tuple(ref[..., i].flatten().tolist()) for i in range(ref.shape[-1])
    )


@pytest.mark.parametrize("sizes,n_functions", [([3, 4, 5, 6, 7, 8], 1), ([5, 2, 5], 2), ([], 1), ([3], 0)])
def test_hash_embedding_forward_backward(sizes, n_functions):
    B, T, D, V = 3, 17, 8, 31
    ids = torch.randint(0, 260, (B, T), generator=torch.Generator().manual_seed(0))
    bw = leaf(260, D, seed=1)
    hw = leaf(max(1, n_functions * len(sizes)) * V, D, seed=2)
    ref = patch_ops.hash_embedding(ids, bw, hw, sizes, n_functions, V)
    out = kernels.hash_embedding(ids, bw, hw, sizes, n_functions, V)
    assert_same(out, ref)
    weights = (bw, hw) if n_functions * len(sizes) else (bw,)
    assert_same(grads(out, weights), grads(ref, weights))


@pytest.mark.parametrize("sizes,n_functions", [([3, 4, 5, 6, 7, 8], 1), ([5, 2, 5], 2), ([2, 3], 13)])
@pytest.mark.parametrize("B,T", [(1, 8), (3, 5), (2, 32)])
def test_hash_embedding_of_short_inputs_is_bit_exact(sizes, n_functions, B, T):
    """Decoding steps embed a few ids without gradients: one product per table and one gather, the
    reference's sums exactly (integers wrap alike; rows are added table by table in its order)."""
    ids = torch.randint(0, 260, (B, T), generator=torch.Generator().manual_seed(T))
    bw, hw = torch.randn(260, 16), torch.randn(n_functions * len(sizes) * 31, 16)
    with torch.no_grad():
        out = kernels.hash_embedding(ids, bw, hw, sizes, n_functions, 31)
    assert B * T <= SHORT_POSITIONS
    assert torch.equal(out, patch_ops.hash_embedding(ids, bw, hw, sizes, n_functions, 31))


def test_hash_embedding_of_short_inputs_compiles_without_warnings(monkeypatch):
    """Compiled decoding steps trace the short path: its coefficients become constants of the graph, with
    no cache call for dynamo to warn about (it ignores such caches), and the result stays exact."""
    import torch._dynamo.utils as dynamo_utils

    monkeypatch.setattr(dynamo_utils, "warn_once_cache", set())  # a warning given before would be silent
    ids = torch.randint(0, 260, (2, 8), generator=torch.Generator().manual_seed(5))
    bw, hw = torch.randn(260, 16), torch.randn(6 * 31, 16)
    embed = torch.compile(kernels.hash_embedding, backend="eager", fullgraph=True)
    torch._dynamo.reset()
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = embed(ids, bw, hw, [3, 4, 5, 6, 7, 8], 1, 31)
    assert [str(w.message) for w in caught] == []
    assert torch.equal(out, patch_ops.hash_embedding(ids, bw, hw, [3, 4, 5, 6, 7, 8], 1, 31))


def test_hash_embedding_bad_inputs():
    bw, hw = torch.randn(260, 4), torch.randn(2 * 7, 4)
    ids = torch.randint(0, 260, (1, 5))
    with pytest.raises(ValueError, match="id 300 is outside"):
        kernels.hash_embedding(torch.tensor([[1, 300]]), bw, hw, [3, 4], 1, 7)
    with pytest.raises(ValueError, match=r"hash_weight has shape \(14, 4\), expected"):
        kernels.hash_embedding(ids, bw, hw, [3, 4, 5], 1, 7)
    with pytest.raises(ValueError, match="integer tensor"):
        kernels.hash_embedding(ids.float(), bw, hw, [3, 4], 1, 7)


# ----------------------------------------------------------------------------------------------------------
# patch cross-attention (the PyTorch paths are segment operations, the references dense masks)


@pytest.mark.parametrize("name", ["patch_query_attention", "byte_query_attention"])
@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    B=st.integers(1, 3),
    T=st.integers(3, 40),
    max_len=st.integers(1, 12),
    k_rep=st.integers(1, 3),
    orphans=st.integers(0, 2),
)
def test_cross_attention_torch_path(name, seed, B, T, max_len, k_rep, orphans):
    patch_ids, P = patch_ids_case(seed, B, T, min(max_len, T - 1), orphans=orphans)
    H, Dh = 2, 6
    # the encoder's k_rep rows per patch query the bytes; the decoder's bytes query those rows
    q_rows, kv_rows = (P * k_rep, T) if name == "patch_query_attention" else (T, P * k_rep)
    q = leaf(B, H, q_rows, Dh, seed=seed)
    k, v = (leaf(B, H, kv_rows, Dh, seed=seed + i) for i in (1, 2))
    ref = getattr(patch_ops, name)(q, k, v, patch_ids, k_rep)
    out = getattr(kernels, name)(q, k, v, patch_ids, k_rep)
    assert_same(out, ref)
    assert_same(grads(out, (q, k, v)), grads(ref, (q, k, v)))


def test_attention_keeps_the_input_dtype():
    patch_ids, P = patch_ids_case(0, 1, 12, 4)
    q, k, v = (torch.randn(1, 2, n, 8, dtype=torch.bfloat16) for n in (2 * P, 12, 12))
    out = kernels.patch_query_attention(q, k, v, patch_ids, 2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(
        out, patch_ops.patch_query_attention(q, k, v, patch_ids, 2), atol=1e-2, rtol=1e-2
    )


def test_attention_bad_inputs():
    q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 10, 8)
    with pytest.raises(ValueError, match="not a multiple of k_rep=4"):
        kernels.patch_query_attention(q, k, k, torch.zeros(1, 10, dtype=torch.long), 4)
    with pytest.raises(ValueError, match=r"patch_ids has shape \(1, 9\)"):
        kernels.patch_query_attention(q, k, k, torch.zeros(1, 9, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="integer tensor"):
        kernels.byte_query_attention(k, q, q, torch.zeros(1, 10), 2)
    with pytest.raises(ValueError, match="k_rep must be >= 1"):
        kernels.byte_query_attention(k, q, q, torch.zeros(1, 10, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="of one shape"):
        kernels.byte_query_attention(k, q, q[..., :4], torch.zeros(1, 10, dtype=torch.long), 2)


# ----------------------------------------------------------------------------------------------------------
# pooling and entropy


@pytest.mark.parametrize("grad", [False, True])
def test_one_patch_operations_equal_the_references(grad):
    """Decoding pools and cross-attends one patch per row: a masked max and single SDPA calls; row 1 of
    the encoder side has no byte in the patch (id 1 is outside 0..P-1) and gives 0."""
    patch_ids = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]])
    h = leaf(2, 5, 6, seed=1).requires_grad_(grad)
    q, k, v = (leaf(2, 2, s, 4, seed=i).requires_grad_(grad) for i, s in ((2, 3), (3, 5), (4, 5)))
    pooled = kernels.patch_pool(h, patch_ids, 1, "max")
    assert_same(pooled, patch_ops.patch_pool(h, patch_ids, 1, "max"))
    assert not pooled[1].any()
    out = kernels.patch_query_attention(q, k, v, patch_ids, 3)
    assert_same(out, patch_ops.patch_query_attention(q, k, v, patch_ids, 3))
    assert not out[1].any()
    kv = leaf(2, 2, 3, 4, seed=5).requires_grad_(grad)
    byte_ids = torch.tensor([[0, 0, 0, 0, 0], [0, 1, 0, -1, 0]])
    out = kernels.byte_query_attention(k, kv, kv, byte_ids, 3)
    assert_same(out, patch_ops.byte_query_attention(k, kv, kv, byte_ids, 3))
    if grad:
        assert_same(grads(out, (k, kv)), grads(patch_ops.byte_query_attention(k, kv, kv, byte_ids, 3), (k, kv)))


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_patch_pool_torch_path_is_the_reference(mode):
    patch_ids, P = patch_ids_case(3, 2, 20, 6)
    h = torch.randn(2, 20, 5)
    assert torch.equal(kernels.patch_pool(h, patch_ids, P, mode), patch_ops.patch_pool(h, patch_ids, P, mode))
    with pytest.raises(ValueError, match="'max' or 'mean'"):
        kernels.patch_pool(h, patch_ids, P, "sum")


@pytest.mark.parametrize("chunk", [260 * 7, entropy_module.CHUNK_ELEMENTS])
def test_entropy_torch_path(monkeypatch, chunk):
    monkeypatch.setattr(entropy_module, "CHUNK_ELEMENTS", chunk)  # 7 rows per chunk: several chunks
    logits = leaf(2, 23, 260, seed=4, scale=4.0)
    ref = entropy_from_logits(logits)
    out = kernels.entropy_from_logits(logits)
    assert_same(out, ref)
    assert_same(grads(out, (logits,)), grads(ref, (logits,)))
    _, starts = kernels.entropy_patch_starts(logits, 3.0)
    assert torch.equal(starts, entropy_starts(ref.detach(), 3.0))
    assert starts[:, :2].all() and 0 < int(starts[:, 2:].sum()) < starts[:, 2:].numel()


def test_entropy_of_masked_logits_is_finite():
    logits = torch.randn(1, 3, 260)
    logits[..., :100] = float("-inf")
    expected = torch.distributions.Categorical(logits=logits).entropy()
    assert_same(kernels.entropy_from_logits(logits), expected)


def test_entropy_of_no_rows(monkeypatch):
    monkeypatch.setattr(entropy_module, "CHUNK_ELEMENTS", 64)
    logits = torch.zeros(2, 0, 260, requires_grad=True)
    h = kernels.entropy_from_logits(logits)  # was: torch.cat of an empty list
    assert h.shape == (2, 0) and h.dtype == torch.float32
    h.sum().backward()
    assert logits.grad.shape == (2, 0, 260)
    h, starts = kernels.entropy_patch_starts(torch.zeros(1, 0, 260), 1.0)
    assert h.shape == starts.shape == (1, 0)


def test_entropy_bad_inputs():
    with pytest.raises(ValueError, match="float tensor"):
        kernels.entropy_from_logits(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ConfigError, match="NaN"):
        kernels.entropy_patch_starts(torch.randn(1, 4, 260), float("nan"))
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        kernels.entropy_patch_starts(torch.randn(4, 260), 1.0)


# ----------------------------------------------------------------------------------------------------------
# dispatch


def test_reference_mode_runs_the_plain_code(monkeypatch):
    calls = []
    monkeypatch.setattr(patch_ops, "patch_pool", lambda *args: calls.append(args) or "plain")
    patch_ids, P = patch_ids_case(0, 1, 8, 3)
    assert kernels.patch_pool(torch.randn(1, 8, 4), patch_ids, P, impl="reference") == "plain"
    monkeypatch.setenv("BLT_KERNELS", "reference")
    assert kernels.patch_pool(torch.randn(1, 8, 4), patch_ids, P) == "plain"
    assert len(calls) == 2


def test_bad_mode_and_triton_on_the_cpu(monkeypatch):
    monkeypatch.setenv("BLT_KERNELS", "fast")
    with pytest.raises(ValueError, match="BLT_KERNELS='fast' is not a kernel mode"):
        kernels.entropy_from_logits(torch.randn(2, 260))
    monkeypatch.delenv("BLT_KERNELS")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        kernels.entropy_from_logits(torch.randn(2, 260), impl="triton")


# ----------------------------------------------------------------------------------------------------------
# the whole model: kernels switched on give the plain model's logits and gradients


@pytest.mark.parametrize("cross_all,entropy_patching", [(False, False), (True, False), (False, True)])
def test_blt_forward_unchanged_with_kernels(monkeypatch, cross_all, entropy_patching):
    model, ids, lengths = tiny_blt(cross_all)
    if entropy_patching:  # the bundled entropy model patches inside forward
        config = dataclasses.replace(
            model.config,
            entropy_model=EntropyModelConfig(dim=32, n_layers=1, n_heads=2, window=16, max_seq_len=64),
        )
        model, lengths = BLT(config), None
        config.patching.threshold = float(model.patcher.entropies(ids).median())
        assert model(ids).patch_lengths.shape[1] < ids.shape[1] - 5  # real patches, not one byte each
    assert_model_unchanged(monkeypatch, "torch", model, ids, lengths)


# ----------------------------------------------------------------------------------------------------------
# cost: no tensor anywhere in forward or backward grows like patches x bytes


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation allocates while active (views of inputs do not count)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("op", ["patch_query_attention", "byte_query_attention", "patch_pool"])
def test_no_dense_patches_by_bytes_tensor(op):
    T, H, Dh, k_rep = 2048, 1, 4, 2
    patch_ids, P = patch_ids_case(0, 1, T, 8)  # ~450 patches: a dense mask would hold ~1.8M entries
    byte_states, patch_rows = leaf(1, H, T, Dh, seed=1), leaf(1, H, P * k_rep, Dh, seed=2)
    with LargestTensor() as largest:
        if op == "patch_query_attention":
            out = kernels.patch_query_attention(patch_rows, byte_states, byte_states, patch_ids, k_rep)
        elif op == "byte_query_attention":
            out = kernels.byte_query_attention(byte_states, patch_rows, patch_rows, patch_ids, k_rep)
        else:
            out = kernels.patch_pool(byte_states[0], patch_ids, P, "max")
        out.square().sum().backward()
    assert P * T > 100 * T
    assert largest.numel <= 2 * k_rep * H * T * Dh  # linear in T (the dense mask alone: P * k_rep * T)


def test_entropy_temporaries_are_bounded_by_the_chunk(monkeypatch):
    monkeypatch.setattr(entropy_module, "CHUNK_ELEMENTS", 260 * 64)
    logits = torch.randn(4, 512, 260)
    with LargestTensor() as largest:
        kernels.entropy_from_logits(logits)
    assert largest.numel <= 260 * 64  # the whole input holds 2048 rows of 260
