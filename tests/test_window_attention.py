"""Windowed self-attention without a dense [T, T] mask: the chunked SDPA path and the flex block mask equal
the dense mask of blt.masks.attention_mask, forward and backward, with and without segments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_blt import tiny_blt

import blt.attention as attention
from blt.attention import causal_attention, chunked_window_attention, window_chunk
from blt.attention_cuda import window_block_mask
from blt.config import EntropyModelConfig
from blt.masks import attention_mask
from blt.patcher import EntropyModel
from blt.patcher.entropy_model import segment_positions


def qkv(B, H, Hkv, T, D=8, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda h: torch.randn(B, h, T, D, generator=g, dtype=dtype).to(device).requires_grad_()
    return make(H), make(Hkv), make(Hkv)


def documents(B, T, seed=1) -> torch.Tensor:
    """[B, T] segment ids: runs of random lengths (some shorter than a window, some longer)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, T, generator=g) < 0.03).long().cumsum(1)


def dense(q, k, v, window, segments=None, positions=None):
    """Today's path: one SDPA call with the [T, T] mask of attention_mask."""
    pos = torch.arange(q.shape[2], device=q.device) if positions is None else positions
    mask = attention_mask(pos, pos, window, segments, segments)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


def values_and_grads(fn, q, k, v):
    out = fn(q, k, v)
    g = torch.Generator().manual_seed(7)
    grad_out = torch.randn(out.shape, generator=g, dtype=out.dtype).to(out.device)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


def assert_close_all(got, expected, **tol):
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **tol)


# (B, H, Hkv, T, window, chunk): T a multiple of the chunk or not, shorter than one chunk, window longer
# than the chunk, window 1, GQA
SHAPES = [
    (2, 4, 2, 64, 8, 16),
    (2, 4, 4, 50, 7, 16),
    (1, 2, 1, 37, 16, 16),
    (3, 2, 2, 10, 5, 16),
    (2, 4, 1, 45, 20, 8),
    (1, 2, 2, 33, 1, 8),
]


