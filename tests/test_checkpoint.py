"""blt.checkpoint: one loader for every kind, run directories, the bundled patcher, refusals, round trips."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tiny_blt import random_ids, tiny_blt

from blt.baseline import BaselineLM, train_tokenizer
from blt.checkpoint import CheckpointError, entropy_vocab_size, kind_of, load, model_class
from blt.checkpoint.hf import config_to_hf
from blt.config import BaselineConfig
from blt.convert import main as convert_main
from blt.model import BLT
from blt.patcher import EntropyModel

CLASSES = {"blt": BLT, "hf-blt": BLT, "blt-entropy": EntropyModel, "blt-baseline": BaselineLM}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One directory of every kind, ``<kind>/``, and a training run directory around each, ``runs/<kind>/``."""
    root = tmp_path_factory.mktemp("checkpoints")
    model = tiny_blt()
    tokenizer = train_tokenizer(["the quick brown fox jumps over the lazy dog.\n" * 40], vocab_size=300)
    torch.manual_seed(0)
    baseline = BaselineLM(BaselineConfig(dim=32, n_layers=1, n_heads=2, vocab_size=300), tokenizer).eval()
    save = {
        "blt": model.save_pretrained,
        "hf-blt": lambda d: model.save_pretrained(d, format="hf"),
        "blt-entropy": model.patcher.save_pretrained,
        "blt-baseline": baseline.save_pretrained,
    }
    for kind, write in save.items():
        write(root / kind)
        write(root / "runs" / kind / "model")
        (root / "runs" / kind / "summary.json").write_text("{}")
    return root


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kind", CLASSES)
def test_registry_loads_each_kind_with_its_class(root, kind):
    assert model_class(kind) is CLASSES[kind]
    assert kind_of(root / kind) == kind_of(root / "runs" / kind) == kind
    loaded = load(root / kind)
    assert loaded.kind == kind and loaded.directory == root / kind
    assert type(loaded.model) is CLASSES[kind] and not loaded.model.training


@pytest.mark.parametrize("kind", CLASSES)
def test_every_loader_takes_a_run_directory(root, kind):
    run = root / "runs" / kind
    assert same_weights(CLASSES[kind].from_pretrained(run), CLASSES[kind].from_pretrained(root / kind))
    assert load(run).directory == run / "model"


@pytest.mark.parametrize(
    "where", ["blt-entropy", "runs/blt-entropy", "blt", "runs/blt", "hf-blt", "runs/hf-blt"]
)
def test_entropy_model_from_every_directory_that_holds_one(root, where):
    patcher = tiny_blt().patcher  # the same weights the fixture saved
    loaded = EntropyModel.from_pretrained(root / where)
    assert same_weights(loaded, patcher) and not loaded.training
    ids = random_ids(2, 40)
    assert torch.equal(loaded.entropies(ids), patcher.entropies(ids))
    assert entropy_vocab_size(root / where) == 260


REFUSALS = [
    (BLT.from_pretrained, "blt-entropy", "a BLT", "'blt', 'hf-blt', 'blt-original'"),
    (BLT.from_pretrained, "blt-baseline", "a BLT", "'blt', 'hf-blt', 'blt-original'"),
    (EntropyModel.from_pretrained, "blt-baseline", "an entropy model", "'blt-entropy', 'blt', 'hf-blt', 'blt-entropy-original', 'blt-original'"),
    (entropy_vocab_size, "blt-baseline", "an entropy model", "'blt-entropy', 'blt', 'hf-blt', 'blt-entropy-original', 'blt-original'"),
    (BaselineLM.from_pretrained, "blt", "a BPE baseline", "'blt-baseline'"),
    (BaselineLM.from_pretrained, "hf-blt", "a BPE baseline", "'blt-baseline'"),
    (BaselineLM.from_pretrained, "blt-entropy", "a BPE baseline", "'blt-baseline'"),
]


@pytest.mark.parametrize("loader, kind, what, accepted", REFUSALS)
def test_a_directory_of_another_kind_is_refused(root, loader, kind, what, accepted):
    with pytest.raises(CheckpointError) as error:
        loader(root / "runs" / kind)
    assert str(error.value) == (
        f"{root / 'runs' / kind / 'model'} holds a checkpoint of kind '{kind}', not {what} "
        f"(kinds it loads from: {accepted})"
    )


@pytest.mark.parametrize(
    "config",
    [
        {"kind": "blt-entropy", "config": {"vocab_size": 300}},
        {"kind": "blt", "config": {"entropy_model": {"vocab_size": 300}}},
        {"model_type": "blt", "patcher_config": {"vocab_size": 300}},
    ],
)
def test_entropy_vocabulary_is_read_from_config_json_alone(tmp_path, config):
    (tmp_path / "config.json").write_text(json.dumps(config))  # no weights at all
    assert entropy_vocab_size(tmp_path) == 300


@pytest.mark.parametrize("patching", [{}, {"max_patch_length": 3}])
def test_ours_to_transformers_and_back_gives_identical_logits(tmp_path, patching):
    model = tiny_blt(**patching)
    model.save_pretrained(tmp_path / "hf", format="hf")
    BLT.from_pretrained(tmp_path / "hf").save_pretrained(tmp_path / "ours")
    back = BLT.from_pretrained(tmp_path / "ours")
    assert kind_of(tmp_path / "ours") == "blt"
    assert config_to_hf(back.config) == config_to_hf(model.config)  # the same model, spelled out in full
    ids = random_ids(2, 40, seed=5)
    with torch.no_grad():
        ours, theirs = back(ids), model(ids)
    assert torch.equal(ours.patch_lengths, theirs.patch_lengths) and torch.equal(ours.logits, theirs.logits)


def test_convert_takes_a_run_directory_and_never_writes_into_it(root, tmp_path, capsys):
    run = root / "runs" / "blt"
    assert convert_main([str(run), str(tmp_path / "hf")]) == 0
    assert kind_of(tmp_path / "hf") == "hf-blt"
    assert convert_main([str(run), str(run / "model")]) == 2  # DST is the model the run directory stands for
    assert "DST must differ from SRC" in capsys.readouterr().err
    assert kind_of(run) == "blt"


def test_the_checkpoint_package_imports_no_model_module():
    """Model modules import blt.checkpoint, so it must not import them back (it names them by path)."""
    code = "import json, sys, blt.checkpoint; print(json.dumps(sorted(m for m in sys.modules if m.startswith('blt'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [
        "blt",
        "blt.checkpoint",
        "blt.checkpoint.files",
        "blt.checkpoint.hf",
        "blt.checkpoint.hub",
        "blt.checkpoint.kinds",
        "blt.checkpoint.original",
        "blt.checkpoint.pretrained",
        "blt.config",
        "blt.tokenizer",
        "blt.validation",
    ]
