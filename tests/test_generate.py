"""Generation: cached incremental decoding equals recomputing the forward; sampling options; bad input."""

from __future__ import annotations

import pytest
import torch
from tiny_blt import random_ids, tiny_blt, tiny_config

from blt import layers
from blt.generate import IncrementalDecoder, sample
from blt.model import BLT
from blt.patcher import StreamingPatcher, lengths_from_starts
from blt.patcher.schemes import decide_starts
from blt.tokenizer import decode, encode


@pytest.fixture(scope="module")
def model():
    return tiny_blt(seed=3)


def test_incremental_logits_equal_forward(model):
    ids = random_ids(1, 60, seed=5)[0]
    full = model(ids.unsqueeze(0)).logits[0]
    for prompt_len in (1, 2, 9):
        state = IncrementalDecoder(model, ids[:prompt_len])
        torch.testing.assert_close(state.logits[0], full[prompt_len - 1], atol=1e-4, rtol=0)
        for t in range(prompt_len, 60):
            torch.testing.assert_close(state.push([int(ids[t])])[0], full[t], atol=1e-4, rtol=0)
    assert state.patches[0] < 60  # the global transformer ran once per patch, not per byte


@pytest.mark.parametrize(
    "patching",
    [{}, {"max_patch_length": 3}, {"scheme": "static", "patch_size": 3}, {"scheme": "space"}],
    ids=["entropy", "entropy-max3", "static", "space"],
)
def test_batched_steps_equal_forward(patching):
    """Rows of different lengths advance together, close patches at different steps and leave the batch."""
    model = tiny_blt(seed=4, **patching)
    ids = random_ids(3, 50, seed=6)
    full = model(ids).logits  # [3, 50, vocab]
    lens = [1, 7, 20]
    state = IncrementalDecoder(model, [ids[b, :n] for b, n in enumerate(lens)])
    rows = [0, 1, 2]
    for step in range(30):
        if step == 12:  # row 1 finishes: the others go on without it
            state.select([0, 2])
            rows = [0, 2]
        for j, b in enumerate(rows):
            t = lens[b] + step - 1
            torch.testing.assert_close(state.logits[j], full[b, t], atol=1e-4, rtol=0)
        state.push([int(ids[b, lens[b] + step]) for b in rows])
    for j, b in enumerate(rows):  # one global cache entry per closed patch of the bytes fed so far
        lengths, next_starts = model.compute_patches(ids[b : b + 1, : state.lengths[j]])
        assert state.patches[j] == int(lengths.gt(0).sum()) - 1 + int(next_starts[0]) < state.lengths[j]


@pytest.mark.parametrize(
    "patching",
    [{}, {"max_patch_length": 2}, {"scheme": "combined", "relative_threshold": -0.05}, {"scheme": "space"}],
    ids=["entropy", "entropy-max2", "combined", "space"],
)
def test_forward_streaming_and_decoding_share_one_decision(patching):
    """BLT.compute_patches, the streaming patcher and decoding all patch as decide_starts does."""
    model = tiny_blt(seed=6, **patching)
    ids = random_ids(2, 30, seed=9)
    starts = decide_starts(ids, model.config.patching, model.patcher.entropies(ids))  # [2, 31]
    lengths, next_starts = model.compute_patches(ids)
    assert torch.equal(lengths, lengths_from_starts(starts[:, :-1])) and torch.equal(
        next_starts, starts[:, -1]
    )
    streaming = StreamingPatcher(model.config.patching, model.patcher, batch_size=2)
    state = IncrementalDecoder(model, [ids[0, :1], ids[1, :1]])
    for t in range(30):
        assert torch.equal(streaming.push(ids[:, t]), starts[:, t])
        assert torch.equal(streaming.next_starts(), starts[:, t + 1])
        if t:
            state.push(ids[:, t].tolist())
        assert torch.equal(state.patcher.next_starts(), starts[:, t + 1])
        assert state.patches == starts[:, 1 : t + 2].sum(1).tolist()  # closed patches: starts after BOS


