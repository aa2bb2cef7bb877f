"""blt.patcher: schemes, entropy model, calibration, streaming, parity with transformers, bad input."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from blt.checkpoint import CheckpointError, load_state, save_pretrained
from blt.checkpoint.hf import patcher_config_from_hf, patcher_name
from blt.config import BLTConfig, ConfigError, EntropyModelConfig, PatchingConfig, from_dict
from blt.patcher import (
    EntropyModel,
    StreamingPatcher,
    calibrate_threshold,
    entropy_from_logits,
    lengths_from_starts,
    patch_lengths,
)
from blt.patcher.calibrate import global_share, patch_size_for_global_share
from blt.patcher.schemes import SCHEMES, decide_starts, entropy_starts, relative_starts, spacelike
from blt.tokenizer import encode


def tiny_model(window=8, seed=0, scale=0.4):
    """A random entropy model whose weights are scaled up so entropies vary (not all near ln 260)."""
    torch.manual_seed(seed)
    model = EntropyModel(EntropyModelConfig(dim=32, n_layers=2, n_heads=4, window=window, max_seq_len=64))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, scale)
    return model.eval()


def reference_starts(ids, entropies, patching):
    """Plain-Python statement of every scheme's rule, one position at a time."""
    T = len(ids)
    spaces = [i < 4 or not (bytes([i - 4]).isalnum() or 0x80 <= i - 4 < 0xC0) for i in ids]
    starts = []
    for t in range(T):
        if t < 2:
            start = True
        elif patching.scheme == "entropy":
            start = entropies[t - 1] > patching.threshold
        elif patching.scheme == "relative":
            start = entropies[t - 1] - entropies[t - 2] > patching.relative_threshold
        elif patching.scheme == "combined":
            start = entropies[t - 1] > patching.threshold and entropies[t - 1] - entropies[t - 2] > patching.relative_threshold
        elif patching.scheme == "static":
            start = (t - 1) % patching.patch_size == 0
        elif patching.scheme == "space":
            start = spaces[t - 1] and not spaces[t - 2]
        else:
            start = True
        starts.append(start)
    if patching.max_patch_length:
        run = 0
        for t in range(T):
            run = 1 if starts[t] or run == patching.max_patch_length else run + 1
            starts[t] = run == 1
    return starts


def lengths_to_starts(lengths, T):
    starts = [False] * T
    pos = 0
    for n in lengths:
        if n > 0:
            starts[pos] = True
            pos += n
    return starts


# ---------------------------------------------------------------------------------------------------------
# schemes


@settings(max_examples=40, deadline=None)
@given(
    scheme=st.sampled_from(SCHEMES),
    batch=st.integers(1, 3),
    T=st.integers(1, 40),
    patch_size=st.integers(1, 6),
    max_len=st.one_of(st.none(), st.integers(1, 5)),
    threshold=st.floats(0, 3),
    rel=st.floats(-1, 1),
    seed=st.integers(0, 2**16),
)
def test_lengths_sum_to_T_and_follow_the_rules(scheme, batch, T, patch_size, max_len, threshold, rel, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 260, (batch, T), generator=g)
    entropies = torch.rand(batch, T, generator=g) * 3
    patching = PatchingConfig(scheme, threshold, rel, patch_size, max_len)
    lengths = patch_lengths(ids, patching, entropies)
    assert lengths.dtype == torch.long and lengths.shape[0] == batch
    assert lengths.sum(1).tolist() == [T] * batch
    for row, ent, lens in zip(ids.tolist(), entropies.tolist(), lengths.tolist()):
        nonzero = [n for n in lens if n > 0]
        assert lens[: len(nonzero)] == nonzero  # padding only on the right
        assert lens[0] == 1  # BOS is its own patch
        if max_len:
            assert max(nonzero) <= max_len
        assert lengths_to_starts(lens, T) == reference_starts(row, ent, patching)


