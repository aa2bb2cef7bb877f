import http.server
import itertools
import json
import random
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from blt import data_sources
from blt.config import ConfigError
from blt.data import (
    DataConfig,
    PackedBatches,
    build_cache,
    cache_key,
    corpus_documents,
    in_validation,
    iter_documents,
    load_split,
)
from blt.data_sources import is_hub_name, stdlib_files
from blt.tokenizer import BOS_ID, EOS_ID, encode


def config_for(source, **kw) -> DataConfig:
    kw = {"seq_len": 16, "batch_size": 4, "val_fraction": 0.2, **kw}
    return DataConfig(source=str(source), **kw)


def stream_of(documents) -> list[int]:
    return [i for d in documents for i in encode(d, add_bos=True, add_eos=True)]


def all_batches(loader: PackedBatches) -> list[torch.Tensor]:
    return list(iter(loader))


# ----------------------------------------------------------------------------------------------------------
# packing


def test_batches_have_the_contract_shape(text_corpus):
    loader = PackedBatches(config_for(text_corpus))
    batch = next(iter(loader))
    assert batch.shape == (4, 17) and batch.dtype == torch.long
    assert int(batch.min()) >= 0 and int(batch.max()) < 260


def test_packing_keeps_every_byte_once_and_in_order(text_corpus):
    config = config_for(text_corpus, batch_size=3)
    loader = PackedBatches(config, shuffle=False, drop_last=False)
    windows = torch.cat(all_batches(loader)).tolist()
    # consecutive windows overlap by exactly one id: the stream is the first window + the rest of each next
    rebuilt = windows[0] + [i for w in windows[1:] for i in w[1:]]
    for a, b in itertools.pairwise(windows):
        assert a[-1] == b[0]
    expected = stream_of(iter_documents(config, "train"))
    n = config.seq_len
    assert len(expected) - n < len(rebuilt) <= len(expected)  # only a tail shorter than one window is dropped
    assert rebuilt == expected[: len(rebuilt)]
    # every id after the first is a target exactly once
    targets = [i for w in windows for i in w[1:]]
    assert targets == expected[1 : len(rebuilt)]


def test_documents_are_bos_bytes_eos_and_split_partitions_the_corpus(text_corpus):
    config = config_for(text_corpus, max_doc_bytes=None)
    files = sorted(p for p in text_corpus.rglob("*.txt"))
    documents = [p.read_bytes() for p in files]
    train, val = list(iter_documents(config, "train")), list(iter_documents(config, "val"))
    assert train == [d for d in documents if not in_validation(d, 0.2)]
    assert val == [d for d in documents if in_validation(d, 0.2)]
    assert 0 < len(val) < len(documents)
    ids = np.asarray(load_split(config, "train"))
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert ids.tolist() == stream_of(train)


def test_shuffled_epochs_visit_every_window_once(text_corpus):
    config = config_for(text_corpus, batch_size=2)
    ordered = PackedBatches(config, shuffle=False)
    loader = PackedBatches(config)
    first, second = all_batches(loader), all_batches(loader)
    assert len(first) == len(second) == len(loader) == ordered.windows_per_rank // 2
    everything = sorted(tuple(w.tolist()) for b in all_batches(ordered) for w in b)
    for epoch in (first, second):
        seen = sorted(tuple(w.tolist()) for b in epoch for w in b)
        assert len(set(seen)) == len(seen) and set(seen) <= set(everything)
    assert not all(torch.equal(a, b) for a, b in zip(first, second))  # a new permutation each epoch
    again = PackedBatches(config)
    assert all(torch.equal(a, b) for a, b in zip(first, all_batches(again)))  # seeded: reproducible
    other = PackedBatches(config_for(text_corpus, batch_size=2, seed=1))
    assert not all(torch.equal(a, b) for a, b in zip(first, all_batches(other)))


def test_validation_keeps_order_and_a_partial_last_batch(text_corpus):
    config = config_for(text_corpus, batch_size=5)
    loader = PackedBatches(config, "val")
    batches = all_batches(loader)
    assert sum(len(b) for b in batches) == loader.windows_per_rank
    assert batches[0][0, 0] == BOS_ID
    assert len(batches) == len(loader)
    for _ in zip(range(2), loader):  # an evaluation cut short ...
        pass
    again = all_batches(loader)  # ... does not shift the next one
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


def test_max_bytes_caps_the_corpus_in_source_order(text_corpus):
    config = config_for(text_corpus, max_bytes=2500, val_fraction=0.0)
    documents = list(corpus_documents(config))
    assert sum(map(len, documents)) == 2500
    full = list(corpus_documents(config_for(text_corpus, val_fraction=0.0)))
    assert documents[:-1] == full[: len(documents) - 1]
    assert full[len(documents) - 1].startswith(documents[-1])


