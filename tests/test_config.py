"""Config dataclasses (from_dict, their checks) and the command-line layer over them (blt.cli)."""

import math

import pytest

from blt import cli
from blt.config import (
    BLTConfig,
    ConfigError,
    EntropyModelConfig,
    LocalEncoderConfig,
    PatchingConfig,
    TransformerConfig,
    from_dict,
    to_dict,
)
from blt.data import DataConfig

# ----------------------------------------------------------------------------------------------------------
# from_dict and the dataclasses' own checks


def test_unknown_key_is_named_with_its_section():
    with pytest.raises(ConfigError, match="unknown config key 'encoder.dimm'"):
        from_dict(BLTConfig, {"encoder": {"dimm": 64}})
    with pytest.raises(ConfigError, match="'sequence_length'"):
        from_dict(DataConfig, {"sequence_length": 64})


def test_from_dict_builds_nested_sections():
    config = from_dict(
        BLTConfig, {"encoder": {"dim": 64, "hash_ngram_sizes": [3, 4]}, "patching": {"scheme": "static"}}
    )
    assert config.encoder.dim == 64 and config.encoder.hash_ngram_sizes == [3, 4]
    assert config.patching.scheme == "static"
    assert config.decoder == BLTConfig().decoder  # untouched sections keep their defaults


def test_wrong_types_in_from_dict_name_the_key():
    with pytest.raises(ConfigError, match="cross_attn_k"):
        from_dict(BLTConfig, {"cross_attn_k": "x"})
    with pytest.raises(ConfigError, match="encoder.dim"):
        from_dict(BLTConfig, {"encoder": {"dim": "wide"}})


def test_nan_threshold_is_rejected():
    with pytest.raises(ConfigError, match="threshold must be a number, got NaN"):
        from_dict(PatchingConfig, {"threshold": math.nan})


def test_model_configs_validate_shapes():
    with pytest.raises(ConfigError, match="divisible by n_heads"):
        TransformerConfig(dim=30, n_heads=4)
    with pytest.raises(ConfigError, match="n_kv_heads"):
        TransformerConfig(dim=64, n_heads=4, n_kv_heads=3)
    with pytest.raises(ConfigError, match="dropout"):
        from_dict(TransformerConfig, {"dropout": 1.0})
    with pytest.raises(ConfigError, match="hash_ngram_sizes"):
        LocalEncoderConfig(hash_ngram_sizes=[0])


def test_zero_or_negative_kv_heads_and_ffn_dim_are_rejected():
    # 0 used to be taken silently as "same as n_heads" / "the default size"
    with pytest.raises(ConfigError, match="n_kv_heads must be > 0"):
        TransformerConfig(dim=32, n_heads=4, n_kv_heads=0)
    with pytest.raises(ConfigError, match="ffn_dim must be > 0"):
        TransformerConfig(dim=32, n_heads=4, ffn_dim=0)
    with pytest.raises(ConfigError, match="ffn_dim must be > 0"):
        from_dict(BLTConfig, {"decoder": {"ffn_dim": -1}})


def test_section_checks_name_their_section():
    with pytest.raises(ConfigError, match=r"encoder: dim \(30\) must be divisible by n_heads \(4\)"):
        from_dict(BLTConfig, {"encoder": {"dim": 30, "n_heads": 4}})
    with pytest.raises(ConfigError, match=r"global_transformer: window must be positive"):
        from_dict(BLTConfig, {"global_transformer": {"window": 0}})
    with pytest.raises(ConfigError, match="patching.max_patch_length must be > 0"):
        from_dict(BLTConfig, {"patching": {"max_patch_length": 0}})


def test_nested_config_round_trips_through_dict():
    config = BLTConfig(entropy_model=EntropyModelConfig(dim=32, n_layers=1, n_heads=2))
    again = from_dict(BLTConfig, to_dict(config))
    assert again == config
    assert to_dict(again)["entropy_model"]["dim"] == 32


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


# ----------------------------------------------------------------------------------------------------------
# the command line: blt.cli over the same dataclasses


def blt_parser():
    parser = cli.new_parser("prog", "a test command")
    cli.add_section(parser, "blt", BLTConfig)
    cli.add_section(parser, "data", DataConfig)
    return parser


def parse(*args: str) -> BLTConfig:
    return cli.section(blt_parser().parse_args(list(args)), "blt", BLTConfig)


def refused(capsys, *args: str) -> str:
    """The one-line error of a command line the parser refuses with exit code 2."""
    with pytest.raises(SystemExit) as e:
        blt_parser().parse_args(list(args))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prog: error: "), err
    return err


