"""The original facebookresearch/blt release layout (facebook/blt-1b, blt-7b), read as published.

The checkpoints are tiny ones the tests write with the original module names and shapes (tests/original_blt.py);
the reference is transformers' BltForCausalLM on the same weights converted the way its converter does."""

from __future__ import annotations

import json
import os

import pytest
import torch
from original_blt import (
    entropy_params,
    ffn,
    original_args,
    transformers_blt,
    write_entropy_folder,
    write_original,
)
from safetensors.torch import load_file, save_file
from tiny_blt import median_gap, random_ids

from blt.checkpoint import CheckpointError, kind_of
from blt.convert import main as convert_main
from blt.eval.loading import load_model
from blt.model import BLT
from blt.patcher import EntropyModel
from blt.patcher.cli import main as patch_main
from blt.training.pipeline import check_entropy_vocab

SHAPES = [
    {},  # encoder rows k x 32 = global width 64: no projection
    {"glob": 48, "k": 3, "enc_layers": 2, "all_enc": True, "kv_global": 1, "window": 6, "functions": 2,
     "multiplier": 1.5, "theta": 500000.0},  # projection, GQA, two hash functions, a non-default FFN multiplier
    {"all_dec": False, "window": None, "dec_layers": 3, "sizes": (3, 5)},
]  # fmt: skip


def original_dir(tmp_path, seed=0, shape=None, dtype=torch.float32, nest=True, window=16, name="orig"):
    """An original-layout BLT whose threshold sits at the median entropy of its entropy model."""
    directory = write_original(
        tmp_path / name, original_args(**(shape or {})), entropy_params(window), seed, dtype, nest
    )
    entropies = EntropyModel.from_pretrained(directory).entropies(random_ids(2, 64, seed))
    params = json.loads((directory / "entropy_model" / "params.json").read_text())
    params["data"]["patcher_args"]["threshold"] = median_gap(entropies)
    (directory / "entropy_model" / "params.json").write_text(json.dumps(params))
    return directory


@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_logits_match_transformers(tmp_path, shape):
    dtype = torch.bfloat16 if shape == 2 else torch.float32  # the releases store bfloat16
    directory = original_dir(tmp_path, seed=shape, shape=SHAPES[shape], dtype=dtype, nest=shape != 1)
    model = BLT.from_pretrained(directory)
    hf = transformers_blt(directory, attn="sdpa" if shape == 1 else "eager")
    assert not model.training and model.patcher is not None
    assert next(model.parameters()).dtype == torch.float32  # stored bf16, computed in the model's dtype
    with torch.no_grad():
        for seed in range(3):
            ids = random_ids(1, 45, seed=seed)
            ours = model(ids)
            assert 3 < ours.patch_lengths.shape[1] < 45
            torch.testing.assert_close(ours.logits, hf(ids).logits, atol=1e-4, rtol=0)
        ids = random_ids(2, 30, seed=7)
        lengths = torch.tensor([[1, 3, 5, 2, 19], [1, 1, 8, 8, 12]])
        torch.testing.assert_close(
            model(ids, patch_lengths=lengths).logits, hf(ids, patch_lengths=lengths).logits, atol=1e-4, rtol=0
        )


