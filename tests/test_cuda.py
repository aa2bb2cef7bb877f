"""CUDA tests: marked ``cuda``, skipped by conftest without a GPU; ``pytest -m cuda`` runs exactly these.

- The Triton kernels of ``blt.kernels`` compiled and run for real against the references of
  ``blt/patch_ops.py``, forward and backward, float32 and bfloat16 (a bf16 kernel against the float32
  reference on the same values: only its output rounding may differ), and at BLT-1B widths (hash tables
  whose offsets pass 2**31 elements; cross-attentions over 4096 bytes).
- ``blt.attention.causal_attention`` with ``backend="flex"`` and ``"xformers"`` against ``"sdpa"``:
  causal, windowed, packed segments with and without a window, a chunk continuing a cache with grouped-query
  heads; float32 and bfloat16; gradients.
- A tiny BLT on CUDA against the CPU (forward and backward), its attention back-ends against SDPA, and
  greedy generation giving the CPU's bytes.

bench/gpu.py runs this file on a GPU machine and reports its counts.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from kernels_triton_cases import patch_ids_case
from kernels_triton_cases import tiny_blt as blt_with_lengths
from tiny_blt import tiny_blt

from blt import kernels, patch_ops
from blt.attention import causal_attention
from blt.model import BLT
from blt.tokenizer import encode

pytestmark = [
    pytest.mark.cuda,
    # a Triton kernel that cannot take an input falls back with a RuntimeWarning: here that is a failure
    pytest.mark.filterwarnings(r"error:blt\.kernels\.:RuntimeWarning"),
]
CUDA = torch.device("cuda")
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]
# float32: reduction order and FMA contraction only; bfloat16: one rounding of the output (2**-9 relative)
TOL = {torch.float32: {"atol": 1e-4, "rtol": 1e-4}, torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}}
needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pair(shape, seed: int, dtype: torch.dtype, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """CUDA leaves: one in ``dtype`` (the kernel's) and one in float32 holding the same values (the
    reference's)."""
    x = (torch.randn(*shape, generator=gen(seed)) * scale).to(dtype)
    return x.to(CUDA).requires_grad_(), x.float().to(CUDA).requires_grad_()


def check(out, ref, ours_in, ref_in, dtype, seed: int = 0) -> None:
    """The kernel's output and input gradients (in ``dtype``) match the float32 reference's."""
    torch.testing.assert_close(out.float(), ref, **TOL[dtype])
    g = torch.randn(ref.shape, generator=gen(seed)).to(dtype)  # one gradient, rounded alike for both
    ours = torch.autograd.grad(out, ours_in, g.to(CUDA, out.dtype))
    theirs = torch.autograd.grad(ref, ref_in, g.float().to(CUDA))
    for a, b in zip(ours, theirs):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b, **TOL[dtype])


def cuda_ids(ids: torch.Tensor) -> torch.Tensor:
    return ids.to(CUDA)


def pairs(shapes, seed: int, dtype: torch.dtype):
    """``pair`` for each shape (seeds seed, seed + 1, ...): ((ours, reference), ...)."""
    return [pair(shape, seed + i, dtype) for i, shape in enumerate(shapes)]


# ----------------------------------------------------------------------------------------------------------
# Triton kernels against the references


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "sizes,n_functions,T",
    [([3, 4, 5, 6, 7, 8], 1, 300), ([4, 1, 4, 7], 2, 37)],
    ids=["blt-1b-ngrams", "two-functions"],
)
def test_hash_embedding(sizes, n_functions, T, dtype):
    B, D, V = 3, 200, 1009  # D: two column blocks, not a power of two
    ids = torch.randint(0, 260, (B, T), generator=gen(1))
    ids[0, :3] = 0
    ids = cuda_ids(ids)
    bw, bw_ref = pair((260, D), 2, dtype)
    hw, hw_ref = pair((n_functions * len(sizes) * V, D), 3, dtype)
    out = kernels.hash_embedding(ids, bw, hw, sizes, n_functions, V, impl="triton")
    ref = patch_ops.hash_embedding(ids, bw_ref, hw_ref, sizes, n_functions, V)
    assert out.dtype == dtype
    check(out, ref, (bw, hw), (bw_ref, hw_ref), dtype)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["max", "mean"])
