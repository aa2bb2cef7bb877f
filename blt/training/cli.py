"""``train.py`` / ``blt-train``: train the entropy model, the BLT or the tokenized baseline.

    python train.py {entropy,blt,baseline} [--config FILE ...] [--section.key value ...]
                    [--resume last|PATH] [--overwrite] [--entropy_checkpoint DIR] [--print_config] [--help]

The command line of LightningCLI (jsonargparse, see :mod:`blt.cli`): YAML files of sections overridden by
``--section.key value``. The sections are ``data``, the models the command trains (``entropy``; ``entropy``
and ``blt``; ``baseline``), ``optim``, ``run`` (the package's own run settings) and ``trainer``
(Lightning's ``Trainer`` arguments, under Lightning's names). A config file may also hold the model
sections of the other commands (one file serves all three); a command does not read them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import lightning as L
import yaml

from blt import cli
from blt.config import ConfigError, to_dict
from blt.data import DataConfig
from blt.training.callbacks import NonFiniteLossError
from blt.training.config import (
    COMMANDS,
    MODELS,
    READS,
    TRAINER_DEFAULTS,
    TRAINER_SKIP,
    OptimConfig,
    RunConfig,
    TrainConfig,
    check_trainer,
)
from blt.training.pipeline import Flags, run_command

ABOUT = {
    "entropy": "train the byte-level entropy model",
    "blt": "train the entropy model (unless --entropy_checkpoint), calibrate its patching, train the BLT",
    "baseline": "train a SentencePiece BPE tokenizer and a Llama-style transformer over it",
}


def command_parser(command: str | None):
    """The parser of one command (None: every model section, for tools that read a run file)."""
    reads = READS[command] if command else tuple(MODELS)
    parser = cli.new_parser(f"train.py {command or ''}".strip(), ABOUT.get(command, ""), print_config=False)
    parser.add_argument(
        "--print_config", action="store_true", help="print the merged sections this command reads and exit"
    )
    parser.add_argument(
        "--resume",
        type=str | None,
        default=None,
        help="continue the run: 'last' (its checkpoints/last.ckpt) or a checkpoint file; a finished run "
        "is left as it is unless --trainer.max_steps is larger",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the run already in the run directory (deletes it)"
    )
    if command == "blt":
        parser.add_argument(
            "--entropy_checkpoint",
            type=str | None,
            default=None,
            help="patch with this trained entropy model (or run directory) instead of training one",
        )
    cli.add_section(parser, "data", DataConfig)
    for name in reads:
        cli.add_section(parser, name, MODELS[name])
    for name in MODELS:  # one file serves all commands: the others' sections are accepted, not read
        if name not in reads:
            parser.add_argument(f"--{name}", type=dict | None, default=None, help=argparse.SUPPRESS)
    cli.add_section(parser, "optim", OptimConfig)
    cli.add_section(parser, "run", RunConfig)
    parser.add_class_arguments(
        L.Trainer,
        "trainer",
        fail_untyped=False,
        instantiate=False,
        sub_configs=True,
        skip=TRAINER_SKIP,
        help="Lightning Trainer arguments, passed to lightning.Trainer unchanged",
    )
    parser.set_defaults({f"trainer.{k}": v for k, v in TRAINER_DEFAULTS.items()})
    return parser


def parser():
    about = (
        "train the entropy model, the BLT or the tokenized baseline (train.py COMMAND --help: its options)"
    )
    top = cli.new_parser("train.py", about, config_file=False)
    commands = top.add_subcommands()
    for command in COMMANDS:
        commands.add_subcommand(command, command_parser(command), help=ABOUT[command])
    return top


def config_of(namespace, reads: Sequence[str]) -> TrainConfig:
    """The checked sections of a parsed command (a dataclass' own checks name their section)."""
    trainer = cli.plain(namespace.trainer)
    check_trainer(trainer)
    return TrainConfig(
        data=cli.section(namespace, "data", DataConfig),
        optim=cli.section(namespace, "optim", OptimConfig),
        run=cli.section(namespace, "run", RunConfig),
        trainer=trainer,
        config_files=[str(path) for path in namespace.config or []],
        **{name: cli.section(namespace, name, MODELS[name]) for name in reads},
    )


def check_unread(command: str, argv: Sequence[str]) -> None:
    """Options of model sections ``command`` does not read are an error (a file may hold those sections)."""
    for arg in argv:
        name = arg[2:].split("=")[0].split(".")[0] if arg.startswith("--") else None
        if name in MODELS and name not in READS[command]:
            raise ConfigError(
                f"{arg.split('=')[0]}: the {command} command does not read the {name} section "
                f"(it reads {', '.join(('data', *READS[command], 'optim', 'run', 'trainer'))})"
            )


def load_config(argv: Sequence[str], command: str | None = None) -> TrainConfig:
    """The sections of a run file and overrides, as ``command`` reads them (None: every model section)."""
    if command is not None:
        check_unread(command, argv)
    namespace = command_parser(command).parse_args(list(argv))
    return config_of(namespace, READS[command] if command else tuple(MODELS))


def print_config(command: str, config: TrainConfig) -> None:
    sections = ("data", *READS[command], "optim", "run")
    out: dict[str, Any] = {name: to_dict(getattr(config, name)) for name in sections}
    out["trainer"] = json.loads(json.dumps(config.trainer, default=str))  # e.g. a strategy's timeout
    print(yaml.safe_dump(out, sort_keys=False), end="")


def train(argv: Sequence[str]) -> int:
    if argv and argv[0] in COMMANDS:
        check_unread(argv[0], argv[1:])
    try:
        parsed = parser().parse_args(list(argv))
    except SystemExit as e:  # --help, or a parsing error already printed as one line
        return int(e.code or 0)
    command = parsed.subcommand
    namespace = parsed[command]
    config = config_of(namespace, READS[command])
    if namespace.print_config:
        print_config(command, config)
        return 0
    flags = Flags(namespace.resume, namespace.overwrite, namespace.get("entropy_checkpoint"))
    try:
        run_command(command, config, flags)
    except NonFiniteLossError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 1
    return 0


# Lightning warnings that do not apply here: the BLT's patcher is frozen in eval mode on purpose; a
# deprecation inside Lightning itself under newer torch, which users cannot act on
QUIET = (
    r".*module\(s\) in eval mode.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)


def no_advertising(record: logging.LogRecord) -> bool:
    """Drop Lightning's 'Tip' advertisement for its cloud logger from the run's output."""
    return not record.getMessage().startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def main(argv: Sequence[str] | None = None) -> int:
    for pattern in QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(no_advertising)
    return cli.main("train.py", train, argv)
