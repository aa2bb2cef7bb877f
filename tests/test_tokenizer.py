import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blt.tokenizer import (
    BOS_ID,
    BPE_ID,
    EOS_ID,
    OFFSET,
    PAD_ID,
    VOCAB_SIZE,
    check_ids,
    decode,
    decode_text,
    encode,
)

SETTINGS = settings(max_examples=50, deadline=None)


def test_vocabulary_layout_matches_released_blt():
    assert (PAD_ID, BOS_ID, EOS_ID, BPE_ID, OFFSET, VOCAB_SIZE) == (0, 1, 2, 3, 4, 260)
    assert encode(b"\x00\xff", add_bos=False) == [4, 259]
    assert encode("A", add_bos=True, add_eos=True) == [1, 65 + 4, 2]


@SETTINGS
@given(data=st.binary(max_size=300), add_bos=st.booleans(), add_eos=st.booleans())
def test_any_bytes_round_trip(data, add_bos, add_eos):
    ids = encode(data, add_bos=add_bos, add_eos=add_eos)
    assert len(ids) == len(data) + add_bos + add_eos
    if add_bos:
        assert ids[0] == BOS_ID
    if add_eos:
        assert ids[-1] == EOS_ID
    body = ids[add_bos : len(ids) - add_eos]
    assert body == [b + OFFSET for b in data]
    assert decode(ids) == data
    assert decode(torch.tensor(ids, dtype=torch.long)) == data


@SETTINGS
@given(text=st.text(max_size=200))
def test_text_round_trip(text):
    assert decode_text(encode(text, add_eos=True)) == text
    assert decode(encode(text)) == text.encode("utf-8")


def test_invalid_utf8_bytes_survive_and_are_replaced_only_as_text():
    data = b"ok \xff\xfe \xc3( end"
    ids = encode(data)
    assert decode(ids) == data  # bytes are exact
    assert decode_text(ids) == data.decode("utf-8", errors="replace")
    assert "\ufffd" in decode_text(ids)
    with pytest.raises(UnicodeDecodeError):
        decode_text(ids, errors="strict")


def test_decode_drops_special_ids():
    assert decode([BOS_ID, 4 + 104, PAD_ID, 4 + 105, BPE_ID, EOS_ID]) == b"hi"
    assert decode(torch.tensor([[1, 4 + 97], [4 + 98, 2]])) == b"ab"


def test_encode_rejects_other_types():
    with pytest.raises(TypeError, match="str or bytes"):
        encode([1, 2, 3])


@pytest.mark.parametrize("bad, position", [([5, 260], 1), ([-1], 0), ([4, 4, 1000], 2)])
def test_check_ids_names_the_bad_id(bad, position):
    with pytest.raises(ValueError, match=rf"id {bad[position]} at flat position {position}"):
        check_ids(bad)
    with pytest.raises(ValueError, match="outside the byte vocabulary"):
        check_ids(torch.tensor(bad))
    with pytest.raises(ValueError, match="outside the byte vocabulary"):
        decode(bad)


def test_check_ids_accepts_valid_arrays_and_custom_vocab():
    check_ids(np.arange(VOCAB_SIZE))
    check_ids(torch.arange(VOCAB_SIZE).reshape(2, -1))
    with pytest.raises(ValueError, match="0..9"):
        check_ids([10], vocab_size=10)


def test_non_integer_ids_are_a_clear_error():
    for ids in ([4.5], ["a"], torch.tensor([True]), torch.tensor([70.0]), np.array([70.0])):
        with pytest.raises(ValueError, match="ids must be integers"):
            decode(ids)
        with pytest.raises(ValueError, match="ids must be integers"):
            check_ids(ids)
    assert decode([]) == b"" and decode(np.array([[5, 6]])) == b"\x01\x02"