def test_patch_pool(mode, dtype):
    B, T, D = 2, 300, 160
    patch_ids, P = patch_ids_case(0, B, T, max_len=40)  # patches longer than one 32-byte block
    # a half-integer grid, exact in bf16: ties inside patches (the max backward splits them evenly)
    h = torch.randint(-3, 3, (B, T, D), generator=gen(4)) + 0.5
    ours, ref_in = h.to(dtype).to(CUDA).requires_grad_(), h.to(CUDA).requires_grad_()
    out = kernels.patch_pool(ours, cuda_ids(patch_ids), P, mode, impl="triton")
    ref = patch_ops.patch_pool(ref_in, cuda_ids(patch_ids), P, mode)
    check(out, ref, (ours,), (ref_in,), dtype)


CROSS = pytest.mark.parametrize(
    "k_rep,max_len,Dh", [(2, 19, 64), (3, 5, 12)], ids=["blt-1b-heads", "k3-odd-head-dim"]
)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@CROSS
def test_patch_query_attention(k_rep, max_len, Dh, dtype):
    B, H, T = 2, 4, 150
    patch_ids, P = patch_ids_case(k_rep, B, T, max_len)
    (q, qr), (k, kr), (v, vr) = pairs([(B, H, P * k_rep, Dh), (B, H, T, Dh), (B, H, T, Dh)], 5, dtype)
    out = kernels.patch_query_attention(q, k, v, cuda_ids(patch_ids), k_rep, impl="triton")
    ref = patch_ops.patch_query_attention(qr, kr, vr, cuda_ids(patch_ids), k_rep)
    check(out, ref, (q, k, v), (qr, kr, vr), dtype)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@CROSS
def test_byte_query_attention(k_rep, max_len, Dh, dtype):
    B, H, T = 2, 4, 150
    patch_ids, P = patch_ids_case(10 + k_rep, B, T, max_len)
    (q, qr), (k, kr), (v, vr) = pairs(
        [(B, H, T, Dh), (B, H, P * k_rep, Dh), (B, H, P * k_rep, Dh)], 20, dtype
    )
    out = kernels.byte_query_attention(q, k, v, cuda_ids(patch_ids), k_rep, impl="triton")
    ref = patch_ops.byte_query_attention(qr, kr, vr, cuda_ids(patch_ids), k_rep)
    check(out, ref, (q, k, v), (qr, kr, vr), dtype)


