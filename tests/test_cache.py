"""The caches behind decoding: every stack continued through its ordinary forward with a cache equals the
same forward over the whole sequence (KV ring buffers, rows at their own positions, the encoder's and the
decoder's patch state)."""

from __future__ import annotations

import pytest
import torch
from tiny_blt import random_ids, tiny_blt, tiny_config

from blt import layers
from blt.config import TransformerConfig
from blt.lm import CausalLM
from blt.model import BLT
from blt.patch_ops import decoder_patch_ids, patch_ids_from_lengths


def tiny_lm(window=None, kv_heads=None, seed=0) -> CausalLM:
    torch.manual_seed(seed)
    config = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=kv_heads, ffn_dim=48, window=window)
    return CausalLM(config, vocab_size=260).eval()


# chunks fed one after another: a prompt, single steps, a chunk longer than a window of 4 (keys of the
# ring and of the chunk together), and more steps past it, so that rings wrap and fill
CHUNKS = [5, 1, 1, 7, 1, 1, 1, 1, 3, 1, 1]


def assert_chunks_continue(run, ids: torch.Tensor, full: torch.Tensor) -> int:
    """``run(chunk)`` over consecutive CHUNKS of ids [B, T] gives the same slices of ``full`` (the forward
    over all of ids); returns the positions fed."""
    start = 0
    for n in CHUNKS:
        chunk = slice(start, start + n)
        torch.testing.assert_close(run(ids[:, chunk]), full[:, chunk], atol=1e-5, rtol=1e-5)
        start += n
    return start