@settings(max_examples=40, deadline=None)
@given(
    scheme=st.sampled_from(SCHEMES),
    T=st.integers(1, 30),
    patch_size=st.integers(1, 6),
    max_len=st.one_of(st.none(), st.integers(1, 5)),
    threshold=st.floats(0, 3),
    rel=st.floats(-1, 1),
    seed=st.integers(0, 2**16),
)
def test_decide_starts_covers_the_next_position_and_tail_windows(scheme, T, patch_size, max_len, threshold, rel, seed):
    """decide_starts gives the starts of all T positions and of position T, whatever the byte there; a prefix
    decides like the whole; and a two-column tail window at its offset, told the open patch's length,
    decides the next columns like the whole (the streaming patcher's way)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 260, (2, T + 1), generator=g)
    entropies = torch.rand(2, T + 1, generator=g) * 3
    patching = PatchingConfig(scheme, threshold, rel, patch_size, max_len)
    whole = decide_starts(ids, patching, entropies)  # [2, T + 2]
    starts = decide_starts(ids[:, :T], patching, entropies[:, :T])  # [2, T + 1]
    assert starts.tolist() == whole[:, : T + 1].tolist()
    for row, ent, decided in zip(ids.tolist(), entropies.tolist(), whole.tolist()):
        assert decided[: T + 1] == reference_starts(row, ent, patching)
    for t in range(2, T + 1):
        open_length = torch.tensor([t - max(i for i in range(t) if whole[b, i]) for b in range(2)])
        tail = decide_starts(
            ids[:, t - 2 : t + 1], patching, entropies[:, t - 2 : t + 1], t - 2, context=2, open_length=open_length
        )
        assert tail.tolist() == whole[:, t : t + 2].tolist()


def test_hand_computed_entropy_boundaries():
    ids = torch.tensor([[1, 70, 71, 72, 73, 74, 75]])
    ent = torch.tensor([[0.1, 2.0, 0.5, 3.0, 0.2, 0.1, 9.0]])
    # starts: 0, 1 always; t=2 (H1 = 2.0 > 1), t=4 (H3 = 3.0 > 1); H6 belongs to no byte of this input
    assert patch_lengths(ids, PatchingConfig("entropy", threshold=1.0), ent).tolist() == [[1, 1, 2, 3]]
    # relative, 0.4: t=2 (2.0-0.1), t=4 (3.0-0.5); t=6 (0.1-0.2) no
    assert patch_lengths(ids, PatchingConfig("relative", relative_threshold=0.4), ent).tolist() == [[1, 1, 2, 3]]
    # relative, -0.15: also t=6 (H5 - H4 = -0.1 > -0.15)
    assert patch_lengths(ids, PatchingConfig("relative", relative_threshold=-0.15), ent).tolist() == [[1, 1, 2, 2, 1]]
    # combined: H > 2.5 and rising by > 0: only t=4
    assert patch_lengths(ids, PatchingConfig("combined", threshold=2.5), ent).tolist() == [[1, 3, 3]]
    assert patch_lengths(ids, PatchingConfig("entropy", threshold=1.0, max_patch_length=2), ent).tolist() == [
        [1, 1, 2, 2, 1]
    ]


def test_hand_computed_static_space_byte():
    ids = torch.tensor([encode(b"hi, you  ok")])  # BOS + 11 bytes
    assert patch_lengths(ids, PatchingConfig("static", patch_size=4)).tolist() == [[1, 4, 4, 3]]
    assert patch_lengths(ids, PatchingConfig("static", patch_size=5, max_patch_length=2)).tolist() == [
        [1, 2, 2, 1, 2, 2, 1, 1]
    ]
    # "hi," | " you " | " ok": a patch starts after the first spacelike byte of a run
    assert patch_lengths(ids, PatchingConfig("space")).tolist() == [[1, 3, 5, 3]]
    assert patch_lengths(ids, PatchingConfig("byte")).tolist() == [[1] * 12]
    assert patch_lengths(torch.tensor([[1]]), PatchingConfig("space")).tolist() == [[1]]


def test_spacelike_bytes():
    ids = torch.tensor(encode("aZ09 .\n\u00e9", add_bos=True))
    # BOS, letters and digits no, space . newline yes, UTF-8 lead byte yes, continuation byte no
    assert spacelike(ids).tolist() == [True, False, False, False, False, True, True, True, True, False]


def test_rows_are_padded_with_zeros():
    ids = torch.tensor([encode("ab cd ef"), encode("abcdefgh")])
    lengths = patch_lengths(ids, PatchingConfig("space"))
    assert lengths.tolist() == [[1, 3, 3, 2], [1, 8, 0, 0]]


# ---------------------------------------------------------------------------------------------------------
# entropy model


def test_entropy_from_logits_matches_categorical():
    logits = torch.randn(2, 5, 260) * 4
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy_from_logits(logits), expected, atol=1e-5, rtol=1e-5)
    uniform = entropy_from_logits(torch.zeros(3, 260))
    torch.testing.assert_close(uniform, torch.full((3,), 5.560681), atol=1e-5, rtol=0)
    masked = torch.tensor([[0.0, 0.0, -float("inf"), -float("inf")]])
    torch.testing.assert_close(entropy_from_logits(masked), torch.tensor([0.693147]), atol=1e-6, rtol=0)


def test_entropies_do_not_depend_on_the_batch():
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    a = torch.randint(4, 260, (1, 13), generator=g)
    b = torch.randint(4, 260, (1, 29), generator=g)
    alone = model.entropies(a)
    padded = torch.cat([b, torch.nn.functional.pad(a, (0, 16))])  # a right-padded next to a longer row
    torch.testing.assert_close(model.entropies(padded)[1, :13], alone[0], atol=1e-5, rtol=1e-5)
    # packed in one row: segments keep the documents apart and restart positions
    packed = torch.cat([b, a], dim=1)
    segments = torch.tensor([[0] * 29 + [1] * 13])
    ent = model.entropies(packed, segments=segments)
    torch.testing.assert_close(ent[0, 29:], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent[0, :29], model.entropies(b)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [8, None])
def test_chunked_entropies_equal_one_pass(window):
    model = tiny_model(window=window)
    ids = torch.randint(0, 260, (2, 50), generator=torch.Generator().manual_seed(2))
    one_pass = model.entropies(ids, chunk_size=50)
    torch.testing.assert_close(model.entropies(ids, chunk_size=7), one_pass, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.entropies(ids), one_pass, atol=1e-5, rtol=1e-5)  # max_seq_len 64


def test_save_load_round_trip(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "em")
    assert json.loads((tmp_path / "em" / "config.json").read_text())["kind"] == "blt-entropy"
    loaded = EntropyModel.from_pretrained(tmp_path / "em")
    assert loaded.config == model.config and not loaded.training
    ids = torch.randint(0, 260, (2, 20), generator=torch.Generator().manual_seed(3))
    assert torch.equal(loaded.entropies(ids), model.entropies(ids))


def test_other_checkpoints_are_refused(tmp_path):
    model = tiny_model()
    save_pretrained(tmp_path / "blt", model, "blt", {"entropy_model": None})
    with pytest.raises(CheckpointError, match="blt: this BLT bundles no entropy model"):
        EntropyModel.from_pretrained(tmp_path / "blt")
    with pytest.raises(CheckpointError, match="does not exist"):
        EntropyModel.from_pretrained(tmp_path / "missing")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "blt", "patch_in_forward": False}))
    with pytest.raises(CheckpointError, match="no patcher_config"):
        EntropyModel.from_pretrained(tmp_path / "hf")
    hf = {"model_type": "blt", "patcher_config": {"hidden_size": 32, "num_attention_heads": 5}}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match="hf: bad patcher_config: .*divisible"):
        EntropyModel.from_pretrained(tmp_path / "hf")
    model.save_pretrained(tmp_path / "em")
    cfg = json.loads((tmp_path / "em" / "config.json").read_text())
    cfg["config"]["dim"] = 64
    (tmp_path / "em" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape"):
        EntropyModel.from_pretrained(tmp_path / "em")


def test_bad_input_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="id 260 .* outside"):
        model.entropies(torch.tensor([[1, 260]]))
    with pytest.raises(ValueError, match="id -1 .* outside"):
        patch_lengths(torch.tensor([[1, -1]]), PatchingConfig("byte"))
    with pytest.raises(ValueError, match="empty input"):
        model.entropies(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty input"):
        patch_lengths(torch.zeros(2, 0, dtype=torch.long), PatchingConfig("static"))
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        model.entropies(torch.tensor([1, 5, 6]))
    with pytest.raises(ValueError, match="integer"):
        patch_lengths(torch.ones(1, 3), PatchingConfig("byte"))
    with pytest.raises(ConfigError, match="unknown patching scheme 'bpe'"):
        patch_lengths(torch.ones(1, 3, dtype=torch.long), PatchingConfig(scheme="bpe"))
    with pytest.raises(ConfigError, match=r"scheme: expected one of \[.*Got value: bpe"):
        from_dict(PatchingConfig, {"scheme": "bpe"})
    with pytest.raises(ConfigError, match="NaN"):
        PatchingConfig(threshold=float("nan"))
    with pytest.raises(ConfigError, match="NaN"):
        entropy_starts(torch.zeros(1, 3), float("nan"))
    with pytest.raises(ConfigError, match="threshold must be >= 0"):
        patch_lengths(torch.ones(1, 3, dtype=torch.long), PatchingConfig(threshold=-1.0), torch.zeros(1, 3))
    relative_starts(torch.zeros(1, 3), -0.5)  # a negative relative threshold is meaningful
    with pytest.raises(ValueError, match="needs entropies"):
        patch_lengths(torch.ones(1, 3, dtype=torch.long), PatchingConfig("entropy"))
    with pytest.raises(ValueError, match="entropies shape"):
        patch_lengths(torch.ones(1, 3, dtype=torch.long), PatchingConfig("entropy"), torch.zeros(1, 4))
    with pytest.raises(ConfigError, match="vocab_size must be 260"):
        EntropyModel(EntropyModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=300))


def test_review_fixes_entropies_and_lengths(tmp_path):
    model = tiny_model()
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(5))
    # uint8/int16 ids are valid ids: same entropies as int64 instead of an embedding dtype crash
    assert torch.equal(model.entropies(ids.to(torch.uint8)), model.entropies(ids))
    assert torch.equal(model.entropies(ids.to(torch.int16)), model.entropies(ids))
    with pytest.raises(ValueError, match="chunk_size must be positive, got 0"):  # was: silently max_seq_len
        model.entropies(ids, chunk_size=0)
    with pytest.raises(ValueError, match="segments must be a tensor"):
        model.entropies(ids, segments=[[0] * 40] * 2)
    with pytest.raises(ValueError, match="non-empty"):
        lengths_from_starts(torch.zeros(1, 0, dtype=torch.bool))
    model.save_pretrained(tmp_path / "em")
    cfg = json.loads((tmp_path / "em" / "config.json").read_text())
    cfg["config"]["vocab_size"] = 300
    (tmp_path / "em" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="em: bad entropy model config: .*vocab_size must be 260"):
        EntropyModel.from_pretrained(tmp_path / "em")


# ---------------------------------------------------------------------------------------------------------
# calibration


def make_documents(n_docs, n_bytes, seed):
    g = torch.Generator().manual_seed(seed)
    words = ["the", "of", "and", "patch", "entropy", "byte", "latent", "transformer", "model", "a", "is",
             "in", "to", "compute", "global", "local", "text", "with", "which", "1984", "x-ray", "naïve"]
    docs = []
    for _ in range(n_docs):
        picks = torch.randint(0, len(words), (n_bytes,), generator=g).tolist()
        text = " ".join(words[i] for i in picks)
        docs.append(torch.tensor(encode(text.encode()[:n_bytes])))
    return docs


@pytest.mark.parametrize("target", [2.5, 4.0, 6.0])
def test_calibration_hits_target_on_held_out_sample(target):
    model = tiny_model(window=16, scale=0.3)
    calib, held_out = make_documents(8, 1500, seed=1), make_documents(8, 1500, seed=2)
    ent = [model.entropies(d[None])[0] for d in calib]
    result = calibrate_threshold(calib, ent, target_patch_size=target)
    assert abs(result.mean_patch_size - target) / target < 0.01
    patching = result.patching(PatchingConfig())
    patches = sum(int((patch_lengths(d[None], patching, model.entropies(d[None])) > 0).sum()) for d in held_out)
    held_mean = sum(d.numel() for d in held_out) / patches
    assert abs(held_mean - target) / target < 0.05


def test_calibration_other_schemes_and_errors():
    model = tiny_model(window=16, scale=0.3)
    docs = make_documents(3, 300, seed=3)
    ent = [model.entropies(d[None])[0] for d in docs]
    rel = calibrate_threshold(docs, ent, 4.0, patching=PatchingConfig("relative"))
    assert rel.field == "relative_threshold" and abs(rel.mean_patch_size - 4.0) < 0.1
    capped = calibrate_threshold(docs, ent, 4.0, patching=PatchingConfig(max_patch_length=6))
    assert abs(capped.mean_patch_size - 4.0) < 0.1 and "target 4.000" in str(capped)
    with pytest.raises(ValueError, match=">= 1"):
        calibrate_threshold(docs, ent, 0.5)
    with pytest.raises(ConfigError, match="only entropy schemes"):
        calibrate_threshold(docs, ent, 4.0, patching=PatchingConfig("static"))
    with pytest.raises(ValueError, match="same positive number"):
        calibrate_threshold([], [], 4.0)
    with pytest.raises(ValueError, match="1-D"):  # a [B, T] batch would silently become one document
        calibrate_threshold([torch.stack(docs[:2])], [torch.stack(ent[:2])], 4.0)
    with pytest.raises(ValueError, match="finite"):
        calibrate_threshold(docs, [e.clone().fill_(float("nan")) for e in ent], 4.0)
    with pytest.raises(ValueError, match="finite number >= 1"):
        calibrate_threshold(docs, ent, float("inf"))


# ---------------------------------------------------------------------------------------------------------
# streaming


def gap_threshold(entropies, q):
    """A threshold near quantile q that sits in a wide gap between entropy values, so float noise of
    1e-6 between two computations cannot flip a comparison."""
    values = entropies.flatten().sort().values
    i = int(q * (len(values) - 1))
    gaps = values[1:] - values[:-1]
    j = max(range(max(i - 5, 0), min(i + 5, len(gaps))), key=lambda k: gaps[k])
    assert gaps[j] > 1e-4
    return float(values[j] + values[j + 1]) / 2


@pytest.mark.parametrize(
    "scheme,max_len", [("entropy", None), ("entropy", 3), ("relative", None), ("combined", 4), ("static", 2),
                       ("space", 3), ("byte", None)]
)
def test_streaming_equals_batch(scheme, max_len):
    model = tiny_model(window=8)
    ids = torch.tensor([encode("the cat sat on the mat, didn't it? yes."), encode("Über-naïve 1234 ok ok ok!!!  ...   x7")])
    batch_ent = model.entropies(ids)
    rise = batch_ent[:, 1:] - batch_ent[:, :-1]
    patching = PatchingConfig(scheme, gap_threshold(batch_ent, 0.5), gap_threshold(rise, 0.6), 3, max_len)
    streaming = StreamingPatcher(patching, model, batch_size=2)
    streaming.feed(ids[:, :5])  # a prompt in one go, then one byte at a time
    for t in range(5, ids.shape[1]):
        predicted = streaming.next_starts()
        assert torch.equal(streaming.push(ids[:, t]), predicted)
    torch.testing.assert_close(streaming.entropies(), batch_ent, atol=1e-5, rtol=1e-5)
    assert torch.equal(streaming.patch_lengths(), patch_lengths(ids, patching, batch_ent))


def test_streaming_kv_cache_is_bounded_and_rows_can_leave():
    model = tiny_model(window=8)
    ids = torch.randint(4, 260, (3, 30), generator=torch.Generator().manual_seed(5))
    patching = PatchingConfig("entropy", threshold=gap_threshold(model.entropies(ids), 0.5))
    streaming = StreamingPatcher(patching, model, batch_size=3)
    for t in range(20):
        streaming.push(ids[:, t])
    assert streaming.cache.size == 8 and all(layer.k.shape[2] == 8 for layer in streaming.cache.layers)  # a ring of window slots
    assert sorted(streaming.cache.pos[0].tolist()) == list(range(12, 20))
    rows = torch.tensor([0, 2])
    streaming.select(rows)
    for t in range(20, 30):
        streaming.push(ids[rows, t])
    kept = ids[rows]
    assert torch.equal(streaming.patch_lengths(), patch_lengths(kept, patching, model.entropies(kept)))


def test_streaming_without_model_and_errors():
    streaming = StreamingPatcher(PatchingConfig("static", patch_size=2))
    assert [bool(streaming.push(i)) for i in encode("abcde")] == [True, True, False, True, False, True]
    with pytest.raises(ValueError, match="needs an entropy model"):
        StreamingPatcher(PatchingConfig("entropy"))
    with pytest.raises(ConfigError, match="unknown patching scheme"):
        StreamingPatcher(PatchingConfig(scheme="words"))
    with pytest.raises(ValueError, match="outside"):
        streaming.push(300)
    with pytest.raises(ValueError, match="empty input"):
        StreamingPatcher(PatchingConfig("byte")).patch_lengths()
    fresh = StreamingPatcher(PatchingConfig("byte"))
    with pytest.raises(ValueError, match="integer"):  # was: truncated to id 5
        fresh.push(5.7)
    with pytest.raises(ValueError, match="integer"):
        fresh.feed(torch.ones(1, 2))
    with pytest.raises(ValueError, match="feed takes ids"):
        fresh.feed([[5]])
    assert fresh.length == 0
    model = tiny_model()
    ids = torch.tensor([encode("abc")])
    with_model = StreamingPatcher(PatchingConfig("entropy"), model)
    with_model.feed(ids.to(torch.uint8))  # was: an embedding dtype error
    torch.testing.assert_close(with_model.entropies(), model.entropies(ids), atol=1e-5, rtol=1e-5)


def test_streaming_without_history_decides_the_same():
    """A decoder's patcher keeps no history: the same starts, bounded memory, and a clear error when asked."""
    model, patching = tiny_model(), PatchingConfig("entropy")
    ids = torch.tensor([encode("the cat sat on the mat")])
    kept, bare = StreamingPatcher(patching, model), StreamingPatcher(patching, model, history=False)
    for t in range(ids.shape[1]):
        assert torch.equal(bare.feed(ids[:, t : t + 1]), kept.feed(ids[:, t : t + 1]))
        assert torch.equal(bare.next_starts(), kept.next_starts())
    assert bare.start_history is None and len(kept.start_history) == ids.shape[1]
    for read in (bare.starts, bare.entropies, bare.patch_lengths):
        with pytest.raises(ValueError, match=r"keeps no history \(made with history=False\)"):
            read()
    kept.add_rows([bare])  # a joined batch keeps a history only if every part did
    with pytest.raises(ValueError, match="keeps no history"):
        kept.starts()


