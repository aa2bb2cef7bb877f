"""CUDA attention back-ends: their masks, built on the CPU, equal blt.attention.attention_mask; the flex paths
also run forward on the CPU (compiled by inductor) against SDPA."""

from __future__ import annotations

import pytest
import torch

from blt.attention import attention_mask, causal_attention
from blt.attention_cuda import flex_mask_mod, xformers_bias

SEGMENTS = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1]])
CASES = [
    (torch.tensor([[0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 4, 0]]),) * 2
    + (None, SEGMENTS),  # packed, block-diagonal
    (torch.arange(6), torch.arange(6), None, None),  # full causal
    (torch.arange(10, 12), torch.arange(5, 12), 4, None),  # a chunk continuing a windowed cache
    (
        torch.tensor([[0, 1, 2, 0, 1, 2]]).repeat(2, 1),
        torch.tensor([[0, 1, 2, 0, 1, 2]]).repeat(2, 1),
        2,
        torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1]]),
    ),  # packed segments
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_flex_mask_mod(case):
    q_pos, k_pos, window, seg = CASES[case]
    mask_mod = flex_mask_mod(q_pos, k_pos, window, seg, seg, 2)
    b = torch.arange(2)[:, None, None]
    qi = torch.arange(q_pos.shape[-1])[None, :, None]
    ki = torch.arange(k_pos.shape[-1])[None, None, :]
    expected = attention_mask(q_pos, k_pos, window, seg, seg).expand(2, 1, -1, -1)[:, 0]
    assert torch.equal(mask_mod(b, 0, qi, ki), expected)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_xformers_bias(case):
    q_pos, k_pos, window, seg = CASES[case]
    bias, flatten = xformers_bias(q_pos, k_pos, window, seg, seg, 2)
    expected = attention_mask(q_pos, k_pos, window, seg, seg).expand(2, 1, -1, -1)
    Tq, Tk = q_pos.shape[-1], k_pos.shape[-1]
    if flatten:  # one block-diagonal sequence of both rows
        dense = bias.materialize((2 * Tq, 2 * Tk)) == 0
        for row in range(2):
            block = dense[row * Tq : (row + 1) * Tq, row * Tk : (row + 1) * Tk]
            assert torch.equal(block, expected[row, 0])
        assert not dense[:Tq, Tk:].any()
    elif isinstance(bias, torch.Tensor):
        assert torch.equal(bias == 0, expected)
    else:
        assert torch.equal(bias.materialize((Tq, Tk)) == 0, expected[0, 0])


def test_flex_attention_refuses_dropout_it_cannot_apply():
    q = torch.randn(1, 2, 4, 8)
    pos = torch.arange(4)
    with pytest.raises(ValueError, match="flex attention backend has no attention dropout"):
        causal_attention(q, q, q, pos, pos, backend="flex", dropout=0.1)
    torch.testing.assert_close(  # without dropout it is the same attention as SDPA (on the CPU, SDPA itself)
        causal_attention(q, q, q, pos, pos, backend="flex"), causal_attention(q, q, q, pos, pos)
    )


@pytest.mark.parametrize("case", [0, 2], ids=["packed", "cache-chunk"])
def test_flex_causal_attention_forward_on_cpu(case):
    """The general flex path (a block mask from our mask_mod), compiled for the CPU, forward only: packed
    segments and a windowed chunk continuing a cache equal SDPA under attention_mask."""
    from blt.attention_cuda import flex_causal_attention

    q_pos, k_pos, window, seg = CASES[case]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, q_pos.shape[-1], 16, generator=g)
    k, v = (torch.randn(2, 2, k_pos.shape[-1], 16, generator=g) for _ in range(2))
    mask = attention_mask(q_pos, k_pos, window, seg, seg)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = flex_causal_attention(q, k, v, q_pos, k_pos, window, seg, seg)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
