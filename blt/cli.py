"""Command lines of the package: jsonargparse (the parser LightningCLI is built on) over the config dataclasses.

Every console script builds its parser with :func:`new_parser` and adds config sections with
:func:`add_section`, so all of them share one flag style: ``--section.key value`` with underscores,
``--config FILE`` (repeatable, later files win), ``--print_config`` and ``--help`` that shows each field's
documentation (the ``doc`` text of :func:`blt.config.doc`). jsonargparse rejects unknown keys and values of
the wrong type by name; :func:`section` then builds the dataclass, whose own checks name their section.

:func:`main` runs a command and turns the errors a user can cause into one line on stderr and exit code 2;
:func:`parse` makes the parser's own refusals such errors too. ``parse(..., defaults=False)`` and
:func:`given_fields` tell what the user set from what is a default, for sections that override only the
fields they name; :func:`add_overrides` and :func:`overrides` do it for a whole section (a checkpoint's
patching), with every field None unless set. :func:`add_unread_sections` lets one training run file
(``configs/*.yaml``) serve as ``--config`` of commands that read only some of its sections.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser, Namespace

from blt.config import ConfigError, from_dict, one_line

USER_ERRORS = (ValueError, OSError)  # ConfigError, CheckpointError and UsageError are ValueErrors

# top-level sections of a training run file (configs/*.yaml)
RUN_SECTIONS = ("data", "entropy", "blt", "baseline", "optim", "trainer", "run")


class UsageError(ValueError):
    """A command line the parser refused: an unknown option, a value of the wrong type, a missing file."""


class ConfigFile(ActionConfigFile):
    """``--config FILE`` whose errors name the file (jsonargparse's say only where in it, e.g. a YAML line)."""

    def __call__(self, parser, cfg, values, option_string=None):
        try:
            super().__call__(parser, cfg, values, option_string)
        except (ArgumentError, TypeError, ValueError) as e:
            message = str(e)
            raise TypeError(message if str(values) in message else f"--config {values}: {message}") from e


class Parser(ArgumentParser):
    """jsonargparse's parser, whose errors are one line naming the key instead of the whole usage."""

    def error(self, message: str, ex: Exception | None = None) -> typing.NoReturn:
        if not self.exit_on_error:  # jsonargparse's inner parsers: the error goes up to the outer one
            super().error(message, ex)
        hint = _elsewhere(_with_subcommands(self), message)
        print(f"{self.prog.replace(' [options]', '')}: error: {one_line(message)}{hint}", file=sys.stderr)
        sys.exit(2)


def new_parser(
    prog: str, description: str, config_file: bool = True, print_config: bool = True
) -> ArgumentParser:
    """A parser with ``--config FILE`` (YAML of sections; repeatable) and ``--print_config``.

    ``print_config=False`` leaves ``--print_config`` to the caller (e.g. to print only some sections).
    """
    parser = Parser(
        prog=prog,
        description=description,
        allow_abbrev=False,  # a misspelt or shortened key is an error, never a guess
        exit_on_error=True,
        default_env=False,
        print_config="--print_config" if print_config else None,
    )
    if config_file:
        parser.add_argument(
            "--config", action=ConfigFile, help="YAML file of sections (repeatable: later files win)"
        )
    return parser


def add_section(parser: ArgumentParser, name: str, cls: type, help: str | None = None) -> None:
    """Fields of dataclass ``cls`` as ``--name.field`` options, each documented by its ``doc`` text."""
    parser.add_class_arguments(cls, name, help=help or (cls.__doc__ or "").strip().split("\n")[0])
    docs = field_docs(cls, f"{name}.")
    for action in parser._actions:  # jsonargparse reads docstrings only; our docs live in field metadata
        if action.dest in docs:
            action.help = docs[action.dest]


def field_docs(cls: type, prefix: str = "") -> dict[str, str]:
    """``{"prefix.field": doc}`` for every field of ``cls`` and of its nested config sections."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        text = f.metadata.get("doc")
        if text:
            out[prefix + f.name] = text
        inner = hints[f.name]
        if dataclasses.is_dataclass(inner):
            out.update(field_docs(inner, f"{prefix}{f.name}."))
    return out


def add_overrides(parser: ArgumentParser, name: str, cls: type, help: str | None = None) -> None:
    """Fields of dataclass ``cls`` as ``--name.field`` options that default to None (unchanged).

    For a config that comes from elsewhere (a checkpoint's): :func:`overrides` gives the fields set, and
    ``--print_config`` output fed back as ``--config`` changes nothing the user did not set."""
    hints = typing.get_type_hints(cls)
    fields = [
        (f.name, hints[f.name] | None, dataclasses.field(default=None, metadata={"doc": _unchanged(f)}))
        for f in dataclasses.fields(cls)
    ]
    partial = dataclasses.make_dataclass(f"{cls.__name__}Overrides", fields)
    add_section(parser, name, partial, help=help or f"overrides of {(cls.__doc__ or cls.__name__).strip()}")


def _unchanged(f: dataclasses.Field) -> str:
    return f"{f.metadata.get('doc', f.name)} [unset or null: kept as it is]"


def overrides(cfg: Namespace, name: str) -> dict[str, Any]:
    """The fields of section ``name`` (added by :func:`add_overrides`) that the user set."""
    return {k: v for k, v in (plain(cfg[name]) or {}).items() if v is not None}


def add_unread_sections(parser: ArgumentParser, names: Sequence[str]) -> None:
    """Accept sections ``names`` of a run file in ``--config`` without reading them (train.py checks them).

    They are no options of this command, so ``--help`` does not list them."""
    for name in names:
        parser.add_argument(f"--{name}", type=dict | None, default=None, help=argparse.SUPPRESS)


def _elsewhere(parsers: list[ArgumentParser], message: str) -> str:
    """For an unrecognized ``--section.key``: where ``key`` is an option (``--run.compile``, not
    ``--trainer.compile``), as text to append to the error; else ""."""
    if "unrecognized arguments" not in message:
        return ""
    known = {o for p in parsers for a in p._actions for o in a.option_strings if o.startswith("--")}
    hints = []
    for flag in re.findall(r"--[\w.]+", message.split("unrecognized arguments", 1)[1]):
        key = flag.rsplit(".", 1)[-1]
        hints += sorted(o for o in known if o != flag and o.rsplit(".", 1)[-1] == key and "." in o)
    return f" (did you mean {' or '.join(dict.fromkeys(hints))}?)" if hints else ""


def parse(parser: ArgumentParser, argv: Sequence[str], defaults: bool = True) -> Namespace:
    """``parser.parse_args(argv)``, its refusal a one-line :class:`UsageError` instead of usage text and exit.

    ``defaults=False`` keeps only what the user set, by ``--config`` file or by flag: overrides that must not
    reset the fields they do not name."""
    parsers = _with_subcommands(parser)
    exit_on_error = [p.exit_on_error for p in parsers]
    for p in parsers:
        p.exit_on_error = False  # raise ArgumentError instead of printing usage and exiting
    try:
        return parser.parse_args(list(argv), defaults=defaults)
    except ArgumentError as e:
        raise UsageError(one_line(str(e)) + _elsewhere(parsers, str(e))) from None
    finally:
        for p, value in zip(parsers, exit_on_error):
            p.exit_on_error = value


def _with_subcommands(parser: ArgumentParser) -> list[ArgumentParser]:
    """``parser`` and the parsers of its subcommands, theirs included."""
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _with_subcommands(sub)
    return out


def given_fields(given: Namespace, name: str) -> dict[str, Any]:
    """Fields of section ``name`` (dotted) that the user set, from ``parse(..., defaults=False)``."""
    return plain(given.get(name)) or {}


def section(cfg: Namespace, name: str, cls: type):
    """The dataclass ``cls`` of section ``name`` of a parsed config; its checks' errors name the section."""
    value = cfg[name]
    data = value.as_dict() if isinstance(value, Namespace) else value
    return from_dict(cls, data, prefix=f"{name}.")


def main(prog: str, run: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``run(argv)``; a user's mistake (bad value, missing path, wrong checkpoint) is one line, exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return run(argv) or 0
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # keep the exit-time flush quiet
        return 0
    except USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def plain(value: Any) -> Any:
    """Namespaces (nested) -> dicts, for printing or saving a parsed config."""
    if isinstance(value, Namespace):
        return {k: plain(v) for k, v in vars(value).items()}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


__all__ = [
    "RUN_SECTIONS",
    "USER_ERRORS",
    "ConfigError",
    "Parser",
    "UsageError",
    "add_overrides",
    "add_section",
    "add_unread_sections",
    "field_docs",
    "given_fields",
    "main",
    "new_parser",
    "one_line",
    "overrides",
    "parse",
    "plain",
    "section",
]