def test_long_documents_are_cut_at_line_breaks(tmp_path, make_text):
    text = make_text(random.Random(1), 5000)
    (tmp_path / "big.txt").write_text(text)
    config = config_for(tmp_path / "big.txt", max_doc_bytes=700, val_fraction=0.0)
    pieces = list(corpus_documents(config))
    assert b"".join(pieces) == text.encode()
    assert all(len(p) <= 700 and p.endswith(b"\n") for p in pieces)
    assert len(pieces) >= 8
    whole = list(corpus_documents(config_for(tmp_path / "big.txt", max_doc_bytes=None)))
    assert whole == [text.encode()]


# ----------------------------------------------------------------------------------------------------------
# split stability


def test_adding_documents_does_not_move_existing_ones(text_corpus, make_text):
    config = config_for(text_corpus)
    before = {s: set(iter_documents(config, s)) for s in ("train", "val")}
    rng = random.Random(7)
    for i in range(15):
        (text_corpus / f"new{i}.txt").write_text(make_text(rng, 800))
    after = {s: set(iter_documents(config, s)) for s in ("train", "val")}
    assert before["train"] <= after["train"] and before["val"] <= after["val"]
    assert len(after["train"] | after["val"]) > len(before["train"] | before["val"])


def test_split_depends_only_on_content():
    rng = random.Random(0)
    documents = [rng.randbytes(rng.randint(1, 50)) for _ in range(2000)]
    small = {d for d in documents if in_validation(d, 0.05)}
    large = {d for d in documents if in_validation(d, 0.2)}
    assert small <= large  # raising val_fraction only moves documents into validation
    assert 0.02 < len(small) / len(documents) < 0.08 and 0.15 < len(large) / len(documents) < 0.25
    assert not any(in_validation(d, 0.0) for d in documents)


# ----------------------------------------------------------------------------------------------------------
# resume and ranks


@pytest.mark.parametrize("consumed", [1, 6, 13])  # mid-epoch, and across epoch boundaries
def test_resume_yields_the_next_unseen_batch(text_corpus, consumed):
    config = config_for(text_corpus, batch_size=2)
    reference = PackedBatches(config)
    uninterrupted = all_batches(reference) + all_batches(reference) + all_batches(reference)
    assert len(uninterrupted) > 14

    run = PackedBatches(config)
    taken = 0
    while taken < consumed:  # a training loop that re-iterates per epoch, stopped mid-way
        for _ in iter(run):
            taken += 1
            if taken == consumed:
                break
    state = json.loads(json.dumps(run.state_dict()))  # states survive a checkpoint file
    assert state["batch"] == consumed

    resumed = PackedBatches(config)
    resumed.load_state_dict(state)
    rest = all_batches(resumed) + all_batches(resumed)
    assert torch.equal(rest[0], uninterrupted[consumed])
    assert all(torch.equal(a, b) for a, b in zip(rest, uninterrupted[consumed:]))


def test_resume_refuses_a_state_of_another_corpus_or_layout(text_corpus, tmp_path):
    state = PackedBatches(config_for(text_corpus)).state_dict()
    with pytest.raises(ValueError, match="saved state has seq_len=16 but this run has seq_len=8"):
        PackedBatches(config_for(text_corpus, seq_len=8)).load_state_dict(state)
    training_file = next(
        p for p in sorted(text_corpus.glob("*.txt")) if not in_validation(p.read_bytes(), 0.2)
    )
    training_file.write_text(training_file.read_text() + "One more line.\n")
    with pytest.raises(ValueError, match="split's content changed"):
        PackedBatches(config_for(text_corpus)).load_state_dict(state)
    with pytest.raises(ValueError, match="no 'batch' entry"):
        PackedBatches(config_for(text_corpus)).load_state_dict({})
    for batch in (-1, 1.5, "3"):
        with pytest.raises(ValueError, match="'batch' must be an integer >= 0"):
            PackedBatches(config_for(text_corpus)).load_state_dict({"batch": batch})


def test_ranks_read_disjoint_equal_shards(text_corpus):
    config = config_for(text_corpus, batch_size=1)
    world = 3
    shards = [
        {tuple(w.tolist()) for b in all_batches(PackedBatches(config, rank=r, world_size=world)) for w in b}
        for r in range(world)
    ]
    loaders = [PackedBatches(config, rank=r, world_size=world) for r in range(world)]
    assert len({len(x) for x in loaders}) == 1  # every rank runs the same number of steps
    for a in range(world):
        for b in range(a + 1, world):
            assert not shards[a] & shards[b]
    single = {tuple(w.tolist()) for b in all_batches(PackedBatches(config, shuffle=False)) for w in b}
    assert set.union(*shards) <= single
    with pytest.raises(ConfigError, match="rank < world_size"):
        PackedBatches(config, rank=3, world_size=3)


