"""FLOPs spent on one input: the per-byte figures for uniform patches, FlopCounterMode on real patchings,
counting from a first position, per-document sums in the scorer, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_blt import blt_config
from torch.utils.flop_counter import FlopCounterMode

from blt.config import BaselineConfig, BLTConfig, EntropyModelConfig, PatchingConfig, TransformerConfig
from blt.eval.bpb import BLTScorer, ByteLMScorer, document_scores
from blt.eval.flops import (
    attended_context,
    blt_flops_per_byte,
    blt_flops_spent,
    causal_keys,
    entropy_flops_per_byte,
    tokenized_flops_per_byte,
    tokenized_flops_spent,
)
from blt.lm import CausalLM
from blt.model import BLT
from blt.patcher import EntropyModel, patch_lengths


def small_blt_config(encoder_window=16, global_window=None, **patching) -> BLTConfig:
    return blt_config(
        cross_attn_k=2,
        encoder=dict(
            dim=32, n_layers=1, n_heads=2, window=encoder_window, max_seq_len=256, hash_ngram_sizes=[3, 4],
            hash_vocab=97,
        ),  # fmt: skip
        global_transformer=dict(dim=96, n_layers=2, n_heads=4, window=global_window, max_seq_len=256),
        decoder=dict(dim=32, n_layers=2, n_heads=2, window=16, max_seq_len=256),
        entropy_model=dict(dim=32, n_layers=1, n_heads=2, window=8),
        patching=patching,
    )


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), window=st.one_of(st.none(), st.integers(1, 250)), data=st.data())
def test_causal_keys_counts_the_visible_keys(n, window, data):
    first = data.draw(st.integers(0, n))
    visible = [t + 1 if window is None else min(t + 1, window) for t in range(first, n)]
    assert causal_keys(n, window, first) == sum(visible)
    assert causal_keys(n, window) == pytest.approx(n * attended_context(n, window))


# ----------------------------------------------------------------------------------------------------------
# uniform patches and tokens: exactly the per-byte figures times the bytes


@pytest.mark.parametrize("T, p, global_window", [(96, 4, None), (96, 6, None), (240, 3, 16), (64, 1, None)])
def test_uniform_patches_spend_the_per_byte_figures(T, p, global_window):
    config = small_blt_config(global_window=global_window)
    spent = blt_flops_spent(config, T, [p] * (T // p), entropy_model=config.entropy_model)
    per_byte = blt_flops_per_byte(config, p, context_bytes=T).parts
    entropy = entropy_flops_per_byte(config.entropy_model, context_bytes=T).parts
    expected = per_byte | {f"entropy.{k}": v for k, v in entropy.items()}
    assert spent.parts.keys() == expected.keys()
    for name, value in expected.items():
        assert spent.parts[name] == pytest.approx(value * T, rel=1e-12), name
    assert (spent.positions, spent.units) == (T, T // p)
    assert spent.share("entropy") == pytest.approx(sum(entropy.values()) * T, rel=1e-12)


def test_wide_global_model_spends_its_input_projection_per_patch():
    config = small_blt_config()  # encoder 32 x k 2 = 64 != global 96
    spent = blt_flops_spent(config, 60, [5] * 12)
    assert spent.parts["global.input_proj"] == 12 * 2 * 64 * 96
    assert "entropy.qkvo" not in spent.parts  # no entropy model given: patches came from elsewhere


@pytest.mark.parametrize("window", [None, 8])
def test_uniform_tokens_spend_the_per_byte_figures(window):
    config = TransformerConfig(dim=64, n_layers=2, n_heads=4, window=window)
    tokens, bytes_per_token = 50, 3.0
    spent = tokenized_flops_spent(config, torch.arange(tokens), vocab_size=1000)
    per_byte = tokenized_flops_per_byte(config, 1000, tokens * bytes_per_token, bytes_per_token)
    assert spent.total == pytest.approx(
        per_byte.inference_flops_per_byte * tokens * bytes_per_token, rel=1e-12
    )
    assert (spent.positions, spent.units) == (tokens, tokens)


def test_longer_patches_spend_less_only_in_the_global_and_per_patch_parts():
    config = small_blt_config()
    short = blt_flops_spent(config, 120, [2] * 60).parts
    long = blt_flops_spent(config, 120, [1, 9, 30, 80]).parts
    for name in (
        "encoder.qkvo",
        "encoder.attention",
        "decoder.ffn",
        "decoder.output",
        "decoder.cross.attention",
    ):
        assert short[name] == long[name]
    assert short["global.ffn"] == pytest.approx(15 * long["global.ffn"])
    assert long["encoder.cross.proj"] < short["encoder.cross.proj"]


def test_counting_from_first_splits_a_pass_at_a_patch_boundary():
    config = small_blt_config(encoder_window=None, global_window=3)
    lengths = [1, 4, 2, 7, 1, 1, 5, 3]  # 24 ids; patches 0..3 cover positions 0..13
    whole = blt_flops_spent(config, 24, lengths, entropy_model=config.entropy_model)
    head = blt_flops_spent(config, 14, lengths[:4], entropy_model=config.entropy_model)
    tail = blt_flops_spent(config, 24, lengths, first=14, entropy_model=config.entropy_model)
    assert (head + tail).parts == pytest.approx(whole.parts, rel=1e-12)
    assert (tail.positions, tail.units) == (10, 4)


# ----------------------------------------------------------------------------------------------------------
# agreement with torch's FlopCounterMode on real forward passes
#
# Torch's formula for SDPA counts every (query, key) score, masked or not; the one registered here counts
# the pairs the mask lets through (or the causal triangle), i.e. the keys actually attended, which is what
# the FLOPs spent count. FlopCounterMode sees matrix products only: the CPU path of the encoder's patch
# cross-attention (elementwise products and segment sums) and the softmax-like entropy count 0 there, as
# they count 0 (entropy) or a few percent of a small term (cross-attention) in the paper's accounting.


def _attended_sdpa(q, k, v, dropout_p=0.0, is_causal=False, *args, attn_mask=None, **kwargs):
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    if attn_mask is not None:
        allowed = attn_mask if attn_mask.dtype == torch.bool else attn_mask > float("-inf")
        pairs = int(allowed.expand(B, 1, Tq, Tk).sum()) * H
    elif is_causal:
        pairs = B * H * sum(min(i + 1 + Tk - Tq, Tk) for i in range(Tq))
    else:
        pairs = B * H * Tq * Tk
    return 2 * 2 * D * pairs


_attended_sdpa._get_raw = True  # FlopCounterMode passes the tensors themselves (the mask), not shapes


def measure(fn) -> float:
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attended_sdpa}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return float(counter.get_total_flops())


def test_attended_sdpa_counts_only_unmasked_pairs():
    q = torch.randn(1, 2, 8, 4)
    causal = measure(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True))
    assert causal == 2 * 2 * 4 * 2 * 36
    mask = torch.ones(8, 8, dtype=torch.bool).tril().triu(-2)  # a window of 3
    windowed = measure(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask))
    assert windowed == 2 * 2 * 4 * 2 * causal_keys(8, 3)


def _blt(**patching) -> BLT:
    torch.manual_seed(0)
    return BLT(small_blt_config(**patching)).eval()


def _ids(T: int, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(4, 260, (1, T), generator=torch.Generator().manual_seed(seed))
    ids[0, 0] = 1
    return ids


def _entropy_patching(model: BLT, ids: torch.Tensor) -> float:
    """A threshold at the median entropy of ``ids``, so patches vary in length."""
    values = model.patcher.entropies(ids).flatten().sort().values
    return float(values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


@pytest.mark.parametrize("T", [100, 200])
def test_blt_with_its_entropy_patching_agrees_with_flop_counter(T):
    model, ids = _blt(), _ids(T)
    model.config.patching.threshold = _entropy_patching(model, ids)
    lengths = model(ids).patch_lengths
    assert len(set(lengths[0].tolist())) >= 3  # really non-uniform
    spent = blt_flops_spent(model.config, ids, lengths, entropy_model=model.config.entropy_model)
    assert measure(lambda: model(ids)) == pytest.approx(spent.total, rel=0.10)
    # without the entropy model's share the counter and the count still agree
    lengths = torch.tensor(
        [patch_lengths(ids, model.config.patching, model.patcher.entropies(ids))[0].tolist()]
    )
    without = blt_flops_spent(model.config, ids, lengths)
    assert measure(lambda: model(ids, patch_lengths=lengths)) == pytest.approx(without.total, rel=0.10)


@pytest.mark.parametrize(
    "lengths",
    [[1, 1, 1, 1, 40, 3, 3, 50], [1] * 100, [1, 99], [1, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 3]],
    ids=["ragged", "bytes", "one", "static6"],
)
def test_blt_given_patches_agrees_with_flop_counter(lengths):
    model, ids = _blt(), _ids(sum(lengths), seed=1)
    given_lengths = torch.tensor([lengths])
    spent = blt_flops_spent(model.config, ids, given_lengths)
    measured = measure(lambda: model(ids, patch_lengths=given_lengths))
    assert measured == pytest.approx(spent.total, rel=0.10)


def test_patch_count_changes_the_count_as_much_as_the_counter():
    # what depends on the patching (the global model, per-patch terms) is counted alike on both sides
    model, ids = _blt(), _ids(120, seed=2)
    few, many = torch.tensor([[1, 60, 59]]), torch.tensor([[1] + [7] * 17])
    measured = measure(lambda: model(ids, patch_lengths=many)) - measure(
        lambda: model(ids, patch_lengths=few)
    )
    counted = blt_flops_spent(model.config, ids, many).total - blt_flops_spent(model.config, ids, few).total
    assert measured == pytest.approx(counted, rel=0.01)


@pytest.mark.parametrize("window", [None, 12])
def test_byte_lm_agrees_with_flop_counter(window):
    torch.manual_seed(0)
    config = EntropyModelConfig(dim=32, n_layers=2, n_heads=2, window=window, max_seq_len=128)
    model = CausalLM(config, config.vocab_size).eval()
    ids = _ids(90)
    assert measure(lambda: model(ids)) == pytest.approx(tokenized_flops_spent(config, ids).total, rel=1e-9)


def test_baseline_agrees_with_flop_counter():
    from blt.baseline import BaselineLM, BPETokenizer

    tokenizer = BPETokenizer.train(["the quick brown fox jumps over the lazy dog\n" * 80], vocab_size=300)
    torch.manual_seed(0)
    model = BaselineLM(BaselineConfig(dim=32, n_layers=2, n_heads=2, vocab_size=300), tokenizer).eval()
    ids = torch.tensor([model.encode(b"the lazy dog jumps over the quick brown fox, twice; " * 3)])
    spent = tokenized_flops_spent(model.config, ids)
    assert measure(lambda: model(ids)) == pytest.approx(spent.total, rel=1e-9)
    assert spent.units == ids.shape[1]


# ----------------------------------------------------------------------------------------------------------
# per document, through the scorer's windows


def test_windowed_scoring_of_a_sliding_window_model_spends_one_pass():
    torch.manual_seed(0)
    config = EntropyModelConfig(dim=32, n_layers=1, n_heads=2, window=8, max_seq_len=64)
    model = EntropyModel(config).eval()
    document = bytes(range(32, 127)) * 2  # 190 bytes: many windows of 32 ids
    (score,) = document_scores(
        ByteLMScorer(model, context=32), [document], stride=16, batch_size=3, flops=True
    )
    # every byte counted once, each attending the keys a single pass would give it (window 8 < overlap 16)
    one_pass = tokenized_flops_spent(config, len(document) + 1, first=1)
    assert (score.flops.positions, score.units) == (len(document), len(document))
    assert score.flops.parts == pytest.approx(one_pass.parts, rel=1e-12)
    assert score.flops_per_byte() == pytest.approx(one_pass.total / len(document))


def test_blt_scorer_counts_the_patches_it_used():
    model = _blt()
    document = b"static patches: four bytes each, the last one short"
    scorer = BLTScorer(model, context=256, patching=PatchingConfig(scheme="static", patch_size=4))
    (score,) = document_scores(scorer, [document], flops=True)
    ids = len(document) + 1
    lengths = [1] + [4] * (len(document) // 4) + [len(document) % 4]  # BOS patch, then fours
    expected = blt_flops_spent(scorer.config, ids, lengths, first=1)  # static: the patcher does not run
    assert score.flops.parts == pytest.approx(expected.parts, rel=1e-12)
    assert score.flops.units == score.units == len(lengths) - 1
    assert model.config.patching.scheme == "entropy"  # the scorer's patching is its own, not the model's
    # under the model's own (entropy) patching the entropy model's FLOPs are part of the bill
    (own,) = document_scores(BLTScorer(model, context=256), [document], flops=True)
    entropy = tokenized_flops_spent(model.config.entropy_model, ids, first=1).total
    assert own.flops.share("entropy") == pytest.approx(entropy, rel=1e-12)


# ----------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "ids, lengths, first, message",
    [
        (10, [3, 3], 0, "sum to the 10 ids, got 2 patches summing to 6"),
        (10, [3, -1, 8], 0, "must be positive"),
        (10, [5, 0, 5], 0, "must be positive"),
        (10, [], 0, "got 0 patches"),
        (10, torch.tensor([[5, 5], [5, 5]]), 0, "one sequence"),
        (torch.zeros(2, 10), [10], 0, "one sequence"),
        (10, [10], 10, "first must be in [0, 9]"),
        (0, [], 0, "at least one id"),
    ],
)
def test_bad_input_is_a_clear_error(ids, lengths, first, message):
    with pytest.raises(ValueError) as e:
        blt_flops_spent(small_blt_config(), ids, lengths, first)
    assert message in str(e.value)


def test_trailing_zero_lengths_are_padding():
    config = small_blt_config()
    padded = blt_flops_spent(config, 10, torch.tensor([[4, 6, 0, 0]]))
    assert padded.parts == blt_flops_spent(config, 10, [4, 6]).parts


def test_tokenized_needs_a_vocabulary():
    with pytest.raises(ValueError, match="vocab_size"):
        tokenized_flops_spent(TransformerConfig(), 5)