def threshold_in_a_gap(h: torch.Tensor) -> float:
    """A threshold between two neighbouring entropies of the middle half that lie well apart, so that no
    rounding difference can move an entropy across it."""
    values = h.detach().flatten().sort().values
    n = values.numel()
    middle = values[n // 4 : 3 * n // 4]
    i = int((middle[1:] - middle[:-1]).argmax())
    assert float(middle[i + 1] - middle[i]) > 1e-4
    return float(middle[i] + middle[i + 1]) / 2


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
def test_entropy_and_patch_starts(dtype):
    logits, ref_in = pair((3, 200, 260), 11, dtype, scale=3.0)
    out = kernels.entropy_from_logits(logits, impl="triton")
    ref = patch_ops.entropy_from_logits(ref_in)
    assert out.dtype == torch.float32
    check(out, ref, (logits,), (ref_in,), dtype)
    threshold = threshold_in_a_gap(ref)
    h, starts = kernels.entropy_patch_starts(logits.detach(), threshold, impl="triton")
    torch.testing.assert_close(h, ref.detach(), **TOL[dtype])
    assert torch.equal(starts, patch_ops.entropy_starts(ref.detach(), threshold))
    assert 0 < int(starts[:, 2:].sum()) < starts[:, 2:].numel()


@needs_triton
def test_hash_embedding_with_the_full_blt_1b_tables():
    """6 tables x 500002 rows x 1024 columns: row offsets pass 2**31 elements (int64 address arithmetic).
    The reference is gathered at the rows used, so no second table is built."""
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs 40 GB of GPU memory (bf16 tables of 6 GB and their float32 gradient)")
    sizes, V, D, B, T = [3, 4, 5, 6, 7, 8], 500002, 1024, 1, 512
    g = torch.Generator(CUDA).manual_seed(0)
    bw = torch.randn(260, D, generator=g, device=CUDA, dtype=torch.bfloat16).requires_grad_()
    hw = torch.randn(len(sizes) * V, D, generator=g, device=CUDA, dtype=torch.bfloat16).requires_grad_()
    ids = cuda_ids(torch.randint(4, 260, (B, T), generator=gen(1)))
    rows = patch_ops.hash_ngram_indices(ids, sizes, 1, V)  # [B, T, 6]
    assert int(rows.max()) * D > 2**31
    out = kernels.hash_embedding(ids, bw, hw, sizes, 1, V, impl="triton")
    expected = bw.detach()[ids].float() + hw.detach()[rows].float().sum(-2)
    torch.testing.assert_close(out.float(), expected, **TOL[torch.bfloat16])
    grad = torch.randn(B, T, D, generator=gen(2)).to(CUDA, torch.bfloat16)
    grad_hw = torch.autograd.grad(out, hw, grad)[0]
    used, inverse = torch.unique(rows.flatten(), return_inverse=True)
    per_row = grad.float()[:, :, None].expand(B, T, len(sizes), D).reshape(-1, D)
    expected_grad = torch.zeros(used.numel(), D, device=CUDA).index_add_(0, inverse, per_row)
    torch.testing.assert_close(grad_hw[used].float(), expected_grad, **TOL[torch.bfloat16])
    assert int(grad_hw.count_nonzero(dim=1).gt(0).sum()) == used.numel()  # no other row touched


@needs_triton
def test_cross_attentions_at_blt_1b_widths():
    """16 heads of 64, k = 2, 4096 bytes in patches of 1..8, bf16: both cross-attentions, both ways."""
    B, H, T, Dh, k_rep = 2, 16, 4096, 64, 2
    patch_ids, P = patch_ids_case(7, B, T, max_len=8)
    patch_ids = cuda_ids(patch_ids)
    dtype = torch.bfloat16
    bytes_, rows = (B, H, T, Dh), (B, H, P * k_rep, Dh)
    (q, qr), (k, kr), (v, vr) = pairs([rows, bytes_, bytes_], 30, dtype)
    out = kernels.patch_query_attention(q, k, v, patch_ids, k_rep, impl="triton")
    ref = patch_ops.patch_query_attention(qr, kr, vr, patch_ids, k_rep)
    check(out, ref, (q, k, v), (qr, kr, vr), dtype)
    (q, qr), (k, kr), (v, vr) = pairs([bytes_, rows, rows], 40, dtype)
    out = kernels.byte_query_attention(q, k, v, patch_ids, k_rep, impl="triton")
    ref = patch_ops.byte_query_attention(qr, kr, vr, patch_ids, k_rep)
    check(out, ref, (q, k, v), (qr, kr, vr), dtype)


# ----------------------------------------------------------------------------------------------------------
# attention back-ends against SDPA, through blt.attention.causal_attention


def packed(lengths_per_row: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment ids and positions [B, T] of packed rows: positions restart at 0 in every segment."""
    segs, poss = [], []
    for lengths in lengths_per_row:
        segs.append(torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)]))
        poss.append(torch.cat([torch.arange(n) for n in lengths]))
    return torch.stack(segs).to(CUDA), torch.stack(poss).to(CUDA)


ATTENTION_CASES = ["causal", "window", "segments", "segments-window", "chunk-gqa"]


def attention_inputs(case: str, dtype: torch.dtype, grad: bool = False):
    """(q, k, v, q_pos, k_pos, window, segments) of one case; q [B, H, Tq, 64], k/v [B, Hkv, Tk, 64]."""
    B, H, Hkv, D, T, Tq, window, seg = 2, 4, 4, 64, 256, 256, None, None
    pos = torch.arange(T, device=CUDA)
    q_pos = k_pos = pos
    if case == "window":
        T = Tq = 192  # not a multiple of 128
        q_pos = k_pos = torch.arange(T, device=CUDA)
        window = 48
    elif case.startswith("segments"):
        seg, q_pos = packed([[100, 56, 100], [30, 226]])
        k_pos = q_pos
        window = 32 if case == "segments-window" else None
    elif (
        case == "chunk-gqa"
    ):  # the newest 64 queries of a windowed stack over 256 keys, 2 query heads per key head
        Hkv, Tq, window = 2, 64, 48
        q_pos = torch.arange(T - Tq, T, device=CUDA)
    g = gen(ATTENTION_CASES.index(case))
    q, k, v = (torch.randn(B, h, n, D, generator=g) for h, n in ((H, Tq), (Hkv, T), (Hkv, T)))
    q, k, v = (x.to(CUDA, dtype).requires_grad_(grad) for x in (q, k, v))
    return q, k, v, q_pos, k_pos, window, seg


def backend_available(backend: str) -> None:
    if backend == "xformers" and importlib.util.find_spec("xformers") is None:
        pytest.skip("xformers is not installed")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ATTENTION_CASES)
@pytest.mark.parametrize("backend", ["flex", "xformers"])
def test_attention_backend_equals_sdpa(backend, case, dtype):
    backend_available(backend)
    q, k, v, q_pos, k_pos, window, seg = attention_inputs(case, dtype)
    expected = causal_attention(q, k, v, q_pos, k_pos, window, seg, seg, backend="sdpa")
    out = causal_attention(q, k, v, q_pos, k_pos, window, seg, seg, backend=backend)
    assert out.shape == expected.shape == q.shape and out.dtype == dtype
    torch.testing.assert_close(out.float(), expected.float(), **TOL[dtype])


@pytest.mark.parametrize("case", ["segments-window", "chunk-gqa"])
@pytest.mark.parametrize("backend", ["flex", "xformers"])
def test_attention_backend_gradients_equal_sdpa(backend, case):
    backend_available(backend)
    q, k, v, q_pos, k_pos, window, seg = attention_inputs(case, torch.float32, grad=True)
    g = torch.randn(q.shape, generator=gen(9)).to(CUDA)
    grads = {}
    for name in ("sdpa", backend):
        out = causal_attention(q, k, v, q_pos, k_pos, window, seg, seg, backend=name)
        grads[name] = torch.autograd.grad(out, (q, k, v), g)
    for ours, expected in zip(grads[backend], grads["sdpa"]):
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-3)


# ----------------------------------------------------------------------------------------------------------
# a tiny BLT on CUDA


def logits_and_grads(model: BLT, ids: torch.Tensor, lengths: torch.Tensor):
    model.zero_grad()
    logits = model(ids, lengths).logits
    logits.square().sum().backward()  # a sum: gradients of order one, for the tolerances below
    return logits.detach().cpu(), {
        n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None
    }


def test_blt_forward_and_backward_on_cuda_equal_cpu(monkeypatch):
    monkeypatch.delenv("BLT_KERNELS", raising=False)  # auto: Triton kernels on CUDA, PyTorch paths on the CPU
    model, ids, lengths = blt_with_lengths(cross_all=True)
    cpu_logits, cpu_grads = logits_and_grads(model, ids, lengths)
    cuda_logits, cuda_grads = logits_and_grads(copy.deepcopy(model).to(CUDA), ids.to(CUDA), lengths.to(CUDA))
    torch.testing.assert_close(cuda_logits, cpu_logits, atol=1e-4, rtol=1e-4)
    assert cuda_grads.keys() == cpu_grads.keys() and cpu_grads
    for name, grad in cpu_grads.items():
        torch.testing.assert_close(cuda_grads[name], grad, atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize("backend", ["flex", "xformers"])
def test_blt_with_each_attention_backend_equals_sdpa(backend):
    backend_available(backend)
    model, ids, lengths = blt_with_lengths(cross_all=False)
    model = model.to(CUDA)
    other = BLT(model.config, backend).to(CUDA)
    other.load_state_dict(model.state_dict())
    ids, lengths = ids.to(CUDA), lengths.to(CUDA)
    with torch.no_grad():
        torch.testing.assert_close(
            other(ids, lengths).logits, model(ids, lengths).logits, atol=1e-4, rtol=1e-4
        )


def greedy_margins(model: BLT, prompt: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    """On the CPU, by one forward over prompt + output: the smallest gap between the two best logits where
    a byte was chosen, and the smallest distance of an entropy from the patching threshold. Above float32
    noise, CPU and CUDA cannot choose differently."""
    ids = torch.cat([prompt, out])[None]
    with torch.no_grad():
        logits = model(ids).logits[0, prompt.numel() - 1 : -1]  # the logits each output byte was chosen from
        top = logits.topk(2, dim=-1).values
        entropies = model.patcher.entropies(ids)
    threshold = model.config.patching.threshold
    return float((top[:, 0] - top[:, 1]).min()), float((entropies - threshold).abs().min())


def test_greedy_generation_on_cuda_equals_cpu():
    prompts = [torch.tensor(encode(b"The quick brown fox")), torch.tensor(encode(b"Hello"))]
    for seed in range(20):  # the first random model whose choices are all clear of float32 noise
        model = tiny_blt(seed)
        outs = model.generate(prompts, 40, temperature=0.0)
        margins = [greedy_margins(model, p, o) for p, o in zip(prompts, outs)]
        if all(gap > 1e-3 and entropy_gap > 1e-4 for gap, entropy_gap in margins):
            break
    else:
        pytest.fail("no random tiny BLT among 20 seeds decodes clear of float32 noise")
    cuda_outs = copy.deepcopy(model).to(CUDA).generate(prompts, 40, temperature=0.0)
    assert [o.tolist() for o in cuda_outs] == [o.tolist() for o in outs]
    single = copy.deepcopy(model).to(CUDA).generate(b"Hello", 40, temperature=0.0)
    assert single == model.generate(b"Hello", 40, temperature=0.0)