# ---------------------------------------------------------------------------------------------------------
# parity with transformers' BltPatcher


def hf_patcher(seed=0):
    from transformers.models.blt.configuration_blt import BltPatcherConfig
    from transformers.models.blt.modeling_blt import BltPatcher

    torch.manual_seed(seed)
    config = BltPatcherConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, sliding_window=8,
        max_position_embeddings=128, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    hf = BltPatcher(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.4)
    ours = EntropyModel(EntropyModelConfig(dim=32, n_layers=2, n_heads=4, ffn_dim=48, window=8, max_seq_len=128,
                                           rope_theta=10000.0))
    load_state(ours, hf.state_dict(), "BltPatcher", patcher_name)
    return hf, ours.eval()


def hf_starts(lengths, T):
    """Patch starts of BltPatcher's output: its padding holds zeros, negative lengths or a patch beyond
    the sequence, so read the starts off the running sum and keep those inside the sequence."""
    starts = torch.zeros(T, dtype=torch.bool)
    begin = torch.cumsum(lengths, 0) - lengths
    starts[begin[begin < T]] = True
    return starts


@pytest.mark.parametrize("max_len", [None, 3])
def test_entropy_patches_equal_transformers_blt_patcher(max_len):
    hf, ours = hf_patcher()
    ids = torch.randint(4, 260, (3, 40), generator=torch.Generator().manual_seed(6))
    ids[:, 0] = 1
    ent = ours.entropies(ids)
    for q in (0.2, 0.5, 0.8):
        threshold = gap_threshold(ent, q)
        with torch.no_grad():
            hf_ent, hf_lengths, _ = hf(ids, patch_size=4, threshold=threshold, max_patch_length=max_len)
        torch.testing.assert_close(ent, hf_ent, atol=1e-4, rtol=1e-4)
        lengths = patch_lengths(ids, PatchingConfig("entropy", threshold=threshold, max_patch_length=max_len), ent)
        for row in range(3):
            assert torch.equal(hf_starts(lengths[row], 40), hf_starts(hf_lengths[row], 40))


