"""blt-eval bpb on BLT checkpoints: same bytes as the entropy model, patch counts, patching overrides."""

import dataclasses
import json
import math

import pytest
import torch
from tiny_blt import blt_config

from blt import cli
from blt.config import PatchingConfig
from blt.data import DataConfig, iter_documents
from blt.eval.cli import main, parse_args, patching_override
from blt.eval.loading import load_model
from blt.model import BLT

SMALL = {"dim": 32, "n_layers": 1, "n_heads": 2, "window": 32, "max_seq_len": 4096}


def tiny_blt_config(**patching):
    return blt_config(
        encoder={**SMALL, "hash_ngram_sizes": [3, 4], "hash_vocab": 64},
        global_transformer={"dim": 64, "n_layers": 1, "n_heads": 2, "max_seq_len": 4096},
        decoder=SMALL,
        entropy_model=SMALL,
        patching={"scheme": "entropy", "threshold": 5.11, **patching},
    )


@pytest.fixture
def blt_dir(tmp_path):
    torch.manual_seed(0)
    config = tiny_blt_config()
    model = BLT(config)
    model.patcher.save_pretrained(tmp_path / "entropy")
    return model.save_pretrained(tmp_path / "blt")


def bpb(capsys, checkpoint, corpus, *extra):
    argv = [
        "bpb",
        "--checkpoint",
        str(checkpoint),
        "--data.source",
        str(corpus),
        "--data.val_fraction",
        "0.3",
        "--json",
    ]
    assert main([*argv, *extra]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_blt_entropy_model_count_the_same_bytes(blt_dir, text_corpus, capsys):
    blt = bpb(capsys, blt_dir, text_corpus, "--context", "256")
    entropy = bpb(capsys, blt_dir.parent / "entropy", text_corpus, "--context", "256")
    assert blt["n_bytes"] == entropy["n_bytes"] and blt["n_documents"] == entropy["n_documents"]
    assert blt["unit"] == "patch" and 1.3 < blt["bytes_per_unit"] < 4
    assert 6.0 < blt["bits_per_byte"] < 10.0
    assert set(blt["flops"]) == {
        "inference_flops_per_byte",
        "training_flops_per_byte",
        "entropy_inference_flops_per_byte",
        "entropy_training_flops_per_byte",
        "spent_flops_per_byte",
        "spent_entropy_flops_per_byte",
        "spent_global_flops_per_byte",
    }
    assert blt["flops"]["entropy_inference_flops_per_byte"] == pytest.approx(
        entropy["flops"]["inference_flops_per_byte"]
    )
    # the same windows: the BLT's patcher spends exactly what the entropy model does on its own
    assert blt["flops"]["spent_entropy_flops_per_byte"] == pytest.approx(
        entropy["flops"]["spent_flops_per_byte"]
    )
    assert blt["flops"]["spent_flops_per_byte"] > 2 * blt["flops"]["spent_entropy_flops_per_byte"]


def test_static_patching_override_counts_patches(blt_dir, text_corpus, capsys):
    result = bpb(capsys, blt_dir, text_corpus, "--patching.scheme", "static", "--patching.patch_size", "3")
    docs = list(iter_documents(DataConfig(source=str(text_corpus), val_fraction=0.3), "val"))
    # one window per document: patches of 3 bytes after the BOS patch
    assert result["bytes_per_unit"] == pytest.approx(
        sum(map(len, docs)) / sum(math.ceil(len(d) / 3) for d in docs)
    )


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], None),  # no field given: the checkpoint patches as it was trained
        (["--patching.max_patch_length", "4"], {"max_patch_length": 4}),
        (["--patching.scheme", "static"], {"scheme": "static"}),
        (["--config", "PATCHING"], {"scheme": "static", "patch_size": 3}),
        (["--config", "PATCHING", "--patching.patch_size", "5"], {"scheme": "static", "patch_size": 5}),
        (["--config", "PRINTED"], {"scheme": "static"}),  # --print_config output sets only what was set
    ],
)
def test_patching_options_replace_only_the_fields_given(flags, expected, blt_dir, tmp_path, capsys):
    (tmp_path / "patching.yaml").write_text("patching:\n  scheme: static\n  patch_size: 3\n")
    with pytest.raises(SystemExit):
        main(["bpb", "--checkpoint", str(blt_dir), "--patching.scheme", "static", "--print_config"])
    (tmp_path / "printed.yaml").write_text(capsys.readouterr().out)
    files = {"PATCHING": str(tmp_path / "patching.yaml"), "PRINTED": str(tmp_path / "printed.yaml")}
    argv = ["bpb", "--checkpoint", str(blt_dir), *(files.get(a, a) for a in flags)]
    args, _ = parse_args(argv)
    loaded = load_model(blt_dir)
    own = loaded.model.config.patching
    assert own.threshold == 5.11 != PatchingConfig().threshold  # not the dataclass default
    override = patching_override(loaded, cli.overrides(args.bpb, "patching"))
    assert override == (None if expected is None else dataclasses.replace(own, **expected))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--patching.patch_size", "0"], "patching.patch_size must be > 0"),
        (["--patching.scheme", "bogus"], "patching.scheme"),
        (["--patching.threshold", "high"], "patching.threshold"),
        (["--patching.bogus", "1"], "--patching.bogus"),
    ],
)
def test_bad_patching_is_a_clear_error(flags, message, blt_dir, text_corpus, capsys):
    assert main(["bpb", "--checkpoint", str(blt_dir), "--data.source", str(text_corpus), *flags]) == 2
    assert message in capsys.readouterr().err


def test_transformers_layout_blt_scores_the_same(blt_dir, tmp_path, text_corpus, capsys):
    hf_dir = BLT.from_pretrained(blt_dir).save_pretrained(tmp_path / "hf", format="hf")
    assert load_model(hf_dir).kind == "hf-blt"
    ours = bpb(capsys, blt_dir, text_corpus, "--context", "256", "--max_documents", "3")
    theirs = bpb(capsys, hf_dir, text_corpus, "--context", "256", "--max_documents", "3")
    assert theirs["n_bytes"] == ours["n_bytes"] and theirs["bytes_per_unit"] == ours["bytes_per_unit"]
    assert theirs["bits"] == pytest.approx(ours["bits"], rel=1e-5)
