"""BLT model: byte<->patch reference operations, forward, causality, bad input, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_blt import random_ids, tiny_blt, tiny_config

from blt import patch_ops
from blt.checkpoint import CheckpointError
from blt.config import ConfigError
from blt.model import BLT, decoder_patch_ids

# ----------------------------------------------------------------------------------------------------------
# patch_ops


def test_hash_indices_match_transformers_hash():
    from transformers.models.blt.modeling_blt import byte_group_hash_function

    ids = random_ids(3, 40, seed=1)
    sizes = [3, 4, 5, 6, 7, 8]
    rows = patch_ops.hash_ngram_indices(ids, sizes, 2, 1009)
    assert rows.shape == (3, 40, 12)
    table = 0
    for prime in patch_ops.HASH_PRIMES[:2]:
        for n in sizes:
            expected = byte_group_hash_function(ids, n, prime, 1009) + table * 1009
            assert torch.equal(rows[..., table], expected)
            table += 1


def test_hash_embedding_sums_rows():
    ids = random_ids(2, 9)
    byte_w, hash_w = torch.randn(260, 8), torch.randn(3 * 2 * 17, 8)
    out = patch_ops.hash_embedding(ids, byte_w, hash_w, [2, 3, 4], 2, 17)
    rows = patch_ops.hash_ngram_indices(ids, [2, 3, 4], 2, 17)
    expected = byte_w[ids] + hash_w[rows].sum(-2)
    torch.testing.assert_close(out, expected)
    # an n-gram only reaches back n - 1 ids: the last position is the same from a short tail
    tail = patch_ops.hash_embedding(ids[:, -4:], byte_w, hash_w, [2, 3, 4], 2, 17)
    torch.testing.assert_close(tail[:, -1], out[:, -1])


def test_patch_ids_from_lengths():
    lengths = torch.tensor([[1, 3, 2, 0], [1, 1, 1, 3]])
    assert patch_ops.patch_ids_from_lengths(lengths, 6).tolist() == [[0, 1, 1, 1, 2, 2], [0, 1, 2, 3, 3, 3]]
    # past the sum: the row's last non-empty patch, never a padding patch
    assert patch_ops.patch_ids_from_lengths(lengths[:, 1:], 6).tolist() == [
        [0, 0, 0, 1, 1, 1],
        [0, 1, 2, 2, 2, 2],
    ]
    assert patch_ops.patch_ids_from_lengths(torch.zeros(1, 0, dtype=torch.long), 2).tolist() == [[-1, -1]]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=6), min_size=1, max_size=3),
    st.sampled_from(["max", "mean"]),
)
def test_patch_pool_matches_loop(rows, mode):
    P = max(len(r) for r in rows)
    T = max(sum(r) for r in rows)
    lengths = torch.tensor([r + [0] * (P - len(r)) for r in rows])
    ids = patch_ops.patch_ids_from_lengths(lengths, T)
    ids = torch.where(torch.arange(T) < lengths.sum(-1, keepdim=True), ids, -1)  # bytes past a row's end
    h = torch.randn(len(rows), T, 4)
    out = patch_ops.patch_pool(h, ids, P + 1, mode)
    for b in range(len(rows)):
        for p in range(P + 1):
            members = h[b, ids[b] == p]
            if len(members) == 0:
                assert torch.equal(out[b, p], torch.zeros(4))
            else:
                expected = members.max(0).values if mode == "max" else members.mean(0)
                torch.testing.assert_close(out[b, p], expected)


def _dense_attention(q, k, v, allowed):
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    w = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
    return w @ v


def test_patch_cross_attentions_match_loops():
    torch.manual_seed(0)
    lengths = torch.tensor([[1, 2, 4, 0], [3, 1, 1, 2]])
    T, P, k = 7, 4, 2
    ids = patch_ops.patch_ids_from_lengths(lengths, T)
    q = torch.randn(2, 3, P * k, 8)
    kk, v = torch.randn(2, 3, T, 8), torch.randn(2, 3, T, 8)
    out = patch_ops.patch_query_attention(q, kk, v, ids, k)
    for b in range(2):
        for row in range(P * k):
            allowed = ids[b] == row // k
            if not allowed.any():
                assert torch.equal(out[b, :, row], torch.zeros(3, 8))
                continue
            expected = _dense_attention(
                q[b, :, row : row + 1], kk[b, :, allowed], v[b, :, allowed], torch.ones(1, dtype=torch.bool)
            )
            torch.testing.assert_close(out[b, :, row], expected[:, 0])
    qb = torch.randn(2, 3, T, 8)
    kp, vp = torch.randn(2, 3, P * k, 8), torch.randn(2, 3, P * k, 8)
    dec_ids = torch.tensor([[0, 0, 1, 2, 2, 2, 3], [0, 1, 1, 1, -1, 2, 3]])
    out = patch_ops.byte_query_attention(qb, kp, vp, dec_ids, k)
    for b in range(2):
        for t in range(T):
            p = int(dec_ids[b, t])
            if p < 0:
                assert torch.equal(out[b, :, t], torch.zeros(3, 8))
                continue
            sl = slice(p * k, p * k + k)
            expected = _dense_attention(
                qb[b, :, t : t + 1], kp[b, :, sl], vp[b, :, sl], torch.ones(1, dtype=torch.bool)
            )
            torch.testing.assert_close(out[b, :, t], expected[:, 0])


def test_decoder_patch_ids():
    lengths = torch.tensor([[1, 2, 3]])  # bytes: 0 | 1 2 | 3 4 5
    # byte t reads the patch closed at or before it: its own when it ends one, else the one before
    assert decoder_patch_ids(lengths, 6).tolist() == [[0, 0, 1, 1, 1, 1]]
    assert decoder_patch_ids(lengths, 6, torch.tensor([True])).tolist() == [[0, 0, 1, 1, 1, 2]]
    assert decoder_patch_ids(torch.tensor([[1]]), 1, torch.tensor([True])).tolist() == [[0]]


# ----------------------------------------------------------------------------------------------------------
# forward


def test_forward_shapes_and_patching():
    model = tiny_blt()
    ids = random_ids(2, 40, seed=3)
    out = model(ids)
    assert out.logits.shape == (2, 40, 260) and out.logits.dtype == torch.float32
    assert torch.equal(out.patch_lengths.sum(-1), torch.tensor([40, 40]))
    assert out.patch_lengths[:, 0].tolist() == [1, 1]
    assert 3 < out.patch_lengths.shape[1] < 40  # the median threshold gives patches of several lengths


def test_batch_rows_are_independent():
    model = tiny_blt()
    ids = random_ids(3, 30, seed=4)
    batched = model(ids)
    for b in range(3):
        single = model(ids[b : b + 1])
        torch.testing.assert_close(batched.logits[b], single.logits[0], atol=1e-5, rtol=1e-5)
    lengths = torch.tensor([[1, 4, 25, 0, 0], [1, 1, 1, 1, 26], [1, 9, 10, 5, 5]])
    batched = model(ids, patch_lengths=lengths)
    for b in range(3):
        row = lengths[b : b + 1, : int((lengths[b] > 0).sum())]
        torch.testing.assert_close(
            batched.logits[b], model(ids[b : b + 1], patch_lengths=row).logits[0], atol=1e-5, rtol=1e-5
        )


def test_causality_fixed_patches():
    model = tiny_blt()
    ids = random_ids(1, 24, seed=5)
    other = ids.clone()
    other[:, 12:] = random_ids(1, 12, seed=6)[:, :]
    lengths = torch.tensor([[1, 3, 4, 4, 6, 6]])  # the prefix 0..11 is patches 0-3 in both inputs
    a, b = model(ids, patch_lengths=lengths).logits, model(other, patch_lengths=lengths).logits
    torch.testing.assert_close(a[:, :11], b[:, :11])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_causality_entropy_patching(seed):
    model = tiny_blt(seed)
    ids = random_ids(1, 40, seed=10 + seed)
    full = model(ids).logits
    for cut in (1, 2, 7, 20, 39):
        prefix = model(ids[:, :cut]).logits  # a prefix's patches never depend on later bytes
        torch.testing.assert_close(prefix, full[:, :cut], atol=1e-5, rtol=1e-5)
        changed = ids.clone()
        changed[:, cut:] = random_ids(1, 40 - cut, seed=99)[:, : 40 - cut].clamp(min=4)
        torch.testing.assert_close(model(changed).logits[:, :cut], full[:, :cut], atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_trainable_part():
    model = tiny_blt().train()
    ids = random_ids(2, 20)
    logits = model(ids).logits
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 260), ids[:, 1:].reshape(-1)).backward()
    assert all(p.grad is None for p in model.patcher.parameters())  # frozen
    assert not model.patcher.training
    for name, p in model.named_parameters():
        if not name.startswith("patcher."):
            assert p.grad is not None, name


def test_no_entropy_model_uses_static_scheme():
    model = BLT(tiny_config(entropy=False, scheme="static", patch_size=3)).eval()
    out = model(random_ids(1, 11))
    assert out.patch_lengths.tolist() == [[1, 3, 3, 3, 1]]
    with pytest.raises(ConfigError, match="needs an entropy model"):
        BLT(tiny_config(entropy=False))(random_ids(1, 5))


# ----------------------------------------------------------------------------------------------------------
# bad input


def test_bad_ids():
    model = tiny_blt()
    with pytest.raises(ValueError, match="outside the byte vocabulary"):
        model(torch.tensor([[1, 5, 260]]))
    with pytest.raises(ValueError, match="outside the byte vocabulary"):
        model(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="empty input"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="integer"):
        model(torch.ones(1, 3))
    short = BLT(tiny_config(max_seq_len=16)).eval()
    with pytest.raises(ValueError, match="longer than the configured maximum of 16"):
        short(random_ids(1, 17))


def test_bad_patch_lengths():
    model = tiny_blt()
    ids = random_ids(2, 6)
    cases = [
        (torch.tensor([[1, 2, 2], [1, 5, 0]]), "row 0 sums to 5"),
        (torch.tensor([[1, 6, -1], [1, 5, 0]]), r"patch_lengths\[0, 2\] = -1 is negative"),
        (torch.tensor([[1, 5]]), "1 rows but ids has 2"),
        (torch.tensor([[1, 0, 5], [1, 5, 0]]), "empty patch before a non-empty one"),
        (torch.tensor([[1.0, 5.0], [1.0, 5.0]]), "integer"),
        (torch.zeros(2, 0, dtype=torch.long), "no patches"),
    ]
    for lengths, message in cases:
        with pytest.raises(ValueError, match=message):
            model(ids, patch_lengths=lengths)
    config = tiny_config()
    config.global_transformer.max_seq_len = 5
    with pytest.raises(ValueError, match="6 patches exceed global_transformer.max_seq_len"):
        BLT(config).eval()(ids, patch_lengths=torch.ones(2, 6, dtype=torch.long))


def test_bad_config():
    config = tiny_config()
    config.decoder.dim = 64
    with pytest.raises(ConfigError, match="decoder.dim"):
        BLT(config)


def test_unknown_backend_fails_when_the_model_is_built():
    with pytest.raises(ValueError, match="unknown attention backend 'flexx'"):
        BLT(tiny_config(), backend="flexx")


# ----------------------------------------------------------------------------------------------------------
# checkpoints


def test_save_load_round_trip(tmp_path):
    model = tiny_blt()
    ids = random_ids(2, 30)
    model.save_pretrained(tmp_path / "m")
    loaded = BLT.from_pretrained(tmp_path / "m")
    assert not loaded.training
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_checkpoint_errors(tmp_path):
    model = tiny_blt()
    model.save_pretrained(tmp_path / "m")
    other = BLT(tiny_config())
    other.config.encoder.dim = other.config.decoder.dim = 64  # tensors no longer fit
    from blt.checkpoint import save_pretrained
    from blt.config import to_dict

    save_pretrained(tmp_path / "bad", model, "blt", to_dict(other.config))
    with pytest.raises(CheckpointError, match="tensor 'encoder.embed_tokens.weight' has shape"):
        BLT.from_pretrained(tmp_path / "bad")
    with pytest.raises(CheckpointError, match="does not exist"):
        BLT.from_pretrained(tmp_path / "missing")
    model.patcher.save_pretrained(tmp_path / "entropy")
    with pytest.raises(CheckpointError, match="not a BLT"):
        BLT.from_pretrained(tmp_path / "entropy")
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        model.save_pretrained(tmp_path / "x", format="onnx")
    (tmp_path / "m" / "model.safetensors.index.json").write_text("[]")  # not an object
    with pytest.raises(CheckpointError, match="not a valid safetensors index"):
        BLT.from_pretrained(tmp_path / "m")


class Evil:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickled code ran')",))


def test_pickle_checkpoint_is_refused(tmp_path):
    model = tiny_blt()
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    torch.save({"x": Evil()}, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="not a plain state dict of tensors .* it was not executed") as info:
        BLT.from_pretrained(tmp_path / "m")
    assert "weights_only=False" not in str(info.value)  # never the unsafe advice torch's own message gives
    # a plain tensor pickle is fine (read with weights_only=True)
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    loaded = BLT.from_pretrained(tmp_path / "m")
    ids = random_ids(1, 10)
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
