"""Compiled decoding (``generate(..., compile=True)``): the modules' own steps under torch.compile.

The same greedy bytes as eager decoding, single and batched; one compilation per model and cache shape that
later decoders reuse (no recompiling for every prompt length or for the first step's memory layout); and
the compiled steps read the model's live weights (another model, weights changed in place). Inductor
compiles C++ on the CPU: the first test pays for it (tens of seconds), the others mostly reuse it.
"""

from __future__ import annotations

import pytest
import torch
from tiny_blt import random_ids, tiny_blt
from torch._dynamo.utils import counters

from blt.generate import IncrementalDecoder


@pytest.fixture(scope="module")
def model():
    return tiny_blt(seed=3)


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_compiled_greedy_equals_eager(model):
    prompt = random_ids(1, 40, seed=5)[0]
    eager = model.generate(prompt, 60, temperature=0.0)
    assert torch.equal(model.generate(prompt, 60, temperature=0.0, compile=True), eager)
    # rows of different lengths: the global transformer steps only the rows that close a patch, rows leave
    prompts = [random_ids(1, n, seed=n)[0] for n in (3, 17, 40)]
    eager = model.generate(prompts, 30, temperature=0.0, stop=[bytes([b]) for b in range(0, 256, 7)])
    compiled = model.generate(
        prompts, 30, temperature=0.0, stop=[bytes([b]) for b in range(0, 256, 7)], compile=True
    )
    assert [len(e) for e in eager] != [30] * 3  # some rows stopped early
    assert all(torch.equal(c, e) for c, e in zip(compiled, eager))


def test_compiled_steps_are_traced_once_and_reused(model):
    """One graph per compiled step (entropy model with local encoder, global transformer, decoder), made
    at the first step: a prefill leaves the state in the layout every step leaves it in."""
    torch._dynamo.reset()
    counters.clear()
    model.generate(random_ids(1, 30, seed=1)[0], 20, temperature=0.0, compile=True)
    assert graphs() == 3
    before = graphs()
    # other prompt lengths: in the same power-of-two bucket of cache sizes, and in larger ones (windowed
    # caches are rings of the window's size, their rotation tables cover every position)
    for n in (21, 26, 33, 70, 200):
        prompt = random_ids(1, n, seed=n)[0]
        eager = model.generate(prompt, 20, temperature=0.0)
        assert torch.equal(model.generate(prompt, 20, temperature=0.0, compile=True), eager)
    assert graphs() == before


def test_static_patching_compiles_once_and_keeps_the_push_limit():
    """Without an entropy model the patcher's own state keeps one layout too; a rounded-up cache still
    refuses pushes past ``max_new``."""
    model = tiny_blt(seed=4, scheme="static", patch_size=3)
    prompt = random_ids(1, 25, seed=3)[0]
    eager = model.generate(prompt, 20, temperature=0.0)
    torch._dynamo.reset()
    counters.clear()
    assert torch.equal(model.generate(prompt, 20, temperature=0.0, compile=True), eager)
    assert graphs() == 3
    state = IncrementalDecoder(model, prompt, max_new=3, compile=True)  # caches for 32 positions
    for t in range(3):
        state.push([int(eager[t])])
    with pytest.raises(ValueError, match="max_new=3"):
        state.push([int(eager[3])])


def test_global_cache_grows_without_recompiling(model):
    """On the CPU the global transformer's static cache grows: its compiled step reads about the slots that
    are filled (not the patches max_len allows), and one graph serves every size its buffers grow to."""
    prompt = random_ids(1, 10, seed=7)[0]
    eager = model.generate(prompt, 150, temperature=0.0)
    torch._dynamo.reset()
    counters.clear()
    state = IncrementalDecoder(model, prompt, max_new=150, compile=True)
    sizes = {state.global_.size}
    n = len(eager)  # EOS may have stopped it early
    for t in range(n - 1):
        state.push([int(eager[t])])
        sizes.add(state.global_.size)
        # about the patches held: an eighth more, rounded up to a block of 64 slots
        assert state.global_.size <= max(state.patches) * 9 // 8 + 64
    assert torch.equal(state.logits.argmax(-1), eager[n - 1 :])
    assert len(sizes) >= 3 and graphs() == 3  # it grew at least twice, traced once


def test_compiled_steps_read_the_live_weights():
    """Compiled code is shared by every model of the same shapes (dynamo guards on what it reads, not on
    which module), so it must not have the first model's weights baked in."""
    first, second = tiny_blt(seed=3), tiny_blt(seed=4)
    prompt = random_ids(1, 30, seed=2)[0]
    for model in (first, second):
        eager = model.generate(prompt, 30, temperature=0.0)
        assert torch.equal(model.generate(prompt, 30, temperature=0.0, compile=True), eager)
    with torch.no_grad():
        for p in first.parameters():
            p.mul_(1.5)
    eager = first.generate(prompt, 30, temperature=0.0)
    assert torch.equal(first.generate(prompt, 30, temperature=0.0, compile=True), eager)


def test_compile_needs_cached_static_decoding(model):
    prompt = random_ids(1, 5)[0]
    with pytest.raises(ValueError, match="compile=True needs static caches"):
        IncrementalDecoder(model, prompt, compile=True, static=False)
    with pytest.raises(
        ValueError, match="compile=True compiles cached decoding's steps; it needs use_cache=True"
    ):
        model.generate(prompt, 4, use_cache=False, compile=True)
