"""blt.cli's parsing helpers: one-line errors, what the user set, run files as --config, quiet broken pipes."""

import os

import pytest

from blt import cli
from blt.config import PatchingConfig, TransformerConfig


def parser_with_sections():
    parser = cli.new_parser("prog", "a test command")
    parser.add_argument("--steps", type=int, default=3, help="how many")
    cli.add_section(parser, "patching", PatchingConfig)
    cli.add_section(parser, "model", TransformerConfig)
    cli.add_unread_sections(parser, ["trainer", "optim"])
    return parser


def test_given_fields_are_only_what_the_user_set(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("patching:\n  scheme: static\n  patch_size: 3\nmodel:\n  dim: 64\n")
    argv = ["--config", str(config), "--patching.patch_size", "5", "--steps", "7"]
    parser = parser_with_sections()
    args, given = cli.parse(parser, argv), cli.parse(parser, argv, defaults=False)
    assert cli.section(args, "patching", PatchingConfig) == PatchingConfig(scheme="static", patch_size=5)
    assert cli.given_fields(given, "patching") == {"scheme": "static", "patch_size": 5}  # the flag wins
    assert cli.given_fields(given, "model") == {"dim": 64}
    assert given.steps == 7 and args.model.n_layers == 2
    assert cli.given_fields(cli.parse(parser, [], defaults=False), "patching") == {}


def test_overrides_are_the_fields_set_and_print_config_round_trips(tmp_path, capsys):
    parser = cli.new_parser("prog", "a test command")
    cli.add_overrides(parser, "patching", PatchingConfig)
    assert cli.overrides(cli.parse(parser, []), "patching") == {}
    args = cli.parse(parser, ["--patching.threshold", "2", "--patching.scheme", "combined"])
    assert cli.overrides(args, "patching") == {"threshold": 2.0, "scheme": "combined"}
    assert "global entropy threshold in nats" in parser.format_help()  # the field's documentation
    with pytest.raises(SystemExit):
        cli.parse(parser, ["--patching.patch_size", "3", "--print_config"])
    (tmp_path / "printed.yaml").write_text(capsys.readouterr().out)
    assert cli.overrides(cli.parse(parser, ["--config", str(tmp_path / "printed.yaml")]), "patching") == {
        "patch_size": 3
    }
    with pytest.raises(cli.UsageError, match="patching.scheme"):
        cli.parse(parser, ["--patching.scheme", "bpe"])


def test_a_run_file_with_sections_the_command_does_not_read(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  dim: 32\n  n_heads: 2\ntrainer:\n  max_steps: 9\noptim: {lr: 0.1}\n")
    parser = parser_with_sections()
    args = cli.parse(parser, ["--config", str(config)])
    assert cli.section(args, "model", TransformerConfig) == TransformerConfig(dim=32, n_heads=2)
    assert "trainer" not in parser.format_help() and "--model.dim" in parser.format_help()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--stpes", "1"], "unrecognized arguments: --stpes"),
        (["--step", "1"], "unrecognized arguments: --step"),  # abbreviations are typos too
        (["--steps", "many"], "steps: expected int. Got value: many"),
        (["--patching.scheme", "bpe"], "patching.scheme: expected one of ["),
        (["--model.widht", "8"], "unrecognized arguments: --model.widht"),
        (["--config", "{missing}"], "File does not exist: '{missing}'"),
        (["--config", "{bad_yaml}"], "--config {bad_yaml}: Problems parsing config"),  # which file
        (["--config", "{bad_key}"], "unknown config key 'model.widht'"),
    ],
)
def test_refused_command_lines_are_one_line_errors(argv, message, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("model: [\n")
    (tmp_path / "key.yaml").write_text("model:\n  widht: 3\n")
    paths = {
        "missing": tmp_path / "nope.yaml",
        "bad_yaml": tmp_path / "bad.yaml",
        "bad_key": tmp_path / "key.yaml",
    }
    argv, message = [a.format(**paths) for a in argv], message.format(**paths)
    with pytest.raises(cli.UsageError) as refused:
        cli.parse(parser_with_sections(), argv)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert cli.main("prog", lambda argv: cli.parse(parser_with_sections(), argv), argv) == 2
    assert capsys.readouterr().err == f"prog: error: {refused.value}\n"


def test_subcommand_errors_are_one_line_errors_too():
    parser = cli.new_parser("top", "a command with subcommands", config_file=False)
    commands = parser.add_subcommands(dest="command")
    sub = cli.new_parser("top run", "a subcommand")
    sub.add_argument("--steps", type=int, default=1)
    commands.add_subcommand("run", sub)
    assert cli.parse(parser, ["run", "--steps", "4"]).run.steps == 4
    for argv, message in ((["run", "--bogus"], "--bogus"), (["jump"], "jump"), ([], "run")):
        with pytest.raises(cli.UsageError, match=message):
            cli.parse(parser, argv)
    assert parser.exit_on_error and sub.exit_on_error  # restored for the parser's other users


def test_output_into_a_closed_pipe_ends_quietly(capfd):
    def run(argv):
        raise BrokenPipeError(32, "Broken pipe")

    saved = os.dup(1)
    try:
        assert cli.main("prog", run, []) == 0
    finally:
        os.dup2(saved, 1)  # main sent stdout to /dev/null for the exit-time flush
        os.close(saved)
    assert capfd.readouterr().err == ""