# ----------------------------------------------------------------------------------------------------------
# sources


def test_single_file_glob_jsonl_and_parquet_sources(tmp_path, text_corpus):
    one = min(text_corpus.glob("*.txt"))
    assert list(corpus_documents(config_for(one))) == [one.read_bytes()]

    from_glob = list(corpus_documents(config_for(text_corpus / "sub" / "*.txt")))
    assert from_glob == [p.read_bytes() for p in sorted((text_corpus / "sub").glob("*.txt"))]

    rows = [{"text": f"row {i} é\n", "id": i} for i in range(5)] + [{"text": None, "id": 9}]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    expected = [f"row {i} é\n".encode() for i in range(5)]
    assert list(corpus_documents(config_for(jsonl))) == expected

    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"body": [r["text"] for r in rows], "id": [r["id"] for r in rows]}), parquet)
    assert list(corpus_documents(config_for(parquet, text_field="body"))) == expected


def test_folders_skip_binary_and_hidden_files(text_corpus):
    (text_corpus / "image.bin").write_bytes(b"\x89PNG\0\0\0binary")
    (text_corpus / ".hidden.txt").write_text("secret")
    (text_corpus / ".git").mkdir()
    (text_corpus / ".git" / "HEAD").write_text("ref: main")
    (text_corpus / "notes.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\n")
    documents = list(corpus_documents(config_for(text_corpus, max_doc_bytes=None)))
    assert len(documents) == 41 and b"from jsonl" in documents
    assert not any(b"\0" in d or d in (b"secret", b"ref: main") for d in documents)


def test_stdlib_corpus_is_found_and_capped():
    files = stdlib_files()
    assert all(f.suffix == ".py" and "site-packages" not in f.parts for f in files)
    assert sum(f.stat().st_size for f in files[:400]) > 1_000_000
    config = DataConfig(max_bytes=200_000, seq_len=64, batch_size=2, val_fraction=0.0)
    documents = list(iter_documents(config))
    assert sum(map(len, documents)) == 200_000
    assert any(b"def " in d or b"import " in d for d in documents)
    assert next(iter(PackedBatches(config))).shape == (2, 65)


def test_cache_is_reused_and_rebuilt_when_a_file_changes(text_corpus):
    config = config_for(text_corpus)
    folder = build_cache(config)
    stamp = (folder / "meta.json").stat().st_mtime_ns
    time.sleep(0.01)
    assert build_cache(config) == folder and (folder / "meta.json").stat().st_mtime_ns == stamp
    assert (
        cache_key(config_for(text_corpus, seq_len=64, seed=3, batch_size=1)) == folder.name
    )  # windowing only
    assert cache_key(config_for(text_corpus, val_fraction=0.3)) != folder.name
    (text_corpus / "doc01.txt").write_text("changed\n")
    assert build_cache(config) != folder
    meta = json.loads((build_cache(config) / "meta.json").read_text())
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 40


def test_hub_names_are_told_apart_from_paths(tmp_path):
    assert is_hub_name("wikitext") and is_hub_name("owner/corpus") and is_hub_name("hf:owner/c.v2")
    assert not is_hub_name("stdlib") and not is_hub_name("missing.txt") and not is_hub_name("./owner/name")
    assert not is_hub_name(str(tmp_path)) and not is_hub_name("data/*.txt") and not is_hub_name("/abs/corpus")


@pytest.mark.parametrize("flag", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_dataset_offline_is_a_quick_clear_error(monkeypatch, flag):
    """Offline, a hub corpus fails at once with a clear error: no connection is even tried."""
    monkeypatch.setenv(flag, "1")

    def no_network(*args, **kwargs):
        raise AssertionError("a connection was attempted while offline")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ValueError, match=rf"'someone/some-corpus'.*offline \({flag} is set\)"):
        PackedBatches(DataConfig(source="someone/some-corpus"))


# ----------------------------------------------------------------------------------------------------------
# bad input


def test_missing_path_and_unmatched_glob(tmp_path):
    odd = tmp_path / "notes[1].txt"  # an existing path is read as it is, even with glob characters
    odd.write_text("bracketed\n")
    assert list(corpus_documents(config_for(odd))) == [b"bracketed\n"]
    with pytest.raises(ValueError, match="data source path does not exist: .*nothing.txt"):
        PackedBatches(config_for(tmp_path / "nothing.txt"))
    with pytest.raises(ValueError, match="no files match the glob"):
        list(iter_documents(config_for(tmp_path / "*.nothing")))


