import math

import pytest

from blt.config import (
    BLTConfig,
    ConfigError,
    EntropyModelConfig,
    LocalEncoderConfig,
    PatchingConfig,
    TransformerConfig,
    apply_overrides,
    describe,
    from_dict,
    load_yaml,
    parse_overrides,
    to_dict,
)
from blt.data import DataConfig


def test_unknown_key_is_named_with_its_section():
    with pytest.raises(ConfigError, match="unknown config key 'encoder.dimm'"):
        from_dict(BLTConfig, {"encoder": {"dimm": 64}})
    with pytest.raises(ConfigError, match="unknown config key 'sequence_length'.*seq_len"):
        from_dict(DataConfig, {"sequence_length": 64})


def test_overrides_are_coerced_to_field_types():
    config = apply_overrides(
        BLTConfig(),
        [
            "--encoder.dim",
            "64",
            "--encoder.hash_ngram_sizes",
            "3,4",
            "--patching.threshold=1.5",
            "--patching.scheme",
            "static",
            "--decoder.cross_attn_all_layers",
            "false",
            "--global_transformer.window",
            "none",
            "--encoder.hash_vocab",
            "1_000",
        ],
    )
    assert config.encoder.dim == 64 and isinstance(config.encoder.dim, int)
    assert config.encoder.hash_ngram_sizes == [3, 4]
    assert config.patching.threshold == 1.5
    assert config.patching.scheme == "static"
    assert config.decoder.cross_attn_all_layers is False
    assert config.global_transformer.window is None
    assert config.encoder.hash_vocab == 1000
    assert BLTConfig().encoder.dim == 128  # the original is untouched


@pytest.mark.parametrize(
    "args, message",
    [
        (["--encoder.dim", "abc"], "encoder.dim: expected an integer"),
        (["--encoder.dim", "1.5"], "encoder.dim: expected an integer"),
        (["--patching.scheme", "words"], "patching.scheme: 'words' is not one of"),
        (["--decoder.cross_attn_all_layers", "maybe"], "expected true or false"),
        (["--encoder.nope", "1"], "unknown config key 'encoder.nope'"),
        (["--encoder.dim"], "option --encoder.dim needs a value"),
        (["encoder.dim", "4"], "expected an option like --section.key"),
    ],
)
def test_bad_overrides_name_the_key(args, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(BLTConfig(), args)


def test_parse_overrides_nests_dotted_keys():
    assert parse_overrides(["--a.b", "1", "--a.c=x", "--d", "2"]) == {"a": {"b": "1", "c": "x"}, "d": "2"}


@pytest.mark.parametrize("value", [math.nan, "nan", "NaN"])
def test_nan_threshold_is_rejected(value):
    with pytest.raises(ConfigError, match="threshold must be a number, got NaN"):
        from_dict(PatchingConfig, {"threshold": value})
    with pytest.raises(ConfigError, match="threshold must be a number"):
        apply_overrides(BLTConfig(), ["--patching.threshold", "nan"])


def test_model_configs_validate_shapes():
    with pytest.raises(ConfigError, match="divisible by n_heads"):
        TransformerConfig(dim=30, n_heads=4)
    with pytest.raises(ConfigError, match="n_kv_heads"):
        TransformerConfig(dim=64, n_heads=4, n_kv_heads=3)
    with pytest.raises(ConfigError, match="dropout"):
        from_dict(TransformerConfig, {"dropout": 1.0})
    with pytest.raises(ConfigError, match="hash_ngram_sizes"):
        LocalEncoderConfig(hash_ngram_sizes=[0])


def test_nested_config_round_trips_through_dict():
    config = BLTConfig(entropy_model=EntropyModelConfig(dim=32, n_layers=1, n_heads=2))
    again = from_dict(BLTConfig, to_dict(config))
    assert again == config
    assert to_dict(again)["entropy_model"]["dim"] == 32


def test_load_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_yaml(listing)
    good = tmp_path / "run.yaml"
    good.write_text("data:\n  seq_len: 64\n  source: corpus.txt\nblt:\n  encoder: {dim: 64}\n")
    sections = load_yaml(good)
    assert from_dict(DataConfig, sections["data"]).seq_len == 64
    assert from_dict(BLTConfig, sections["blt"]).encoder.dim == 64
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(empty) == {}


def test_describe_documents_every_field():
    rows = {name: (tp, text) for name, tp, text in describe(DataConfig)}
    assert set(rows) == {f"--{k}" for k in to_dict(DataConfig())}
    assert all(text and "(default:" in text for _, text in rows.values())
    assert rows["--seq_len"][0] == "int"
    nested = [name for name, _, _ in describe(BLTConfig)]
    assert "--encoder.hash_vocab" in nested and "--patching.threshold" in nested


@pytest.mark.parametrize(
    "values, message",
    [
        ({"seq_len": 1}, "seq_len must be at least 2"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"val_fraction": -0.1}, r"val_fraction must be in \[0, 1\)"),
        ({"max_bytes": 0}, "max_bytes must be > 0"),
        ({"max_doc_bytes": 0}, "max_doc_bytes must be > 0"),
        ({"source": ""}, "source must not be empty"),
        ({"text_field": ""}, "text_field must not be empty"),
    ],
)
def test_data_config_rejects_bad_values(values, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(DataConfig, values)


def test_zero_or_negative_kv_heads_and_ffn_dim_are_rejected():
    # 0 used to be taken silently as "same as n_heads" / "the default size"
    with pytest.raises(ConfigError, match="n_kv_heads must be > 0"):
        TransformerConfig(dim=32, n_heads=4, n_kv_heads=0)
    with pytest.raises(ConfigError, match="ffn_dim must be > 0"):
        TransformerConfig(dim=32, n_heads=4, ffn_dim=0)
    with pytest.raises(ConfigError, match="ffn_dim must be > 0"):
        apply_overrides(BLTConfig(), ["--decoder.ffn_dim", "-1"])


def test_malformed_list_override_is_a_config_error():
    with pytest.raises(ConfigError, match=r"encoder.hash_ngram_sizes: '\[3,4' is not a valid list"):
        apply_overrides(BLTConfig(), ["--encoder.hash_ngram_sizes", "[3,4"])


def test_section_checks_name_their_section():
    with pytest.raises(ConfigError, match=r"^encoder: dim \(30\) must be divisible by n_heads \(4\)"):
        from_dict(BLTConfig, {"encoder": {"dim": 30, "n_heads": 4}})
    with pytest.raises(ConfigError, match=r"^global_transformer: window must be positive"):
        apply_overrides(BLTConfig(), ["--global_transformer.window", "0"])
    with pytest.raises(ConfigError, match="^patching.max_patch_length must be > 0"):  # already named
        apply_overrides(BLTConfig(), ["--patching.max_patch_length", "0"])
    with pytest.raises(ConfigError, match="BLTConfig: expected a mapping"):
        from_dict(BLTConfig, [1, 2])
