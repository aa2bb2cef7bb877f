"""Parity with transformers' BltForCausalLM: loading its directories, exporting back, blt-convert."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_blt import median_gap, random_ids, tiny_blt, tiny_shape
from transformers import BltConfig, BltForCausalLM

from blt.checkpoint import CheckpointError
from blt.convert import main as convert_main
from blt.model import BLT

SHAPES = [
    {},  # encoder and global widths match: no token_embedding_projection
    {
        "glob": 48,
        "k": 3,
        "enc_layers": 2,
        "all_enc": True,
        "kv": 1,
        "window": 6,
    },  # projection, GQA, all-layer encoder
    {"all_dec": False, "window": None, "dec_layers": 3, "sizes": [3, 5]},
]


def hf_blt(seed=0, kv=None, sizes=None, attn="eager", **shape):
    """A random tiny transformers BLT of tiny_blt.SHAPE with the ``shape`` values given."""
    s = tiny_shape(**shape)
    torch.manual_seed(seed)
    config = BltConfig(
        encoder_config={
            "hidden_size": s.enc,
            "num_attention_heads": 2,
            "num_hidden_layers": s.enc_layers,
            "num_key_value_heads": kv,
            "cross_attn_all_layers": s.all_enc,
            "cross_attn_k": s.k,
            "hidden_size_global": s.glob,
        },
        decoder_config={
            "hidden_size": s.enc,
            "num_attention_heads": 2,
            "num_hidden_layers": s.dec_layers,
            "intermediate_size": 48,
            "cross_attn_all_layers": s.all_dec,
            "cross_attn_k": s.k,
            "hidden_size_global": s.glob,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0},
        },
        global_config={
            "hidden_size": s.glob,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "intermediate_size": 96,
        },
        patcher_config={
            "hidden_size": 32,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "intermediate_size": 64,
            "sliding_window": 16,
        },
        encoder_hash_byte_group_size=sizes,
        encoder_hash_byte_group_vocab=97,
        cross_attn_k=s.k,
        local_attention_window_len=s.window,
        use_cache=False,
    )
    config._attn_implementation = attn
    model = BltForCausalLM(config).eval()
    # threshold at the median entropy, so patches vary in length
    entropies, _, _ = model.model.patcher(random_ids(2, 64), patch_size=4, threshold=0.0)
    model.config.patching_threshold = median_gap(entropies)
    return model


@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_logits_match_transformers(tmp_path, shape):
    hf = hf_blt(seed=shape, attn="sdpa" if shape == 1 else "eager", **SHAPES[shape])
    hf.save_pretrained(tmp_path)
    model = BLT.from_pretrained(tmp_path)
    assert not model.training and model.patcher is not None
    assert model.config.patching.threshold == pytest.approx(hf.config.patching_threshold)
    with torch.no_grad():
        for seed in range(3):  # the checkpoint's own entropy patching
            ids = random_ids(1, 45, seed=seed)
            ours = model(ids)
            assert 3 < ours.patch_lengths.shape[1] < 45
            torch.testing.assert_close(ours.logits, hf(ids).logits, atol=1e-4, rtol=0)
        ids = random_ids(2, 30, seed=7)
        lengths = torch.tensor([[1, 3, 5, 2, 19], [1, 1, 8, 8, 12]])  # explicit patch lengths
        torch.testing.assert_close(
            model(ids, patch_lengths=lengths).logits, hf(ids, patch_lengths=lengths).logits, atol=1e-4, rtol=0
        )


def test_sharded_checkpoint_loads(tmp_path):
    """Large released checkpoints come as an index + shards (transformers' max_shard_size)."""
    hf = hf_blt(seed=3)
    hf.save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(list(tmp_path.glob("*.safetensors"))) > 2
    model = BLT.from_pretrained(tmp_path)
    ids = random_ids(1, 40, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(ids).logits, atol=1e-4, rtol=0)
    next(tmp_path.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="shard model-00002.* is missing"):
        BLT.from_pretrained(tmp_path)


def test_export_to_transformers(tmp_path):
    model = tiny_blt()
    model.save_pretrained(tmp_path / "hf", format="hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "blt" and config["patch_in_forward"] is True
    hf = BltForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf.config._attn_implementation = "eager"
    with torch.no_grad():
        for seed in range(2):
            ids = random_ids(1, 40, seed=seed)
            torch.testing.assert_close(hf(ids).logits, model(ids).logits, atol=1e-4, rtol=0)
    # and back: our loader reads its own export identically
    again = BLT.from_pretrained(tmp_path / "hf")
    ids = random_ids(2, 33)
    torch.testing.assert_close(again(ids).logits, model(ids).logits, atol=0, rtol=0)
    assert again.config.patching == model.config.patching


def test_export_refuses_what_transformers_cannot_express(tmp_path):
    model = tiny_blt()
    model.config.decoder.window = 4
    with pytest.raises(ValueError, match="one local window"):
        model.save_pretrained(tmp_path, format="hf")


def test_hf_checkpoint_errors(tmp_path):
    hf = hf_blt()
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["encoder_config"]["hidden_size"] = 64  # tensors no longer fit the config
    config["decoder_config"]["hidden_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="tensor 'model.local_encoder.embed_tokens.weight' has shape"):
        BLT.from_pretrained(tmp_path)
    config["decoder_config"]["hidden_size_global"] = 7
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="hidden_size_global"):
        BLT.from_pretrained(tmp_path)
    config["encoder_config"] = [1]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="encoder_config must be a JSON object"):
        BLT.from_pretrained(tmp_path)


def test_convert_cli(tmp_path, capsys):
    hf_blt().save_pretrained(tmp_path / "hf")
    assert convert_main([str(tmp_path / "hf"), str(tmp_path / "ours")]) == 0
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["kind"] == "blt"
    assert convert_main([str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    assert "max logit difference" in capsys.readouterr().out
    a, b = BLT.from_pretrained(tmp_path / "hf"), BLT.from_pretrained(tmp_path / "back")
    ids = random_ids(1, 20)
    torch.testing.assert_close(a(ids).logits, b(ids).logits, atol=0, rtol=0)
    # a model already at DST is kept unless --overwrite says otherwise; an empty folder is no model
    (tmp_path / "empty").mkdir()
    assert convert_main([str(tmp_path / "back"), str(tmp_path / "empty"), "--to", "blt"]) == 0
    assert json.loads((tmp_path / "empty" / "config.json").read_text())["kind"] == "blt"
    before = (tmp_path / "ours" / "config.json").read_text()
    assert convert_main([str(tmp_path / "back"), str(tmp_path / "ours"), "--to", "hf"]) == 2
    assert "exists and is not an empty folder: pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "ours" / "config.json").read_text() == before
    assert convert_main([str(tmp_path / "back"), str(tmp_path / "ours"), "--to", "hf", "--overwrite"]) == 0
    assert "model_type" in json.loads((tmp_path / "ours" / "config.json").read_text())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["NOWHERE", "X"], "does not exist"),
        (["SRC", "SRC_AGAIN", "--overwrite"], "DST must differ from SRC"),  # would overwrite SRC
        (["SRC", "X", "--to", "gguf"], "to: expected one of ['hf', 'blt']. Got value: gguf"),
        (["SRC"], "dst"),
        (["SRC", "X", "--format", "hf"], "unrecognized arguments: --format"),
    ],
)
def test_convert_cli_errors(argv, message, tmp_path, capsys):
    tiny_blt().save_pretrained(tmp_path / "src")
    before = (tmp_path / "src" / "config.json").read_text()
    paths = {"NOWHERE": tmp_path / "nowhere", "X": tmp_path / "x", "SRC": tmp_path / "src", "SRC_AGAIN": tmp_path / "." / "src"}
    assert convert_main([str(paths.get(a, a)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blt-convert: error: ") and message in err
    assert (tmp_path / "src" / "config.json").read_text() == before and not (tmp_path / "x").exists()


def test_saving_over_a_sharded_checkpoint_replaces_it(tmp_path):
    hf_blt(seed=3).save_pretrained(tmp_path, max_shard_size="200KB")
    model = tiny_blt(seed=5)
    model.save_pretrained(tmp_path)  # our layout, into the folder that still holds the old shards
    ids = random_ids(1, 30, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(BLT.from_pretrained(tmp_path)(ids).logits, model(ids).logits)
    model.save_pretrained(tmp_path, format="hf")
    with torch.no_grad():
        torch.testing.assert_close(BLT.from_pretrained(tmp_path)(ids).logits, model(ids).logits)
