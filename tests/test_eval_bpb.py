"""Bits per byte: closed-form toy models, windows, batching, standard error, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blt.config import TransformerConfig
from blt.eval.bpb import ByteLMScorer, evaluate, patch_starts, ratio_stderr, score_documents, windows
from blt.lm import CausalLM
from blt.tokenizer import OFFSET, VOCAB_SIZE


class FixedByteLM(torch.nn.Module):
    """Same next-byte distribution everywhere: ``logits`` over the 260 ids (special ids at -inf)."""

    def __init__(self, byte_logits: torch.Tensor, max_seq_len: int = 64):
        super().__init__()
        self.config = TransformerConfig(dim=8, n_layers=0, n_heads=1, max_seq_len=max_seq_len)
        self.logits = torch.full((VOCAB_SIZE,), -math.inf)
        self.logits[OFFSET:] = byte_logits

    def forward(self, ids):
        return self.logits.expand(*ids.shape, VOCAB_SIZE)


def uniform_scorer(context=None):
    return ByteLMScorer(FixedByteLM(torch.zeros(256)), context)


def test_uniform_model_scores_exactly_8_bits_per_byte():
    docs = [b"hello world", bytes(range(256)) * 3, b"x", b"\xff\xfe invalid utf-8 \x80"]
    result = evaluate(uniform_scorer(context=16), docs, stride=5, batch_size=3, flops=False)
    assert result.bits_per_byte == pytest.approx(8.0, abs=1e-9)
    assert result.stderr == pytest.approx(0.0, abs=1e-9)
    assert result.n_bytes == sum(len(d) for d in docs)
    assert result.n_documents == 4
    assert result.bytes_per_unit == 1.0 and result.unit == "byte"


def test_skewed_unigram_closed_form():
    # p('a') = 1/2, every other byte (1/2) / 255: 'a' costs 1 bit, any other byte 1 + log2(255) bits
    logits = torch.full((256,), math.log(0.5 / 255))
    logits[ord("a")] = math.log(0.5)
    scorer = ByteLMScorer(FixedByteLM(logits), context=4)
    docs = [b"aaab", b"aaaaaaaaaa", b"bcd"]
    result = evaluate(scorer, docs, flops=False)
    bits = [3 + (1 + math.log2(255)), 10.0, 3 * (1 + math.log2(255))]
    assert result.bits == pytest.approx(sum(bits), rel=1e-6)
    assert result.bits_per_byte == pytest.approx(sum(bits) / 17, rel=1e-6)
    assert result.stderr == pytest.approx(ratio_stderr(bits, [4, 10, 3]), rel=1e-6)


def test_ratio_stderr_by_hand():
    # R = 30 / 20 = 1.5; residuals 10 - 15 = -5 and 20 - 15 = 5; SE = sqrt(50 / 2) / 10 = 0.5
    assert ratio_stderr([10.0, 20.0], [10, 10]) == pytest.approx(0.5)
    assert ratio_stderr([2.0, 4.0, 8.0], [1, 2, 4]) == 0.0  # same rate everywhere
    assert math.isnan(ratio_stderr([1.0], [1]))


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 200), context=st.integers(2, 40), data=st.data())
def test_windows_score_every_target_once(n, context, data):
    stride = data.draw(st.integers(1, context - 1))
    scored = []
    for start, first, end in windows(n, context, stride):
        assert end - start <= context
        assert start <= first - 1  # the first scored target has at least one id of context
        scored += range(first, end)
    assert scored == list(range(1, n))


def test_windows_bad_stride():
    with pytest.raises(ValueError, match="stride"):
        windows(10, 8, 8)
    with pytest.raises(ValueError, match="stride"):
        windows(10, 8, 0)


def short_context_lm():
    torch.manual_seed(0)
    # receptive field of 2 layers with a window of 4: 2 * (4 - 1) + 1 = 7 ids
    config = TransformerConfig(dim=32, n_layers=2, n_heads=2, window=4, max_seq_len=512)
    return CausalLM(config, VOCAB_SIZE).eval()


def random_docs(seed=0, sizes=(300, 45, 1, 120)):
    g = torch.Generator().manual_seed(seed)
    return [bytes(torch.randint(0, 256, (n,), generator=g).tolist()) for n in sizes]


def test_windows_equal_one_pass_for_short_context_model():
    model, docs = short_context_lm(), random_docs()
    one_pass = evaluate(ByteLMScorer(model, context=512), docs, batch_size=1, flops=False)
    windowed = evaluate(ByteLMScorer(model, context=16), docs, stride=8, batch_size=4, flops=False)
    assert windowed.n_bytes == one_pass.n_bytes == 466
    assert windowed.bits == pytest.approx(one_pass.bits, rel=1e-5)
    assert 7.0 < one_pass.bits_per_byte < 10.0  # an untrained model is near uniform


def test_batching_does_not_change_scores():
    model, docs = short_context_lm(), random_docs(1, (50, 7, 33, 90, 2))
    a = score_documents(ByteLMScorer(model, context=32), docs, stride=16, batch_size=1)
    b = score_documents(ByteLMScorer(model, context=32), docs, stride=16, batch_size=5)
    assert a[1] == b[1] and a[2] == b[2]
    assert b[0] == pytest.approx(a[0], rel=1e-5)


def test_patch_starts():
    lengths = torch.tensor([[1, 3, 2, 0], [1, 1, 1, 3]])
    starts = patch_starts(lengths, 6)
    assert starts.tolist() == [
        [True, True, False, False, True, False],
        [True, True, True, True, False, False],
    ]


def test_empty_corpus_is_a_clear_error():
    with pytest.raises(ValueError, match="no bytes"):
        evaluate(uniform_scorer(), [], flops=False)
    with pytest.raises(ValueError, match="no bytes"):
        evaluate(uniform_scorer(), [b"", b""], flops=False)


def test_empty_documents_are_skipped():
    result = evaluate(uniform_scorer(), [b"", b"abc", b""], flops=False)
    assert result.n_documents == 1 and result.n_bytes == 3 and result.bits_per_byte == pytest.approx(8.0)


def test_context_longer_than_a_full_attention_model_is_refused():
    with pytest.raises(ValueError, match=r"context 65 is longer than the model's max_seq_len \(64 ids\)"):
        uniform_scorer(context=65)  # FixedByteLM's config has no window
    assert uniform_scorer().context == 64 and uniform_scorer(context=64).context == 64
    assert ByteLMScorer(short_context_lm(), context=4096).context == 4096  # windowed: any length