def test_config_follows_the_original_pipeline(tmp_path):
    args = original_args(multiplier=1.5, window=8, theta=500000.0)
    directory = write_original(tmp_path / "o", args, entropy_params(window=None, threshold=1.5))
    config = BLT.from_pretrained(directory).config
    # patching is data.patcher_args (args.patching_threshold 9.0 never reaches the original patcher)
    assert config.patching.threshold == 1.5 and config.patching.patch_size == 4  # 4.5, its integer part
    assert config.patching.max_patch_length is None
    # FFN widths: the original FeedForward rule with the multiplier, which transformers' converter leaves out
    assert config.encoder.ffn_dim == ffn(32, 16, 1.5) == 128
    assert config.global_transformer.ffn_dim == ffn(64, 16, 1.5)
    assert 16 * -(-int(8 * 32 / 3) // 16) == 96  # what the converter would write for the encoder
    assert config.encoder.window == config.decoder.window == 8 and config.global_transformer.window is None
    assert config.encoder.rope_theta == config.global_transformer.rope_theta == 500000.0
    assert config.entropy_model.rope_theta == 10000.0
    assert config.entropy_model.window == 512  # no sliding_window in params.json: the original loader's 512
    assert config.encoder.max_seq_len == 512 and config.global_transformer.max_seq_len == 128
    # train_args.json, where present, is what the original pipeline patches with
    train = {"data": {"patcher_args": {"threshold": 2.25, "patch_size": 6, "max_patch_length": 10}}}
    (directory / "train_args.json").write_text(json.dumps(train))
    patching = BLT.from_pretrained(directory).config.patching
    assert (patching.threshold, patching.patch_size, patching.max_patch_length) == (2.25, 6, 10)


def test_entropy_model_alone(tmp_path):
    directory = original_dir(tmp_path)
    hf = transformers_blt(directory)
    ids = random_ids(2, 80, seed=3)
    expected, _, _ = hf.model.patcher(ids, patch_size=4, threshold=0.0)
    for source in (directory, directory / "entropy_model"):  # the BLT's, and the folder alone (blt-entropy)
        model = EntropyModel.from_pretrained(source)
        assert model.config.window == 16 and not model.training
        torch.testing.assert_close(model.entropies(ids), expected, atol=1e-4, rtol=0)
    folder = directory / "entropy_model"
    assert kind_of(folder) == "blt-entropy-original"
    # the kind names the class that reads it: BLT.from_pretrained, as for a transformers BLT
    assert kind_of(directory) == "blt-original"
    # the hub-style entropy model: config.json {"args": LMTransformerArgs} + model.safetensors
    hub_style = tmp_path / "hub-style"
    hub_style.mkdir()
    lm_args = entropy_params(window=16)["entropy_model"]
    (hub_style / "config.json").write_text(json.dumps({"args": lm_args}))
    state = torch.load(folder / "consolidated.pth", weights_only=True)["model"]
    save_file(state, hub_style / "model.safetensors")
    torch.testing.assert_close(
        EntropyModel.from_pretrained(hub_style).entropies(ids), expected, atol=1e-4, rtol=0
    )


def test_loaders_and_command_lines_take_the_layout(tmp_path, capsys):
    directory = original_dir(tmp_path)
    model = BLT.from_pretrained(directory)
    ids = random_ids(1, 33)
    loaded = load_model(directory)  # blt-eval
    assert loaded.kind == "blt-original" and isinstance(loaded.model, BLT)
    assert load_model(directory / "entropy_model").kind == "blt-entropy-original"
    torch.testing.assert_close(loaded.model(ids).logits, model(ids).logits, atol=0, rtol=0)
    check_entropy_vocab(directory, 260)  # --entropy_checkpoint takes the BLT's entropy model or the folder
    check_entropy_vocab(directory / "entropy_model", 260)
    assert (
        patch_main(["--text", "hello world, hello patches", "--model", str(directory / "entropy_model")]) == 0
    )
    assert "mean patch length" in capsys.readouterr().out
    # blt-convert: original -> ours (the default) and -> transformers, both with the same logits
    assert convert_main([str(directory), str(tmp_path / "ours")]) == 0
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["kind"] == "blt"
    assert convert_main([str(directory), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert "max logit difference" in capsys.readouterr().out
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["model_type"] == "blt" and hf_config["patcher_config"]["sliding_window"] == 16
    with torch.no_grad():
        for out in ("ours", "hf"):
            converted = BLT.from_pretrained(tmp_path / out)
            assert converted.config.entropy_model.window == 16
            torch.testing.assert_close(converted(ids).logits, model(ids).logits, atol=1e-5, rtol=0)
        reference = transformers_blt(directory)(ids).logits
    from transformers import BltForCausalLM

    exported = BltForCausalLM.from_pretrained(tmp_path / "hf").eval()
    exported.config._attn_implementation = "eager"
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, reference, atol=1e-4, rtol=0)


def test_bfloat16_weights_load_as_stored(tmp_path):
    directory = original_dir(tmp_path, dtype=torch.bfloat16, nest=False)
    stored = load_file(directory / "model.safetensors")
    assert stored["local_decoder.output.weight"].dtype == torch.bfloat16
    model = BLT.from_pretrained(directory)
    assert torch.equal(model.decoder.lm_head.weight, stored["local_decoder.output.weight"].float())
    ids = random_ids(1, 40)
    with torch.no_grad():
        full = model(ids)
        half = model.to(torch.bfloat16)(ids)  # computing in the dtype asked for
    assert half.logits.dtype == torch.float32 and (half.logits - full.logits).abs().max() < 0.5


# ----------------------------------------------------------------------------------------------------------
# bad input: each a clear error naming the problem


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_rope": False}, r"args\.use_rope is False; this model implements only True"),
        ({"non_linearity": "gelu"}, r"args\.non_linearity is 'gelu'"),
        ({"cross_attn_encoder": False}, r"args\.cross_attn_encoder is False"),
        ({"cross_attn_decoder": False}, r"args\.cross_attn_decoder is False"),
        ({"patching_mode": "space"}, r"args\.patching_mode is 'space' with patch_in_forward"),
        ({"downsampling_by_pooling": "avg"}, r"args\.downsampling_by_pooling is 'avg'"),
        ({"cross_attn_nheads": 4}, r"args\.cross_attn_nheads is 4.*n_heads_local_encoder \(2\)"),
        ({"n_kv_heads": 1}, r"args\.n_kv_heads is 1"),
        ({"encoder_enable_byte_ngrams": True}, r"args\.encoder_enable_byte_ngrams is True"),
        ({"dim_local_decoder": 64}, r"args\.dim_local_decoder must equal dim_local_encoder"),
        ({"cross_attn_k": None}, r"args\.cross_attn_k is required"),
        ({"ffn_dim_multiplier": 2.0}, r"local_encoder\.layers\.0\.feed_forward\.w1\.weight has 96 rows, but args give 176"),
        ({"encoder_hash_byte_group_nb_functions": 2}, r"3 hash tables encoder_hash_tok_embedding\.\*, but args give 6"),
    ],
)  # fmt: skip
def test_unimplemented_args_are_refused_by_name(tmp_path, change, message):
    directory = write_original(tmp_path / "o", original_args(), entropy_params())
    config = json.loads((directory / "config.json").read_text())
    config["args"].update(change)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        BLT.from_pretrained(directory)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"patching_mode": "bpe"}, r"data\.patcher_args\.patching_mode is 'bpe'"),
        ({"monotonicity": True}, r"data\.patcher_args\.monotonicity"),
        ({"threshold": "high"}, r"data\.patcher_args\.threshold must be a number"),
    ],
)
def test_unimplemented_patcher_args_are_refused_by_name(tmp_path, change, message):
    params = entropy_params()
    params["data"]["patcher_args"].update(change)
    directory = write_original(tmp_path / "o", original_args(), params)
    with pytest.raises(CheckpointError, match=message):
        BLT.from_pretrained(directory)


