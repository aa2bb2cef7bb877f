"""The tokenized baseline: byte-exact BPE round trips, the LM, save/load, bits per byte."""

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blt.baseline import (
    BOS_ID,
    EOS_ID,
    KIND,
    TOKENIZER_FILE,
    BaselineLM,
    BaselineTrainConfig,
    BPETokenizer,
    TokenizerConfig,
    train_tokenizer,
)
from blt.checkpoint import CheckpointError, save_pretrained
from blt.config import BaselineConfig, ConfigError, from_dict
from blt.lm import CausalLM

CORPUS = [
    "def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n"
    * 20,
    "In the beginning God created the heaven and the earth.  And the earth was without form.\n" * 20,
    "naïve café — 東京 ünïcödé\ttabs\r\nand CRLF\n" * 10,
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=400)


def tiny_model(tokenizer, **overrides):
    torch.manual_seed(0)
    config = BaselineConfig(**{"dim": 32, "n_layers": 1, "n_heads": 2, "vocab_size": 400, **overrides})
    return BaselineLM(config, tokenizer).eval()


# ----------------------------------------------------------------------------------------------------------
# tokenizer


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=300))
def test_any_bytes_round_trip(tokenizer, data):
    ids = tokenizer.encode(data, add_bos=False)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == data


@settings(max_examples=50, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text_round_trips(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text.encode("utf-8")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"  leading and trailing  ",
        b"a\x00b\r\n\tc",
        "x\u2581y \u2581\u2581".encode(),  # SentencePiece's own space symbol is not a space
        b"\xff\xfe invalid \xc3 utf-8 \xed\xa0\x80 surrogate \xf4\x90\x80\x80",
        "emoji 🙂 and 東京".encode(),
    ],
)
def test_tricky_bytes_round_trip(tokenizer, data):
    assert tokenizer.decode(tokenizer.encode(data)) == data


def test_invalid_utf8_becomes_byte_pieces(tokenizer):
    ids = tokenizer.encode(b"\xff", add_bos=False)
    assert ids == [tokenizer.byte_ids[0xFF]]
    assert tokenizer.sp.id_to_piece(ids[0]) == "<0xFF>"


def test_bpe_merges_frequent_text(tokenizer):
    assert tokenizer.vocab_size <= 400
    assert tokenizer.bytes_per_token(["    return a + b\n", "the heaven and the earth"]) > 1.5


def test_special_ids(tokenizer):
    ids = tokenizer.encode("hi", add_bos=True, add_eos=True)
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert tokenizer.decode(ids) == b"hi"
    assert tokenizer.decode(torch.tensor(ids)) == b"hi"


def test_decode_rejects_ids_out_of_range(tokenizer):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([5, tokenizer.vocab_size])


def test_training_is_deterministic(tokenizer):
    assert train_tokenizer(CORPUS, vocab_size=400).model_proto == tokenizer.model_proto


def test_training_bad_input():
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer([b"", ""], vocab_size=300)
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(CORPUS, vocab_size=200)
    with pytest.raises(ConfigError, match="sentence_bytes"):
        TokenizerConfig(sentence_bytes=4)


def test_long_lines_and_byte_budget_are_respected():
    config = TokenizerConfig(max_bytes=2000, sentence_bytes=64)
    tok = BPETokenizer.train(["x" * 5000 + "\n" + "word " * 2000], vocab_size=300, config=config)
    assert tok.decode(tok.encode("word word")) == b"word word"


def test_save_and_load_tokenizer(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "t.model")
    assert BPETokenizer.load(tmp_path / "t.model").encode("abc") == tokenizer.encode("abc")
    with pytest.raises(FileNotFoundError):
        BPETokenizer.load(tmp_path / "missing.model")


def test_a_crash_while_saving_the_tokenizer_keeps_the_previous_file(tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "t.model"
    tokenizer.save(path)
    before = path.read_bytes()

    def half(self, data):
        with open(self, "wb") as f:
            f.write(data[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", half)
    with pytest.raises(KeyboardInterrupt):
        tokenizer.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["t.model"]


# ----------------------------------------------------------------------------------------------------------
# language model


def test_baseline_is_a_causal_lm_over_the_tokenizer(tokenizer):
    model = tiny_model(tokenizer, vocab_size=4096)
    assert isinstance(model, CausalLM)
    assert model.config.vocab_size == tokenizer.vocab_size == model.lm_head.out_features
    ids = torch.tensor([model.encode("def add(a, b):")])
    assert model(ids).shape == (1, ids.shape[1], tokenizer.vocab_size)


def test_save_and_load_round_trip(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / TOKENIZER_FILE).is_file()
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["kind"] == KIND
    loaded = BaselineLM.from_pretrained(tmp_path / "ckpt")
    assert not loaded.training
    ids = torch.tensor([model.encode(b"class Point:\xff")])
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    assert loaded.decode(ids) == b"class Point:\xff"


def test_from_pretrained_refuses_another_kind(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    save_pretrained(tmp_path, model, "blt-entropy", {"dim": 32})
    with pytest.raises(CheckpointError, match="kind 'blt-entropy', not a BPE baseline"):
        BaselineLM.from_pretrained(tmp_path)


def test_from_pretrained_needs_the_tokenizer(tokenizer, tmp_path):
    tiny_model(tokenizer).save_pretrained(tmp_path)
    (tmp_path / TOKENIZER_FILE).unlink()
    with pytest.raises(CheckpointError, match=TOKENIZER_FILE):
        BaselineLM.from_pretrained(tmp_path)


def test_from_pretrained_names_a_mismatching_tensor(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["dim"] = 64
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="embed_tokens.weight"):
        BaselineLM.from_pretrained(tmp_path)


def test_uniform_model_costs_log2_vocab_bits_per_token(tokenizer):
    model = tiny_model(tokenizer, max_seq_len=8)  # short windows: long texts are scored in pieces
    torch.nn.init.zeros_(model.lm_head.weight)  # all logits 0: every token has probability 1 / V
    text = CORPUS[0][:300]
    n_predicted = len(model.encode(text)) - 1
    assert n_predicted > 8
    assert model.nll_bits(text) == pytest.approx(n_predicted * math.log2(tokenizer.vocab_size))
    assert model.nll_bits(text, add_eos=True) == pytest.approx(
        (n_predicted + 1) * math.log2(tokenizer.vocab_size)
    )
    assert model.bits_per_byte(text) == pytest.approx(model.nll_bits(text) / len(text.encode()))


def test_windowed_scoring_matches_one_pass_when_the_text_fits(tokenizer):
    model = tiny_model(tokenizer, max_seq_len=512)
    text = "the heaven and the earth"
    ids = torch.tensor([model.encode(text)])
    logits = model(ids[:, :-1])[0]
    bits = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item() / math.log(2)
    assert model.nll_bits(text) == pytest.approx(bits, rel=1e-5)


def test_bits_per_byte_of_empty_text_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="empty"):
        tiny_model(tokenizer).bits_per_byte(b"")


def test_train_config_section():
    config = from_dict(BaselineTrainConfig, {"dim": 64, "n_heads": 2, "tokenizer": {"max_bytes": 1000}})
    assert config.tokenizer.max_bytes == 1000
    with pytest.raises(ConfigError, match="baseline.tokenizer.max_byte"):
        from_dict(BaselineTrainConfig, {"tokenizer": {"max_byte": 1}}, prefix="baseline.")
