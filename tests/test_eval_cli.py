"""blt-eval bpb end to end on saved checkpoints and a corpus made in tmp_path; loading errors."""

import json

import pytest
import torch

from blt.checkpoint import CheckpointError, save_pretrained
from blt.config import EntropyModelConfig
from blt.data import DataConfig, iter_documents
from blt.eval.cli import main
from blt.eval.loading import load_model
from blt.patcher import EntropyModel

TINY = {"dim": 32, "n_layers": 1, "n_heads": 2, "window": 16, "max_seq_len": 64}


@pytest.fixture
def entropy_dir(tmp_path):
    torch.manual_seed(0)
    return EntropyModel(EntropyModelConfig(**TINY)).save_pretrained(tmp_path / "entropy")


def run_json(capsys, argv):
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def main_error(capsys, argv):
    """The one-line message of a command line that fails with exit code 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("blt-eval: error: ") and err.count("\n") == 1
    return err


def test_bpb_on_entropy_checkpoint(entropy_dir, text_corpus, tmp_path, capsys):
    argv = ["bpb", "--checkpoint", str(entropy_dir), "--data.source", str(text_corpus), "--data.val_fraction", "0.3"]
    result = run_json(capsys, [*argv, "--json", "--batch_size", "3"])
    val = list(iter_documents(DataConfig(source=str(text_corpus), val_fraction=0.3), "val"))
    assert result["n_documents"] == len(val) > 3
    assert result["n_bytes"] == sum(map(len, val))
    assert 7.0 < result["bits_per_byte"] < 9.5 and 0 < result["stderr"] < 0.5  # untrained: near uniform
    assert result["unit"] == "byte" and result["bytes_per_unit"] == 1.0
    assert result["flops"]["training_flops_per_byte"] == pytest.approx(
        3 * result["flops"]["inference_flops_per_byte"]
    )
    # the data section of a training run file: the same corpus and split
    run_file = tmp_path / "run.yaml"
    run_file.write_text(f"data:\n  source: {text_corpus}\n  val_fraction: 0.3\nentropy:\n  dim: 32\ntrainer: {{}}\n")
    from_file = run_json(capsys, ["bpb", "--checkpoint", str(entropy_dir), "--config", str(run_file), "--json", "--batch_size", "3"])
    assert from_file == result
    # windows of 64 ids with a 16-byte sliding window: the same as one pass over each document
    whole = run_json(capsys, [*argv, "--json", "--context", "4096"])
    assert whole["bits"] == pytest.approx(result["bits"], rel=1e-5)
    one = run_json(capsys, [*argv, "--json", "--max_documents", "1"])
    assert one["n_documents"] == 1 and one["stderr"] is None
    # the human-readable form
    assert main([*argv, "--max_documents", "2"]) == 0
    assert "bits per byte" in capsys.readouterr().out


def test_run_directory_resolves_to_its_model(entropy_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    entropy_dir.rename(run / "model")
    assert load_model(run).kind == "blt-entropy"


def test_unknown_kind_is_a_clear_error(tmp_path, capsys, text_corpus):
    save_pretrained(tmp_path / "odd", torch.nn.Linear(2, 2), "mystery-model", {})
    with pytest.raises(CheckpointError, match="kind 'mystery-model'.*known kinds: blt, hf-blt"):
        load_model(tmp_path / "odd")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert "kind 'unknown'" in main_error(
        capsys, ["bpb", "--checkpoint", str(tmp_path / "foreign"), "--data.source", str(text_corpus)]
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data.source", "MISSING"], "does not exist"),
        (["--data.source", "EMPTY"], "no bytes"),
        (["--data.bogus", "1"], "unrecognized arguments: --data.bogus"),
        (["--data.val_fraction", "lots"], "data.val_fraction"),
        (["--data.val_fraction", "1.5"], "data.val_fraction must be in [0, 1)"),
        (["--patching.patch_size", "4"], "BLT checkpoints only"),
        (["--context", "1"], "context must be at least 2"),
        (["--context", "8", "--stride", "8"], "stride must be in"),
        (["--max_documents", "0"], "--max_documents must be >= 1"),
        (["--max-documents", "1"], "unrecognized arguments: --max-documents"),  # the flag of old
        (["--data", "CORPUS"], 'Parser key "data"'),  # no longer the corpus: a file of data config
        (["--split", "test"], "split"),
        (["--json", "--max_doc", "1"], "unrecognized arguments: --max_doc"),  # no abbreviations
        (["--config", "MISSING"], "File does not exist"),
    ],
)
def test_bpb_bad_input(extra, message, entropy_dir, tmp_path, text_corpus, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    paths = {"MISSING": str(tmp_path / "nope"), "EMPTY": str(empty), "CORPUS": str(text_corpus)}
    argv = ["bpb", "--checkpoint", str(entropy_dir), "--data.source", str(text_corpus), "--data.val_fraction", "0.3"]
    assert message in main_error(capsys, [*argv, *(paths.get(a, a) for a in extra)])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bpb", "--checkpoint", "MISSING", "--data.source", "y"], "checkpoint path does not exist"),
        (["bpb", "--checkpoint", "ENTROPY", "--data.source", "CORPUS"], "split of"),  # 1% of 40 documents
        (["bpb", "--data.source", "CORPUS"], "checkpoint"),
        (["score", "--checkpoint", "ENTROPY"], "score"),
        ([], "bpb,docs,sweep,compare"),
    ],
)
def test_bpb_bad_command_line(argv, message, entropy_dir, tmp_path, text_corpus, capsys):
    paths = {"MISSING": str(tmp_path / "x"), "ENTROPY": str(entropy_dir), "CORPUS": str(text_corpus)}
    assert message in main_error(capsys, [paths.get(a, a) for a in argv])


def test_compare_reevaluates_models_on_a_corpus(entropy_dir, tmp_path, text_corpus, capsys):
    run = tmp_path / "run"
    run.mkdir()
    entropy_dir.rename(run / "model")
    summary = {
        "kind": "entropy",
        "params": 1,
        "training_flops": 1e9,
        "val_bpb": 9.9,
        "inference_flops_per_byte": 1.0,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    data = ["--data.source", str(text_corpus), "--data.val_fraction", "0.3", "--max_documents", "4"]
    expected = run_json(capsys, ["bpb", "--checkpoint", str(run), *data, "--json"])
    assert main(["compare", str(run), "--out", str(tmp_path / "out"), *data]) == 0
    (row,) = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert row["bpb"] == pytest.approx(expected["bits_per_byte"]) and row["bpb"] != 9.9
    assert row["stderr"] == pytest.approx(expected["stderr"])
    assert row["inference_flops_per_byte"] == pytest.approx(expected["flops"]["inference_flops_per_byte"])


def test_split_all_scores_every_document_of_a_foreign_file(entropy_dir, tmp_path, capsys):
    text = tmp_path / "one.txt"
    text.write_bytes(b"a single document that no validation split would hold\n" * 3)
    argv = ["bpb", "--checkpoint", str(entropy_dir), "--data.source", str(text), "--json"]
    assert "validation split" in main_error(capsys, argv)
    result = run_json(capsys, [*argv, "--split", "all"])
    assert result["n_documents"] == 1 and result["n_bytes"] == len(text.read_bytes())
    text.write_bytes(b"")
    assert "no bytes" in main_error(capsys, [*argv, "--split", "all"])