def test_push_checks_its_input(model):
    state = IncrementalDecoder(model, [torch.tensor([1, 80]), torch.tensor([1])])
    with pytest.raises(ValueError, match="one id per row"):
        state.push([70])
    with pytest.raises(ValueError, match="outside the byte vocabulary"):
        state.push([70, 400])
    with pytest.raises(ValueError, match="outside the byte vocabulary"):
        state.push(torch.tensor([70, -1]))
    with pytest.raises(ValueError, match="integers"):
        state.push([70, 80.5])
    with pytest.raises(ValueError, match="integer ids, got a tensor of dtype torch.float32"):
        state.push(torch.tensor([70.0, 80.0]))
    assert state.lengths == [2, 1]  # nothing was fed by the failed pushes
    with pytest.raises(ValueError, match="non-empty"):
        IncrementalDecoder(model, [torch.tensor([], dtype=torch.long)])


def test_greedy_cached_equals_recompute(model):
    for prompt in ("", "Hello", "The byte latent transformer"):
        cached = model.generate(prompt, 24, temperature=0.0)
        assert cached == model.generate(prompt, 24, temperature=0.0, use_cache=False)
        assert len(cached) > 15  # special ids the random model emits are not bytes


def test_greedy_batch_of_uneven_prompts(model):
    prompts = ["a", "Hello there", "x" * 30]
    cached = model.generate(prompts, 20, temperature=0.0)
    assert cached == model.generate(prompts, 20, temperature=0.0, use_cache=False)
    assert cached == [model.generate(p, 20, temperature=0.0) for p in prompts]  # rows do not interact
    rows = [torch.tensor(encode(p)) for p in prompts]
    assert [decode(ids) for ids in model.generate(rows, 20, temperature=0.0)] == cached


def test_tensor_prompt_is_used_as_given(model):
    ids = torch.tensor([[7, 8, 9, 10], [11, 12, 13, 14]])  # no BOS added
    out = model.generate(ids, 12, temperature=0.0)
    assert [len(o) for o in out] == [12, 12]
    assert torch.equal(out[0], model.generate(ids[0], 12, temperature=0.0))
    assert torch.equal(out[1], model.generate(ids[1:], 12, temperature=0.0, use_cache=False)[0])


def test_sampling_is_seeded_and_matches_recompute(model):
    a = model.generate(["hi", "there"], 16, temperature=0.9, top_k=50, top_p=0.9, seed=7)
    assert a == model.generate(
        ["hi", "there"], 16, temperature=0.9, top_k=50, top_p=0.9, seed=7, use_cache=False
    )
    assert a != model.generate(["hi", "there"], 16, temperature=0.9, top_k=50, top_p=0.9, seed=8)


def test_sample_filters():
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0, 1.0])
    assert sample(logits, 0.0) == 1
    g = torch.Generator().manual_seed(0)
    assert {sample(logits, 1.0, top_k=2, generator=g) for _ in range(200)} == {1, 2}
    # top_p: ids 1 and 2 cover ~0.47 + 0.43 of the mass; 0.5 keeps both, a tiny top_p keeps the best only
    assert {sample(logits, 1.0, top_p=0.5, generator=g) for _ in range(200)} == {1, 2}
    assert {sample(logits, 1.0, top_p=1e-6, generator=g) for _ in range(50)} == {1}


def test_stop_bytes(model):
    full = model.generate("Hello", 40, temperature=0.0)
    stop_at = full[10:11]
    first = full.index(stop_at)
    assert model.generate("Hello", 40, temperature=0.0, stop=stop_at) == full[: first + 1]
    assert model.generate("Hello", 0) == b""