def test_hf_patcher_config_defaults_are_transformers_defaults():
    from transformers.models.blt.configuration_blt import BltPatcherConfig

    for given_ in ({"hidden_size": 96}, {"hidden_size": 96, "intermediate_size": 0}, {}):
        ours, theirs = patcher_config_from_hf(given_), BltPatcherConfig(**given_)
        assert ours["ffn_dim"] == theirs.intermediate_size  # was 256, not 2048, for {"hidden_size": 96}
        assert (ours["dim"], ours["window"], ours["max_seq_len"], ours["rope_theta"]) == (
            theirs.hidden_size, theirs.sliding_window, theirs.max_position_embeddings,
            theirs.rope_parameters["rope_theta"],
        )


def test_load_patcher_of_a_transformers_blt_directory(tmp_path):
    hf, _ = hf_patcher(seed=1)
    config = {
        "model_type": "blt",
        "patcher_config": {**hf.config.to_dict(), "model_type": "blt_patcher"},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    tensors = {f"model.patcher.{k}": v.contiguous() for k, v in hf.state_dict().items()}
    tensors["model.local_encoder.embed_tokens.weight"] = torch.zeros(260, 8)
    save_file(tensors, tmp_path / "model.safetensors")
    loaded = EntropyModel.from_pretrained(tmp_path)
    assert loaded.config.window == 8 and loaded.config.rope_theta == 10000.0 and loaded.config.ffn_dim == 48
    ids = torch.randint(0, 260, (2, 25), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        hf_ent = hf(ids)[0]
    torch.testing.assert_close(loaded.entropies(ids), hf_ent, atol=1e-4, rtol=1e-4)
    # sharded: the index names the shard of every tensor
    names = sorted(tensors)
    shards = {"model-1.safetensors": names[: len(names) // 2], "model-2.safetensors": names[len(names) // 2 :]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, tmp_path / shard)
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "model.safetensors").unlink()
    torch.testing.assert_close(EntropyModel.from_pretrained(tmp_path).entropies(ids), hf_ent, atol=1e-4, rtol=1e-4)
    (tmp_path / "model-2.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard model-2.safetensors .* is missing"):
        EntropyModel.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors.index.json").unlink()
    save_file({"model.local_encoder.embed_tokens.weight": torch.zeros(260, 8)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="no patcher tensors"):
        EntropyModel.from_pretrained(tmp_path)


def test_patch_size_for_a_share_of_global_compute():
    config = BLTConfig()
    size = patch_size_for_global_share(config, 0.5)
    assert abs(global_share(config, size) - 0.5) < 1e-6
    assert global_share(config, 2 * size) < 0.5 < global_share(config, size / 2)
    with pytest.raises(ValueError, match="out of reach"):
        patch_size_for_global_share(config, 0.999)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        patch_size_for_global_share(config, float("nan"))