@pytest.mark.parametrize("segmented", [False, True], ids=["plain", "segments"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-H{}-kv{}-T{}-w{}-c{}".format(*s))
def test_chunked_equals_dense(shape, segmented):
    B, H, Hkv, T, window, chunk = shape
    q, k, v = qkv(B, H, Hkv, T)
    seg = documents(B, T) if segmented else None
    got = values_and_grads(
        lambda q, k, v: chunked_window_attention(q, k, v, window, seg, chunk=chunk), q, k, v
    )
    expected = values_and_grads(lambda q, k, v: dense(q, k, v, window, seg), q, k, v)
    assert_close_all(got, expected, rtol=1e-10, atol=1e-10)


def test_chunked_float32_default_chunk():
    """The default chunk (the window, at least 256 queries) on a float32 input of 3.5 chunks."""
    window = 300
    T = 7 * window_chunk(window) // 2
    q, k, v = qkv(1, 2, 1, T, dtype=torch.float32)
    seg = documents(1, T, seed=3)
    got = values_and_grads(lambda q, k, v: chunked_window_attention(q, k, v, window, seg), q, k, v)
    expected = values_and_grads(lambda q, k, v: dense(q, k, v, window, seg), q, k, v)
    assert_close_all(got, expected, rtol=1e-4, atol=1e-5)


def test_causal_attention_chunks_long_consecutive_inputs(monkeypatch):
    """causal_attention takes the chunked path for consecutive inputs from CHUNKED_FROM chunks on, and the
    dense one below that or without the caller's word; the results agree."""
    calls = []
    chunked = attention.chunked_window_attention
    monkeypatch.setattr(
        attention, "chunked_window_attention", lambda *a, **kw: calls.append(1) or chunked(*a, **kw)
    )
    window = 8
    shortest = attention.CHUNKED_FROM * window_chunk(window)
    for T, expect_chunks in [(shortest - 1, False), (shortest + 5, True)]:
        B = 2
        q, k, v = qkv(B, 2, 1, T)
        seg = documents(B, T)
        pos = segment_positions(seg)  # [B, T], restarting at each document

        def run(consecutive, q, k, v, seg=seg, pos=pos):
            return causal_attention(q, k, v, pos, pos, window, seg, seg, consecutive=consecutive)

        calls.clear()
        got = values_and_grads(lambda q, k, v: run(True, q, k, v), q, k, v)
        assert bool(calls) == expect_chunks
        calls.clear()
        expected = values_and_grads(lambda q, k, v: run(False, q, k, v), q, k, v)
        assert not calls
        assert_close_all(got, expected, rtol=1e-10, atol=1e-10)


def dense_blocks(counts, indices, T, block):
    """[T, T] bool: the positions of the blocks a (counts, indices) pair of a BlockMask lists."""
    nb = counts.shape[-1]
    blocks = torch.zeros(nb, nb, dtype=torch.bool)
    for row in range(nb):
        blocks[row, indices[0, 0, row, : counts[0, 0, row]].long()] = True
    return blocks.repeat_interleave(block, 0).repeat_interleave(block, 1)[:T, :T]


@pytest.mark.parametrize("segmented", [False, True], ids=["plain", "segments"])
@pytest.mark.parametrize(
    "T,window,block", [(50, 7, 8), (64, 16, 16), (33, 40, 8), (100, 1, 8), (129, 32, 16)]
)
def test_window_block_mask(T, window, block, segmented):
    """Full blocks plus partial blocks under the mask_mod are exactly the dense mask; full blocks are
    never listed as partial too, and exist wherever the window spans two blocks."""
    B = 2
    seg = documents(B, T) if segmented else None
    bm = window_block_mask(T, window, "cpu", seg, block=block)
    partial = dense_blocks(bm.kv_num_blocks, bm.kv_indices, T, block)
    full = torch.zeros(T, T, dtype=torch.bool)
    if bm.full_kv_num_blocks is not None:
        full = dense_blocks(bm.full_kv_num_blocks, bm.full_kv_indices, T, block)
    b, i, j = torch.arange(B)[:, None, None], torch.arange(T)[None, :, None], torch.arange(T)[None, None, :]
    got = (full | (partial & bm.mask_mod(b, 0, i, j))).expand(B, T, T)
    pos = torch.arange(T)
    assert torch.equal(got, attention_mask(pos, pos, window, seg, seg).expand(B, 1, T, T)[:, 0])
    assert not (full & partial).any()
    assert bool(full.any()) == (not segmented and window >= 2 * block)
    if segmented:  # every block of the band is partial: those of the plain mask, full or not
        plain = window_block_mask(T, window, "cpu", None, block=block)
        plain_full = dense_blocks(plain.full_kv_num_blocks, plain.full_kv_indices, T, block)
        assert torch.equal(
            partial, dense_blocks(plain.kv_num_blocks, plain.kv_indices, T, block) | plain_full
        )


def test_window_block_mask_is_cached():
    assert window_block_mask(300, 64, "cpu") is window_block_mask(300, 64, "cpu")
    seg = documents(2, 300)
    one, two = window_block_mask(300, 64, "cpu", seg), window_block_mask(300, 64, "cpu", seg)
    assert one.kv_indices is two.kv_indices  # blocks built once per shape, the mask_mod per call


def force_dense(monkeypatch):
    monkeypatch.setattr(attention, "CHUNKED_FROM", 1 << 30)


def test_entropy_model_long_and_packed(monkeypatch):
    """The windowed entropy model over a long input, with and without packed documents: logits and weight
    gradients through the chunked path equal those through the dense mask."""
    torch.manual_seed(0)
    config = EntropyModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, window=16)
    model = EntropyModel(config)
    T = attention.CHUNKED_FROM * window_chunk(config.window) + 37
    ids = torch.randint(4, 260, (2, T), generator=torch.Generator().manual_seed(2))
    seg = documents(2, T, seed=4)

    def run():
        model.zero_grad()
        plain = model(ids)
        packed = model(ids, positions=segment_positions(seg), segments=seg, consecutive=True)
        (plain.square().mean() + packed.square().mean()).backward()
        entropies = model.entropies(ids, segments=seg)
        return plain, packed, entropies, *(p.grad.clone() for p in model.parameters())

    got = run()
    force_dense(monkeypatch)
    expected = run()
    assert_close_all(got, expected, rtol=1e-4, atol=1e-5)


def test_blt_long_input(monkeypatch):
    """The local encoder and decoder (window 8) and the entropy model (window 16) of the tiny BLT over a
    whole number of chunks: same logits and gradients."""
    model = tiny_blt(max_seq_len=2048)
    T = (attention.CHUNKED_FROM + 1) * window_chunk(8)
    ids = torch.randint(4, 260, (1, T), generator=torch.Generator().manual_seed(3))

    def run():
        model.zero_grad()
        logits = model(ids).logits
        logits.square().mean().backward()
        return logits, *(p.grad.clone() for p in model.parameters() if p.grad is not None)

    got = run()
    force_dense(monkeypatch)
    expected = run()
    assert_close_all(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("segmented", [False, True], ids=["plain", "segments"])
@pytest.mark.parametrize("T,window", [(1000, 512), (2048, 512), (777, 100)])
def test_flex_window_attention_cuda(T, window, segmented):
    """flex_attention with the shape's block mask equals SDPA with the dense mask, forward and backward."""
    q, k, v = qkv(2, 8, 2, T, D=64, dtype=torch.float32, device="cuda")
    seg = documents(2, T).cuda() if segmented else None
    pos = segment_positions(seg) if segmented else torch.arange(T, device="cuda")

    def flex(q, k, v):
        return causal_attention(q, k, v, pos, pos, window, seg, seg, backend="flex", consecutive=True)

    got = values_and_grads(flex, q, k, v)
    expected = values_and_grads(lambda q, k, v: dense(q, k, v, window, seg), q, k, v)
    assert_close_all(got, expected, rtol=2e-3, atol=2e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("segmented", [False, True], ids=["plain", "segments"])
def test_chunked_cuda(segmented):
    T, window = 5000, 512
    q, k, v = qkv(2, 8, 2, T, D=64, dtype=torch.float32, device="cuda")
    seg = documents(2, T).cuda() if segmented else None
    got = values_and_grads(lambda q, k, v: chunked_window_attention(q, k, v, window, seg), q, k, v)
    expected = values_and_grads(lambda q, k, v: dense(q, k, v, window, seg), q, k, v)
    assert_close_all(got, expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("segmented", [False, True], ids=["plain", "segments"])
def test_flex_window_attention_forward_on_cpu(segmented):
    """The flex path that CUDA runs, compiled for the CPU (inductor; forward only, flex_attention has no CPU
    backward): the shape's block mask, its full blocks and the segment mask_mod give SDPA's dense result.
    A window of 2.5 blocks over 4.7 blocks of queries leaves full, partial and skipped blocks, with GQA."""
    from blt.attention_cuda import flex_window_attention

    T, window = 600, 320
    q, k, v = (x.detach() for x in qkv(2, 4, 2, T, D=16, dtype=torch.float32))
    seg = documents(2, T) if segmented else None
    shape = window_block_mask(T, window, "cpu")  # the blocks the docstring promises, for this T and window
    touched = shape.kv_num_blocks + shape.full_kv_num_blocks  # [1, 1, 5] key blocks per query block
    assert shape.full_kv_num_blocks.sum() > 0 and touched[0, 0, -1] < touched.shape[-1]  # block 0 skipped
    torch.testing.assert_close(
        flex_window_attention(q, k, v, window, seg), dense(q, k, v, window, seg), rtol=1e-4, atol=1e-5
    )
