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


def test_bpb_on_entropy_checkpoint(entropy_dir, text_corpus, capsys):
    argv = ["bpb", "--checkpoint", str(entropy_dir), "--data", str(text_corpus), "--data.val_fraction", "0.3"]
    result = run_json(capsys, [*argv, "--json", "--batch-size", "3"])
    val = list(iter_documents(DataConfig(source=str(text_corpus), val_fraction=0.3), "val"))
    assert result["n_documents"] == len(val) > 3
    assert result["n_bytes"] == sum(map(len, val))
    assert 7.0 < result["bits_per_byte"] < 9.5 and 0 < result["stderr"] < 0.5  # untrained: near uniform
    assert result["unit"] == "byte" and result["bytes_per_unit"] == 1.0
    assert result["flops"]["training_flops_per_byte"] == pytest.approx(
        3 * result["flops"]["inference_flops_per_byte"]
    )
    # windows of 64 ids with a 16-byte sliding window: the same as one pass over each document
    whole = run_json(capsys, [*argv, "--json", "--context", "4096"])
    assert whole["bits"] == pytest.approx(result["bits"], rel=1e-5)
    one = run_json(capsys, [*argv, "--json", "--max-documents", "1"])
    assert one["n_documents"] == 1 and one["stderr"] is None
    # the human-readable form
    assert main([*argv, "--max-documents", "2"]) == 0
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
    assert main(["bpb", "--checkpoint", str(tmp_path / "foreign"), "--data", str(text_corpus)]) == 2
    assert "kind 'unknown'" in capsys.readouterr().err


def test_bpb_bad_input(entropy_dir, tmp_path, text_corpus, capsys):
    def error(*extra):
        argv = [
            "bpb",
            "--checkpoint",
            str(entropy_dir),
            "--data",
            str(text_corpus),
            "--data.val_fraction",
            "0.3",
            *extra,
        ]
        assert main(argv) == 2
        return capsys.readouterr().err

    assert "does not exist" in error("--data", str(tmp_path / "nope"))
    assert "checkpoint path does not exist" in main_error(
        capsys, ["bpb", "--checkpoint", str(tmp_path / "x"), "--data", "y"]
    )
    assert "split of" in main_error(
        capsys, ["bpb", "--checkpoint", str(entropy_dir), "--data", str(text_corpus)]
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    assert "no bytes" in error("--data", str(empty))
    assert "unknown config key 'data.bogus'" in error("--data.bogus", "1")
    assert "BLT checkpoints only" in error("--patching.patch_size", "4")
    assert "context must be at least 2" in error("--context", "1")
    assert "stride must be in" in error("--context", "8", "--stride", "8")
    assert "--max-documents must be >= 1" in error("--max-documents", "0")


def main_error(capsys, argv):
    assert main(argv) == 2
    return capsys.readouterr().err


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
    data = ["--data", str(text_corpus), "--data.val_fraction", "0.3", "--max-documents", "4"]
    expected = run_json(capsys, ["bpb", "--checkpoint", str(run), *data, "--json"])
    assert main(["compare", str(run), "--out", str(tmp_path / "out"), *data]) == 0
    (row,) = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert row["bpb"] == pytest.approx(expected["bits_per_byte"]) and row["bpb"] != 9.9
    assert row["stderr"] == pytest.approx(expected["stderr"])
    assert row["inference_flops_per_byte"] == pytest.approx(expected["flops"]["inference_flops_per_byte"])


def test_split_all_scores_every_document_of_a_foreign_file(entropy_dir, tmp_path, capsys):
    text = tmp_path / "one.txt"
    text.write_bytes(b"a single document that no validation split would hold\n" * 3)
    argv = ["bpb", "--checkpoint", str(entropy_dir), "--data", str(text), "--json"]
    assert main(argv) == 2 and "validation split" in capsys.readouterr().err
    result = run_json(capsys, [*argv, "--split", "all"])
    assert result["n_documents"] == 1 and result["n_bytes"] == len(text.read_bytes())
    text.write_bytes(b"")
    assert main([*argv, "--split", "all"]) == 2 and "no bytes" in capsys.readouterr().err