def test_command_line_values_are_typed():
    config = parse(
        "--blt.encoder.dim", "64", "--blt.encoder.hash_ngram_sizes", "[3, 4]", "--blt.patching.threshold=1.5",
        "--blt.patching.scheme", "static", "--blt.decoder.cross_attn_all_layers", "false",
        "--blt.global_transformer.window", "null",
    )  # fmt: skip
    assert config.encoder.dim == 64 and isinstance(config.encoder.dim, int)
    assert config.encoder.hash_ngram_sizes == [3, 4]
    assert config.patching.threshold == 1.5 and config.patching.scheme == "static"
    assert config.decoder.cross_attn_all_layers is False
    assert config.global_transformer.window is None
    assert config.global_transformer.dim == 256  # a default_factory section keeps its own defaults


@pytest.mark.parametrize(
    "args, key",
    [
        (["--blt.encoder.dim", "abc"], "blt.encoder.dim"),
        (["--blt.encoder.dim", "1.5"], "blt.encoder.dim"),
        (["--blt.patching.scheme", "words"], "blt.patching.scheme"),
        (["--blt.decoder.cross_attn_all_layers", "maybe"], "blt.decoder.cross_attn_all_layers"),
        (["--blt.encoder.hash_ngram_sizes", "[3, x]"], "blt.encoder.hash_ngram_sizes"),
        (["--blt.encoder.nope", "1"], "blt.encoder.nope"),
        (["--blt.encoder.dim"], "blt.encoder.dim"),
        (["--blt.patching.threshold", "nan"], "blt.patching.threshold"),
    ],
)
def test_bad_command_lines_name_the_key_in_one_line(args, key, capsys):
    assert key in refused(capsys, *args)


def test_a_type_error_says_what_was_expected_and_given(capsys):
    err = refused(capsys, "--blt.cross_attn_k", "x")
    assert "blt.cross_attn_k: expected int. Got value: x" in err


def test_dataclass_checks_run_when_the_section_is_built():
    with pytest.raises(ConfigError, match=r"blt.encoder: dim \(30\) must be divisible by n_heads \(4\)"):
        parse("--blt.encoder.dim", "30", "--blt.encoder.n_heads", "4")


def test_config_files_later_ones_win_and_their_errors_name_the_file_or_key(tmp_path, capsys):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("blt:\n  encoder: {dim: 64, n_layers: 3}\ndata: {seq_len: 64}\n")
    second.write_text("blt:\n  encoder: {dim: 96}\n")
    config = parse("--config", str(first), "--config", str(second))
    assert (config.encoder.dim, config.encoder.n_layers) == (96, 3)
    # options apply in order: a flag after the file wins, one before it does not
    assert parse("--config", str(first), "--blt.encoder.dim", "32").encoder.dim == 32
    assert parse("--blt.encoder.dim", "32", "--config", str(first)).encoder.dim == 64

    typo = tmp_path / "typo.yaml"
    typo.write_text("blt:\n  encoder:\n    widht: 3\n")
    assert "unknown config key 'blt.encoder.widht'" in refused(capsys, "--config", str(typo))
    assert "missing.yaml" in refused(capsys, "--config", str(tmp_path / "missing.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("blt: [unclosed\n")
    assert "config" in refused(capsys, "--config", str(broken))


def test_help_documents_every_field(capsys):
    with pytest.raises(SystemExit) as e:
        blt_parser().parse_args(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps long lines
    for name, text in cli.field_docs(DataConfig, "data.").items():
        assert f"--{name}" in out and " ".join(text.split()) in out
    assert "--blt.encoder.hash_vocab" in out and "--blt.patching.threshold" in out


@pytest.mark.parametrize(
    "message, line",
    [
        ("Parser key \"a.b\":\n  Expected a <class 'int'>. Got value: x", "a.b: expected int. Got value: x"),
        ("Subcommand 'blt' does not accept option 'blt.x'", "unknown config key 'blt.x'"),
        ("Group 'blt' does not accept option 'encoder.x'", "unknown config key 'blt.encoder.x'"),
        ("Option 'bltt.x' is not accepted", "unknown config key 'bltt.x'"),
        ("unrecognized arguments: --a.b 2", "unrecognized arguments: --a.b 2"),
        (
            "Parser key \"p\":\n  Does not validate\n  Errors:\n    - Expected a typing.Literal['a', 'b']\n"
            "    - Expected a <class 'NoneType'>\n  Given value: c",
            "p: expected one of ['a', 'b'] or null. Got value: c",
        ),
    ],
)
def test_jsonargparse_errors_become_one_line(message, line):
    assert cli.one_line(message) == line
