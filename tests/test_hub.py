"""Hub ids ("owner/name[@revision]") wherever a checkpoint is taken, with no network: the tests lay out a hub
cache themselves (models--owner--name/snapshots/<commit>/..., refs/main) under HF_HUB_CACHE with
HF_HUB_OFFLINE=1, and mock huggingface_hub's download for what only the hub can answer."""

from __future__ import annotations

import json
import shutil
import types

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
from original_blt import entropy_params, original_args, write_original
from tiny_blt import random_ids, tiny_blt

from blt.baseline import BaselineLM, train_tokenizer
from blt.checkpoint import CheckpointError, hub
from blt.config import BaselineConfig
from blt.convert import main as convert_main
from blt.eval.cli import main as eval_main
from blt.eval.loading import load_model
from blt.model import BLT
from blt.patcher import EntropyModel
from blt.patcher.cli import main as patch_main

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """``publish(repo, folder)`` puts ``folder`` into an offline hub cache as ``repo``'s main revision."""
    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def publish(repo, folder, commit=COMMIT, ref="main"):
        storage = cache / f"models--{repo.replace('/', '--')}"
        shutil.copytree(folder, storage / "snapshots" / commit)
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
        return storage / "snapshots" / commit

    return publish


def test_hub_ids_load_from_the_cache_offline(tmp_path, hub_cache):
    model = tiny_blt(seed=2)
    model.save_pretrained(tmp_path / "ours")
    hub_cache("acme/tiny-blt", tmp_path / "ours")
    ids = random_ids(1, 30)
    with torch.no_grad():
        expected = model(ids).logits
        for name in ("acme/tiny-blt", f"acme/tiny-blt@{COMMIT}", "acme/tiny-blt@main"):
            torch.testing.assert_close(BLT.from_pretrained(name)(ids).logits, expected, atol=0, rtol=0)
        loaded = load_model("acme/tiny-blt")  # blt-eval
        assert loaded.kind == "blt"
        torch.testing.assert_close(loaded.model(ids).logits, expected, atol=0, rtol=0)
    # the transformers-layout mirror of a release
    model.save_pretrained(tmp_path / "hf", format="hf")
    hub_cache("acme/tiny-blt-hf", tmp_path / "hf")
    with torch.no_grad():
        torch.testing.assert_close(
            BLT.from_pretrained("acme/tiny-blt-hf")(ids).logits, expected, atol=1e-5, rtol=0
        )
    assert EntropyModel.from_pretrained("acme/tiny-blt-hf").config.window == 16


