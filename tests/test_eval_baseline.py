"""Bits per byte of the BPE baseline: agrees with its own NLL, same bytes as byte models, windows."""

import random

import pytest
import torch

from blt.baseline import BaselineLM, train_tokenizer
from blt.config import BaselineConfig
from blt.eval.bpb import BaselineScorer, evaluate
from blt.eval.loading import load_model

WORDS = ("the", "of", "and", "to", "in", "is", "that", "it", "was", "for", "on", "are", "as", "with", "his")


def make_text(rng: random.Random, n_bytes: int) -> str:
    words = []
    while sum(map(len, words)) + len(words) < n_bytes:
        words.append(rng.choice(WORDS) + ("\n" if rng.random() < 0.1 else ""))
    return " ".join(words)


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(1)
    return train_tokenizer([make_text(rng, 3000) for _ in range(20)], vocab_size=300)


def tiny_baseline(tokenizer, window=None):
    torch.manual_seed(0)
    config = BaselineConfig(dim=32, n_layers=2, n_heads=2, window=window, max_seq_len=512, vocab_size=300)
    return BaselineLM(config, tokenizer).eval()


def documents():
    rng = random.Random(2)
    return [make_text(rng, n).encode() for n in (900, 40, 300)] + [
        b"\xff\xfe raw bytes \x80 and \xe2\x96\x81"
    ]


def test_baseline_bpb_matches_its_nll(tokenizer, tmp_path):
    model, docs = tiny_baseline(tokenizer), documents()
    model.save_pretrained(tmp_path / "bpe")
    scorer = BaselineScorer(load_model(tmp_path / "bpe").model)
    result = evaluate(scorer, docs)
    assert result.bits == pytest.approx(sum(model.nll_bits(d) for d in docs), rel=1e-5)
    assert result.n_bytes == sum(map(len, docs))
    n_tokens = sum(len(tokenizer.encode(d, add_bos=False)) for d in docs)
    assert result.unit == "token" and result.bytes_per_unit == pytest.approx(result.n_bytes / n_tokens)
    assert result.bytes_per_unit > 1.5  # BPE merges bytes into longer tokens
    assert result.flops["inference_flops_per_byte"] > 0


def test_baseline_windows_equal_one_pass(tokenizer):
    model, docs = tiny_baseline(tokenizer, window=3), documents()  # receptive field 2 * (3 - 1) + 1 = 5
    one_pass = evaluate(BaselineScorer(model, context=512), docs, flops=False)
    windowed = evaluate(BaselineScorer(model, context=12), docs, stride=6, batch_size=3, flops=False)
    assert windowed.bits == pytest.approx(one_pass.bits, rel=1e-5)
    assert windowed.bytes_per_unit == one_pass.bytes_per_unit