def test_empty_corpus(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("")
    (tmp_path / "corpus" / "b.txt").write_text("")
    config = config_for(tmp_path / "corpus", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="has no bytes: the corpus is empty"):
        PackedBatches(config)
    assert list((tmp_path / "cache" / "data").iterdir()) == []  # no half-built cache is left behind


def test_jsonl_and_parquet_without_the_field(tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    with pytest.raises(ValueError, match=r"rows.jsonl:2: no text field 'text' \(found: \['body'\]\)"):
        PackedBatches(config_for(jsonl))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match="broken.jsonl:2: not valid JSON"):
        PackedBatches(config_for(broken))
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text(json.dumps({"text": 5}) + "\n")
    with pytest.raises(ValueError, match="field 'text' must hold text, got int"):
        PackedBatches(config_for(numbers))

    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"body": ["a", "b"]}), parquet)
    with pytest.raises(ValueError, match=r"no text field 'text' \(columns: \['body'\]\)"):
        PackedBatches(config_for(parquet))


def test_empty_validation_split_suggests_a_fix(text_corpus):
    with pytest.raises(ValueError, match="validation split .* is empty: set data.val_fraction > 0"):
        PackedBatches(config_for(text_corpus, val_fraction=0.0), "val")
    one = min(text_corpus.glob("*.txt"))
    split = "train" if in_validation(one.read_bytes(), 0.2) else "val"
    with pytest.raises(ValueError, match="split .* is empty.*data.val_fraction"):
        list(iter_documents(config_for(one, max_doc_bytes=None), split))
    with pytest.raises(ConfigError, match="split must be one of"):
        list(iter_documents(config_for(text_corpus), "test"))


def test_too_little_data_for_one_batch(text_corpus):
    with pytest.raises(
        ValueError, match="fewer than one batch of 200.*smaller data.seq_len / data.batch_size"
    ):
        PackedBatches(config_for(text_corpus, seq_len=512, batch_size=200))
    with pytest.raises(ValueError, match="val split.*larger data.val_fraction"):
        PackedBatches(config_for(text_corpus, seq_len=50_000, val_fraction=0.3), "val")


def test_hub_dataset_unreachable_or_unknown(monkeypatch):
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)  # a local stand-in for the hub
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    with pytest.raises(ValueError, match="'owner/unknown' is neither a local path nor a dataset on the hub"):
        list(iter_documents(DataConfig(source="owner/unknown")))
    thread.join(5)
    server.server_close()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")  # now closed: refused
    with pytest.raises(ValueError, match="'owner/corpus'.*hub is unreachable"):
        list(iter_documents(DataConfig(source="owner/corpus")))


def test_hub_dataset_rows_are_streamed_documents(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, subset, split, streaming):
        calls.append((name, subset, split, streaming))
        return iter([{"content": "first row"}, {"content": None}, {"content": "second"}, {"other": "x"}])

    monkeypatch.setattr(data_sources, "_probe_hub", lambda name: None)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    config = DataConfig(source="hf:owner/corpus", hub_subset="en", text_field="content", max_bytes=15)
    assert list(corpus_documents(config)) == [b"first row", b"second"]  # capped before the bad row
    assert calls == [("owner/corpus", "en", "train", True)]
    with pytest.raises(ValueError, match=r"hub dataset 'owner/corpus': row 3 has no text field 'content'"):
        list(corpus_documents(DataConfig(source="hf:owner/corpus", text_field="content")))


@settings(max_examples=25, deadline=None)
@given(
    documents=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=8),
    seq_len=st.integers(2, 9),
    batch_size=st.integers(1, 3),
    world_size=st.integers(1, 2),
)
def test_packing_property(documents, seq_len, batch_size, world_size):
    """Any documents, window and shard sizes: the ranks' windows, interleaved, are the stream in order."""
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "docs.jsonl"
        corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
        config = config_for(corpus, seq_len=seq_len, batch_size=batch_size, val_fraction=0.0, cache_dir=tmp)
        expected = stream_of(d.encode() for d in documents)
        n_windows = (len(expected) - 1) // seq_len // world_size
        assume(n_windows > 0)
        shards = [
            torch.cat(
                all_batches(
                    PackedBatches(config, rank=r, world_size=world_size, shuffle=False, drop_last=False)
                )
            )
            for r in range(world_size)
        ]
        windows = [shard[j].tolist() for j in range(n_windows) for shard in shards]
        rebuilt = windows[0] + [i for w in windows[1:] for i in w[1:]]
        assert rebuilt == expected[: len(rebuilt)]
        assert len(expected) - len(rebuilt) < seq_len * world_size