def test_released_layouts_by_hub_id(tmp_path, hub_cache, capsys, text_corpus):
    original = write_original(tmp_path / "blt-1b", original_args(), entropy_params(threshold=3.0))
    hub_cache("facebook/blt-1b", original)
    hub_cache("facebook/blt-entropy", original / "entropy_model")
    ids = random_ids(1, 40, seed=1)
    local = BLT.from_pretrained(original)
    with torch.no_grad():
        torch.testing.assert_close(BLT.from_pretrained("facebook/blt-1b")(ids).logits, local(ids).logits)
    entropies = local.patcher.entropies(ids)
    for name in ("facebook/blt-1b", "facebook/blt-entropy"):
        torch.testing.assert_close(EntropyModel.from_pretrained(name).entropies(ids), entropies)
    assert load_model("facebook/blt-entropy").kind == "blt-entropy-original"
    assert convert_main(["facebook/blt-1b", str(tmp_path / "converted"), "--to", "hf"]) == 0  # blt-convert
    assert "max logit difference" in capsys.readouterr().out
    with torch.no_grad():
        torch.testing.assert_close(BLT.from_pretrained(tmp_path / "converted")(ids).logits, local(ids).logits)
    # blt-eval (with a patching override, as for any BLT) and blt-patch
    argv = ["bpb", "--checkpoint", "facebook/blt-1b", "--data.source", str(text_corpus), "--split", "all"]
    assert eval_main([*argv, "--max_documents", "2", "--json", "--patching.threshold", "2.5"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == "facebook/blt-1b"
    assert patch_main(["--text", "hello hub", "--model", "facebook/blt-entropy"]) == 0
    assert "mean patch length" in capsys.readouterr().out


def test_baseline_by_hub_id(tmp_path, hub_cache):
    tokenizer = train_tokenizer(
        ["def add(a, b):\n    return a + b\n" * 40, "the cat sat on the mat.\n" * 40], vocab_size=300
    )
    torch.manual_seed(0)
    model = BaselineLM(BaselineConfig(dim=32, n_layers=1, n_heads=2, vocab_size=300), tokenizer).eval()
    model.save_pretrained(tmp_path / "bpe")
    hub_cache("acme/bpe-baseline", tmp_path / "bpe")
    text = "def add(x, y): return x + y"
    assert BaselineLM.from_pretrained("acme/bpe-baseline").nll_bits(text) == pytest.approx(
        model.nll_bits(text)
    )
    assert load_model("acme/bpe-baseline").kind == "blt-baseline"


def test_a_local_directory_of_the_same_name_wins(tmp_path, hub_cache, monkeypatch):
    tiny_blt(seed=1).save_pretrained(tmp_path / "on-hub")
    hub_cache("acme/tiny-blt", tmp_path / "on-hub")
    monkeypatch.chdir(tmp_path)
    local = tiny_blt(seed=2)
    local.save_pretrained(tmp_path / "acme" / "tiny-blt")
    ids = random_ids(1, 25)
    with torch.no_grad():
        torch.testing.assert_close(
            BLT.from_pretrained("acme/tiny-blt")(ids).logits, local(ids).logits, atol=0, rtol=0
        )
    assert hub.resolve("acme/tiny-blt") == hub.Path("acme/tiny-blt")


def test_not_cached_while_offline_is_a_clear_error(tmp_path, hub_cache):
    tiny_blt().save_pretrained(tmp_path / "ours")
    hub_cache("acme/tiny-blt", tmp_path / "ours")
    for load in (BLT.from_pretrained, EntropyModel.from_pretrained, BaselineLM.from_pretrained, load_model):
        with pytest.raises(
            CheckpointError,
            match=r"hub repo acme/absent is not cached in .*hub-cache \(HF_HUB_OFFLINE is set\)",
        ):
            load("acme/absent")
    with pytest.raises(CheckpointError, match="hub repo acme/tiny-blt@v2 is not cached"):
        BLT.from_pretrained("acme/tiny-blt@v2")
    # what is no hub id stays a path, with the path's own error
    with pytest.raises(CheckpointError, match="checkpoint path does not exist"):
        BLT.from_pretrained(tmp_path / "acme" / "absent")


def _raises(error):
    def download(*args, **kwargs):
        raise error

    return download


def test_gated_and_private_repos_are_clear_errors(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    response = types.SimpleNamespace(headers={}, request=None, status_code=403)
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", _raises(GatedRepoError("403 gated", response=response))
    )
    for load in (BLT.from_pretrained, EntropyModel.from_pretrained, load_model):
        with pytest.raises(CheckpointError, match=r"hub repo facebook/blt-1b is gated: request access on "
                           r"https://huggingface.co/facebook/blt-1b, then log in"):  # fmt: skip
            load("facebook/blt-1b")
    missing = RepositoryNotFoundError(
        "404", response=types.SimpleNamespace(headers={}, request=None, status_code=404)
    )
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _raises(missing))
    with pytest.raises(
        CheckpointError, match=r"acme/private is neither a local directory nor a hub repo you can read"
    ):
        BLT.from_pretrained("acme/private")


def test_only_the_files_of_the_layout_are_downloaded(tmp_path, monkeypatch):
    """Online: first the small JSON files, then the weights the layout they describe reads."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    folders = {
        "facebook/blt-1b": write_original(tmp_path / "orig", original_args(), entropy_params()),
        "facebook/blt-entropy": tmp_path / "orig" / "entropy_model",
        "acme/ours": tiny_blt().save_pretrained(tmp_path / "ours"),
    }
    calls = []

    def download(repo, **kwargs):
        calls.append((repo, kwargs))
        return str(folders[repo])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    expected = {"facebook/blt-1b": hub.ORIGINAL_WEIGHTS, "facebook/blt-entropy": hub.ENTROPY_FOLDER_WEIGHTS,
                "acme/ours": hub.OURS_WEIGHTS}  # fmt: skip
    for repo, weights in expected.items():
        calls.clear()
        assert hub.resolve(f"{repo}@v1") == folders[repo]
        assert [kwargs["allow_patterns"] for _, kwargs in calls] == [hub.CONFIG_FILES, weights]
        for _, kwargs in calls:
            assert kwargs["revision"] == "v1" and kwargs["local_files_only"] is False
            assert kwargs["cache_dir"] == tmp_path / "cache" and "token" not in kwargs  # the usual login
    assert "consolidated.pth" not in hub.ORIGINAL_WEIGHTS and "*.pth" not in hub.OURS_WEIGHTS


def test_what_reads_as_a_hub_id():
    assert hub.parse_id("facebook/blt-1b") == ("facebook/blt-1b", None)
    assert hub.parse_id("facebook/blt-7b@refs/pr/3") == ("facebook/blt-7b", "refs/pr/3")
    for path in ("runs", "./acme/x", "/abs/dir", "a/b/c", "acme/", "~/models/x"):
        assert hub.parse_id(path) is None