def test_directories_that_mix_layouts_are_refused(tmp_path):
    directory = write_original(tmp_path / "o", original_args(), entropy_params())
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(dict(config, model_type="blt")))
    for load in (BLT.from_pretrained, EntropyModel.from_pretrained, kind_of):
        with pytest.raises(
            CheckpointError, match="mixes checkpoint layouts: its config.json is a transformers"
        ):
            load(directory)
    # one of our checkpoints written into a released directory
    other = write_original(tmp_path / "o2", original_args(), entropy_params())
    BLT.from_pretrained(other).save_pretrained(directory)
    with pytest.raises(
        CheckpointError,
        match=r"config.json is of kind 'blt', yet there is the original release's entropy_model/params.json",
    ):
        BLT.from_pretrained(directory)
    # the original config over weights named as in the transformers layout
    renamed = {f"model.{k}": v for k, v in load_file(other / "model.safetensors").items()}
    save_file(renamed, other / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"mixes checkpoint layouts: tensor 'model\."):
        BLT.from_pretrained(other)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    directory = write_original(tmp_path / "o", original_args(), entropy_params())
    pickle = directory / "entropy_model" / "consolidated.pth"
    state = torch.load(pickle, weights_only=True)
    torch.save({"model": state["model"], "extra": _RunsCode()}, pickle)
    for load in (BLT.from_pretrained, EntropyModel.from_pretrained):
        with pytest.raises(
            CheckpointError, match=r"refusing .*consolidated\.pth: it is not a plain state dict"
        ) as err:
            load(directory)
        assert "system" in str(err.value) and "weights_only=False" not in str(err.value)
    assert not (tmp_path / "pwned").exists()


def test_params_without_an_entropy_model_are_refused(tmp_path):
    params = entropy_params()
    del params["entropy_model"]
    folder = tmp_path / "entropy_model"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps(params))
    with pytest.raises(CheckpointError, match=r"params\.json has no 'entropy_model' section"):
        EntropyModel.from_pretrained(folder)
    directory = write_original(tmp_path / "o", original_args(), entropy_params())
    (directory / "entropy_model" / "params.json").write_text(json.dumps(params))
    with pytest.raises(CheckpointError, match=r"entropy_model/params\.json has no 'entropy_model' section"):
        BLT.from_pretrained(directory)


def test_missing_and_misshaped_tensors_are_named_as_released(tmp_path):
    directory = write_original(tmp_path / "o", original_args(), entropy_params())
    state = load_file(directory / "model.safetensors")
    state["local_decoder.norm.weight"] = torch.ones(7)
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor 'local_decoder\.norm\.weight' has shape \(7,\)"):
        BLT.from_pretrained(directory)
    del state["local_decoder.norm.weight"]
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensor 'local_decoder\.norm\.weight'"):
        BLT.from_pretrained(directory)
    write_entropy_folder(directory / "entropy_model", entropy_params(dim=64))
    (directory / "entropy_model" / "params.json").write_text(json.dumps(entropy_params()))  # params disagree
    with pytest.raises(
        CheckpointError, match=r"consolidated\.pth.*layers\.0\.feed_forward\.w1\.weight has 176 rows"
    ):
        EntropyModel.from_pretrained(directory)