def test_bad_generation_input(model):
    with pytest.raises(ValueError, match="max_new_bytes"):
        model.generate("a", -1)
    with pytest.raises(ValueError, match="temperature"):
        model.generate("a", 3, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate("a", 3, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        model.generate("a", 3, top_p=1.5)
    with pytest.raises(ValueError, match="outside the byte vocabulary"):
        model.generate(torch.tensor([1, 300]), 3)
    with pytest.raises(ValueError, match="exceeds the configured maximum"):
        model.generate("a", 600)
    with pytest.raises(ValueError, match="empty"):
        model.generate(torch.zeros(0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="prompt must be"):
        model.generate(123, 3)
    # these used to crash inside sampling, or (a float max_new_bytes) to run on to the maximum length
    with pytest.raises(ValueError, match="max_new_bytes must be an integer"):
        model.generate("a", 2.5)
    with pytest.raises(ValueError, match="temperature"):
        model.generate("a", 3, temperature=float("nan"))
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        model.generate("a", 3, top_k=2.5)
    with pytest.raises(ValueError, match="stop must be bytes, str, a list of them or None, got int"):
        model.generate("a", 3, stop=10)
    with pytest.raises(ValueError, match="each stop sequence must be bytes or str, got int: 10"):
        model.generate("a", 3, stop=[b"x", 10])


def test_stop_may_be_text(model):
    full = model.generate("Hello", 40, temperature=0.0)
    ascii_byte = next(chr(b) for b in full[1:] if b < 0x80)  # its UTF-8 encoding is that one byte
    for stop in ("é", "\n", ascii_byte):  # a str is the sequence of its UTF-8 bytes
        by_text = model.generate("Hello", 40, temperature=0.0, stop=stop)
        assert by_text == model.generate("Hello", 40, temperature=0.0, stop=stop.encode("utf-8"))
    assert len(by_text) < len(full)
    assert model.generate("Hello", 40, temperature=0.0, stop="") == full


def test_stop_sequences_end_a_row_once_complete(model):
    full = model.generate("Hello", 40, temperature=0.0)
    sequence = full[12:15]
    end = full.index(sequence) + len(sequence)
    assert model.generate("Hello", 40, temperature=0.0, stop=sequence) == full[:end]
    # its first byte alone stops at that byte's first appearance; a sequence never generated stops nothing
    first = full.index(sequence[:1]) + 1
    assert model.generate("Hello", 40, temperature=0.0, stop=sequence[:1]) == full[:first]
    absent = next(bytes([a, b]) for a in range(97, 123) for b in range(97, 123) if bytes([a, b]) not in full)
    assert model.generate("Hello", 40, temperature=0.0, stop=absent) == full
    # a list: the first sequence to complete ends the row; str and bytes mix, empty ones stop nothing
    assert model.generate("Hello", 40, temperature=0.0, stop=[absent.decode(), sequence, ""]) == full[:end]
    # only new bytes match: the prompt's last byte and the first new one do not complete a stop sequence
    spanning = b"o" + full[:1]
    assert spanning not in full and model.generate("Hello", 40, temperature=0.0, stop=spanning) == full


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_steps_with_gqa_two_hash_functions_windowed_global(monkeypatch, fuse):
    """The other code paths of a step: grouped-query heads, several hash functions, a ring-buffer global
    cache that wraps (rows close patches at different steps), no entropy model, and stacks too big to fuse
    (here: a fuse limit of 0)."""
    config = tiny_config(entropy=False, scheme="static", patch_size=2)
    config.encoder.hash_functions = 2
    config.encoder.n_heads = config.decoder.n_heads = 4
    config.encoder.n_kv_heads = config.decoder.n_kv_heads = 2
    config.global_transformer.window = 4  # shorter than the patch sequence: the ring wraps
    torch.manual_seed(0)
    model = BLT(config).eval()
    ids = random_ids(2, 40, seed=2)
    full = model(ids).logits
    if not fuse:
        monkeypatch.setattr(layers, "FUSE_LIMIT", 0)
    state = IncrementalDecoder(model, [ids[0, :3], ids[1, :10]])
    assert (state.encoder.kv.layers[0].block is not None) == fuse
    assert state.global_.ring and state.global_.size == 4
    for step in range(25):
        for b, n in enumerate((3, 10)):
            torch.testing.assert_close(state.logits[b], full[b, n + step - 1], atol=1e-4, rtol=0)
        state.push([int(ids[0, 3 + step]), int(ids[1, 10 + step])])
    assert min(state.patches) > 4  # past the window of the global ring


def test_uneven_prompts_equal_their_own_decoding():
    """Rows prefilled one by one and joined decode as they do alone, also after others leave."""
    model = tiny_blt(seed=5, max_patch_length=3)
    ids = random_ids(3, 48, seed=8)
    lens = [2, 17, 9]
    joined = IncrementalDecoder(model, [ids[b, :n] for b, n in enumerate(lens)])
    alone = [IncrementalDecoder(model, ids[b, :n]) for b, n in enumerate(lens)]
    rows = [0, 1, 2]
    for step in range(20):
        if step == 7:
            joined.select([2, 0])
            rows = [2, 0]
        for j, b in enumerate(rows):
            torch.testing.assert_close(joined.logits[j], alone[b].logits[0], atol=1e-5, rtol=0)
        joined.push([int(ids[b, lens[b] + step]) for b in rows])
        for b in rows:
            alone[b].push([int(ids[b, lens[b] + step])])
    assert joined.patches == [alone[b].patches[0] for b in rows]


def test_batch_rows_stop_at_different_steps(model):
    prompts = ["a", "Hello there", "x" * 30]
    free = [model.generate(p, 30, temperature=0.0) for p in prompts]
    stop = [bytes([f[5]]) for f in free[:2]]  # rows 0 and 1 stop early, at different steps
    expected = [model.generate(p, 30, temperature=0.0, stop=stop) for p in prompts]
    assert len({len(e) for e in expected}) > 1
    assert model.generate(prompts, 30, temperature=0.0, stop=stop) == expected
    sampled = model.generate(prompts, 30, temperature=0.8, stop=stop, seed=3)
    assert sampled == model.generate(prompts, 30, temperature=0.8, stop=stop, seed=3, use_cache=False)


def test_generation_runs_in_eval_mode_and_restores_training_mode():
    """Dropout must not make the cached and recomputing paths disagree for a model left in train mode."""
    model = tiny_blt(seed=4)
    for stack in (model.encoder.transformer, model.decoder.transformer, model.global_transformer.transformer):
        for layer in stack.layers:
            layer.dropout.p = 0.5
            layer.attn.dropout = 0.5
    model.train()
    cached = model.generate("hello", max_new_bytes=24, temperature=0.0)
    recomputed = model.generate("hello", max_new_bytes=24, temperature=0.0, use_cache=False)
    assert cached == recomputed and len(cached) > 0
    assert model.training and not model.patcher.training


def test_report_counts_each_rows_patches_and_flops(model):
    """report=True: per row, the patches that closed while decoding (global steps) and the FLOPs per byte."""
    prompts = [random_ids(1, n, seed=n)[0] for n in (5, 17, 30)]
    out, reports = model.generate(prompts, 24, temperature=0.0, report=True)
    plain = model.generate(prompts, 24, temperature=0.0)
    assert [o.tolist() for o in out] == [o.tolist() for o in plain]  # the report changes nothing
    for prompt, new, report in zip(prompts, out, reports):
        L, n = prompt.numel(), new.numel()
        full = torch.cat([prompt, new]).unsqueeze(0)
        lengths, _ = model.compute_patches(full)
        starts = torch.zeros(L + n, dtype=torch.bool)
        starts[lengths[0][lengths[0] > 0].cumsum(0)[:-1]] = True  # where each patch after the first starts
        # a push at position p closes the patch when p + 1 starts one, for p = L .. L + n - 2
        assert (report.prompt_ids, report.new_bytes) == (L, n)
        assert report.patches_closed == int(starts[L + 1 : L + n].sum())
        assert report.flops.positions == n  # positions L - 1 .. L + n - 2 gave the new bytes
        assert report.flops.share("global") > 0 and report.flops.share("entropy") > 0
        assert report.flops_per_byte == pytest.approx(report.flops.total / n)


def test_report_follows_the_patching(model):
    """A higher threshold closes fewer patches and spends fewer FLOPs per generated byte."""
    prompt = random_ids(1, 20, seed=9)[0]
    threshold = model.config.patching.threshold
    _, (low,) = model.generate(prompt, 40, temperature=0.0, report=True, patching={"threshold": threshold / 4})
    _, (high,) = model.generate(prompt, 40, temperature=0.0, report=True, patching={"threshold": threshold * 4})
    assert low.patches_closed > high.patches_closed
    assert low.flops_per_byte > high.flops_per_byte
    with pytest.raises(ValueError, match="use_cache=True"):
        model.generate(prompt, 4, report=True, use_cache=False)


@pytest.mark.parametrize("patching", [{}, {"scheme": "static", "patch_size": 3}], ids=["entropy", "static"])
def test_static_caches_decode_the_same(patching):
    """Static caches (fixed shapes at every step, for torch.compile / CUDA graphs) give the same logits."""
    model = tiny_blt(seed=4, **patching)
    prompts = [random_ids(1, n, seed=n)[0] for n in (3, 11, 40)]
    ids = random_ids(3, 30, seed=8)
    dynamic = IncrementalDecoder(model, prompts, max_new=30)
    static = IncrementalDecoder(model, prompts, max_new=30, static=True)
    assert static.global_.static and static.encoder.kv.static and static.patcher.cache.static
    torch.testing.assert_close(static.logits, dynamic.logits, atol=1e-5, rtol=0)
    for t in range(30):
        torch.testing.assert_close(static.push(ids[:, t]), dynamic.push(ids[:, t]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="max_new=30"):
        static.push(ids[:, 0])


@pytest.mark.parametrize("compile", [False, True], ids=["static", "compiled"])
def test_static_global_cache_after_rows_part(compile):
    """Rows that close their patches together take static global steps (compiled: its cache grows), which
    keep no host state; once the rows part, steps of some rows read the cache up to its bound, which must
    have kept up with the steps before."""
    model = tiny_blt(seed=4)
    prompt = random_ids(1, 9, seed=2)[0]
    dynamic = IncrementalDecoder(model, [prompt, prompt], max_new=60)
    static = IncrementalDecoder(model, [prompt, prompt], max_new=60, static=True, compile=compile)
    assert static.global_.grow == compile
    for t in random_ids(1, 30, seed=5)[0].tolist():  # the same bytes: the rows close together
        torch.testing.assert_close(static.push([t, t]), dynamic.push([t, t]), atol=1e-5, rtol=0)
    assert static.patches[0] == static.patches[1] > 8
    for t in random_ids(2, 25, seed=6).T.tolist():  # different bytes: the rows part
        torch.testing.assert_close(static.push(t), dynamic.push(t), atol=1e-5, rtol=0)
    assert static.patches[0] != static.patches[1]


def test_static_step_has_no_graph_break():
    """One decoding step of a stack with a static cache traces as one graph (torch.compile can take it)."""
    model = tiny_blt(seed=4)
    stack = model.decoder.transformer
    cache = stack.new_cache(2, 64, static=True)
    x = torch.randn(2, 5, stack.config.dim)
    with torch.no_grad():
        stack(x, cache=cache)  # a prefill fills the cache; then one position per row at a time
        step = torch.randn(2, 1, stack.config.dim)
        explained = torch._dynamo.explain(lambda h: stack(h, cache=cache))(step)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