@pytest.mark.parametrize("window", [None, 4], ids=["full", "ring"])
@pytest.mark.parametrize("kv_heads", [None, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_cached_chunks_equal_one_forward(monkeypatch, window, kv_heads, fuse):
    if not fuse:
        monkeypatch.setattr(layers, "FUSE_LIMIT", 0)
    model = tiny_lm(window, kv_heads)
    ids = random_ids(2, sum(CHUNKS), seed=1)
    full = model(ids)
    cache = model.new_cache(batch_size=2)
    assert (cache.layers[0].block is not None) == fuse and cache.ring == (window is not None)
    with torch.no_grad():
        start = assert_chunks_continue(lambda chunk: model(chunk, cache=cache), ids, full)
    if window is not None:
        assert cache.size == window and cache.mask is None  # a full ring: every slot is seen, no mask
        assert sorted(cache.pos[0].tolist()) == list(range(start - window, start))


@pytest.mark.parametrize("window", [None, 4], ids=["full", "ring"])
def test_rows_at_their_own_positions(window):
    """Rows prefilled apart (3 and 11 ids) and joined step on at their own positions, also after one row
    wrote a position and stayed (its next forward rewrites that slot)."""
    model = tiny_lm(window, seed=2)
    ids = random_ids(2, 24, seed=3)
    caches = [model.new_cache(), model.new_cache()]
    lens = [3, 11]
    with torch.no_grad():
        for b, n in enumerate(lens):
            model(ids[b : b + 1, :n], cache=caches[b])
        cache = caches[0]
        cache.add_rows(caches[1:])
        assert not cache.aligned
        for step in range(8):
            x = torch.stack([ids[b, n + step] for b, n in enumerate(lens)]).unsqueeze(1)
            out = model(x, cache=cache)[:, 0]
            for b, n in enumerate(lens):
                torch.testing.assert_close(
                    out[b], model(ids[b : b + 1, : n + step + 1])[0, -1], atol=1e-5, rtol=1e-5
                )
        # row 0 writes a wrong id at its next position and stays; row 1 advances; then both go on
        positions = torch.tensor([[lens[0] + 8], [lens[1] + 8]])
        model(torch.tensor([[7], [int(ids[1, lens[1] + 8])]]), positions, cache)
        positions = torch.tensor([[lens[0] + 8], [lens[1] + 9]])
        out = model(
            torch.stack([ids[0, lens[0] + 8 : lens[0] + 9], ids[1, lens[1] + 9 : lens[1] + 10]]),
            positions,
            cache,
        )
        torch.testing.assert_close(out[0, 0], model(ids[:1, : lens[0] + 9])[0, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1, 0], model(ids[1:, : lens[1] + 10])[0, -1], atol=1e-5, rtol=1e-5)


def test_some_rows_step_alone():
    """``rows`` continues only those rows of a cache (the global transformer's step when some rows closed a
    patch): their outputs equal the forward over their own ids, the other rows' entries stay as they were,
    and every row then goes on exactly."""
    model = tiny_lm(seed=4)
    stack = model.transformer
    x = torch.randn(3, 9, 32, generator=torch.Generator().manual_seed(5))
    full = stack(x)
    cache = stack.new_cache(batch_size=3)
    with torch.no_grad():
        stack(x[:, :4], cache=cache)
        held = [(layer.k.clone(), layer.v.clone()) for layer in cache.layers]
        rows = torch.tensor([2, 0])
        out = stack(x[rows, 4:5], torch.tensor([[4], [4]]), cache, rows=rows)
        torch.testing.assert_close(out[:, 0], full[rows, 4], atol=1e-5, rtol=1e-5)
        for (k, v), layer in zip(held, cache.layers):  # row 1 untouched
            assert torch.equal(layer.k[1], k[1]) and torch.equal(layer.v[1], v[1])
        out = stack(x[1:2, 4:5], torch.tensor([[4]]), cache, rows=torch.tensor([1]))
        torch.testing.assert_close(out[:, 0], full[1:2, 4], atol=1e-5, rtol=1e-5)
        out = stack(x[:, 5:6], torch.tensor([[5]] * 3), cache, rows=torch.arange(3))
        torch.testing.assert_close(out[:, 0], full[:, 5], atol=1e-5, rtol=1e-5)
        out = stack(x[:1, 6:9], torch.tensor([[6, 7, 8]]), cache, rows=torch.tensor([0]))  # a chunk
        torch.testing.assert_close(out, full[:1, 6:9], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_query_attention_equals_sdpa(kv_heads, dtype):
    """The attention that compiled decoding steps write out (one query per row, some rows of the cache,
    grouped heads, an additive mask) gives SDPA's result on the rows gathered."""
    g = torch.Generator().manual_seed(6)
    q = torch.randn(2, 4, 1, 16, generator=g).to(dtype)
    keys, values = (torch.randn(5, kv_heads, 12, 16, generator=g).to(dtype) for _ in range(2))
    seen = torch.rand(2, 1, 1, 12, generator=g) < 0.6
    seen[..., 0] = True  # every query sees at least one key, as its own always is
    mask = torch.where(seen, 0.0, float("-inf")).to(dtype)
    rows = torch.tensor([3, 1])
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2

    def check(out, k, v):
        expected = torch.nn.functional.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=mask.float(), enable_gqa=kv_heads != 4
        )
        assert out.dtype == dtype and out.shape == (2, 4, 1, 16)
        torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=tolerance)

    check(layers.one_query_attention(q, keys, values, mask, rows), keys[rows], values[rows])
    check(layers.one_query_attention(q, keys[:2], values[:2], mask), keys[:2], values[:2])  # every row


def test_rotary_table_is_shared_and_follows_the_frequencies():
    """KV caches index one rotation table per stack, made once and longer on demand; moving the module
    (new frequencies) remakes it, and one made under inference mode serves caches made outside it."""
    rotary = layers.Rotary(8, 10000.0)
    with torch.inference_mode():
        first = rotary.table(6)
    assert not first.is_inference()
    torch.testing.assert_close(first, rotary(torch.arange(6)), atol=0, rtol=0)
    assert rotary.table(4).data_ptr() == first.data_ptr()  # a view of the same table
    longer = rotary.table(10)
    assert longer.shape[0] == 10 and torch.equal(longer[:6], first)
    rotary.to(torch.float64)
    torch.testing.assert_close(rotary.table(10), rotary(torch.arange(10)), atol=0, rtol=0)


def test_cache_errors():
    model = tiny_lm()
    cache = model.new_cache(batch_size=2)
    with pytest.raises(ValueError, match="holds 2 rows but the input has 1"):
        model(random_ids(1, 4), cache=cache)
    with pytest.raises(ValueError, match="no segment ids"):
        model(random_ids(2, 4), cache=cache, segments=torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize("hash_functions", [0, 1, 3])
def test_encoder_cache_equals_forward(hash_functions):
    """Byte states of ids fed in chunks, their hash n-grams reaching back into the cached ids."""
    config = tiny_config(entropy=False)
    config.encoder.hash_functions = hash_functions
    torch.manual_seed(4)
    encoder = BLT(config).eval().encoder
    ids = random_ids(2, sum(CHUNKS), seed=5)
    with torch.no_grad():
        full = encoder(ids)
        cache = encoder.new_cache(batch_size=2)
        assert_chunks_continue(lambda chunk: encoder(chunk, cache=cache), ids, full)


def test_encoder_open_patch_pools_like_the_forward():
    model = tiny_blt(seed=6)
    ids = random_ids(1, 20, seed=7)
    lengths = torch.tensor([[1, 4, 6, 9]])
    with torch.no_grad():
        h = model.encoder(ids)
        expected = model.encoder.patches(h, patch_ids_from_lengths(lengths, 20), 4)
        cache = model.encoder.new_cache()
        model.encoder(ids, cache=cache)
        for p, (start, end) in enumerate([(0, 1), (1, 5), (5, 11), (11, 20)]):
            cache.extend_open(h[:, start:end])
            torch.testing.assert_close(
                model.encoder.open_patches(cache)[:, 0], expected[:, p], atol=1e-5, rtol=1e-5
            )
            cache.clear_open([0])
            assert cache.open_lens == [0]


def test_decoder_cache_equals_forward():
    """Bytes decoded one at a time against the latest patch read into the cache, after a prefill."""
    model = tiny_blt(seed=8)
    decoder, T, P = model.decoder, 24, 6
    torch.manual_seed(9)
    h = torch.randn(2, T, decoder.config.dim)
    latent = torch.randn(2, P, model.config.global_transformer.dim)
    lengths = torch.tensor([[1, 3, 4, 5, 6, 5], [1, 1, 8, 2, 2, 10]])
    patch_ids = decoder_patch_ids(lengths, T)  # [2, T]
    with torch.no_grad():
        full = decoder(h, decoder.patch_rows(latent), patch_ids)
        cache, prompt = decoder.new_cache(batch_size=2), 5
        rows = decoder.patch_rows(latent[:, :P])
        torch.testing.assert_close(
            decoder(h[:, :prompt], rows, patch_ids[:, :prompt], cache=cache),
            full[:, :prompt],
            atol=1e-5,
            rtol=1e-5,
        )
        for t in range(prompt, T):
            read = patch_ids[:, t]  # [2] the patch each row's byte t reads
            decoder.read_patch(cache, latent[torch.arange(2), read].unsqueeze(1))
            torch.testing.assert_close(
                decoder(h[:, t : t + 1], cache=cache)[:, 0], full[:, t], atol=1e-5, rtol=1e-5
            )
        with pytest.raises(ValueError, match="needs patch rows, or a cache"):
            decoder(h[:, :1])
