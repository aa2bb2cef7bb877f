"""Command lines of the package: jsonargparse (the parser LightningCLI is built on) over the config dataclasses.

Every console script builds its parser with :func:`new_parser` and adds config sections with
:func:`add_section`, so all of them share one flag style: ``--section.key value`` with underscores,
``--config FILE`` (repeatable, later files win), ``--print_config`` and ``--help`` that shows each field's
documentation (the ``doc`` text of :func:`blt.config.doc`). jsonargparse rejects unknown keys and values of
the wrong type by name; :func:`section` then builds the dataclass, whose own checks name their section.

:func:`main` runs a command and turns the errors a user can cause into one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from blt.config import ConfigError, from_dict

USER_ERRORS = (ValueError, OSError)  # ConfigError and CheckpointError are ValueErrors


class Parser(ArgumentParser):
    """jsonargparse's parser, whose errors are one line naming the key instead of the whole usage."""

    def error(self, message: str, ex: Exception | None = None) -> typing.NoReturn:
        if not self.exit_on_error:  # jsonargparse's inner parsers: the error goes up to the outer one
            super().error(message, ex)
        print(f"{self.prog.replace(' [options]', '')}: error: {one_line(message)}", file=sys.stderr)
        sys.exit(2)


def one_line(message: str) -> str:
    """A jsonargparse error as one line: ``key: expected int. Got value: x``, ``unknown config key 'k'``."""
    group = re.search(r"Group '([^']+)' does not accept (?:option|nested key) '([^']+)'", message)
    if group:
        return f"unknown config key '{group[1]}.{group[2]}'"
    unknown = re.search(r"does not accept (?:option|nested key) '([^']+)'|Option '([^']+)' is not accepted", message)
    if unknown:
        return f"unknown config key '{unknown[1] or unknown[2]}'"
    keyed = re.match(r'Parser key "([^"]+)":\s*(.*)', message, re.DOTALL)
    if not keyed:
        return " ".join(message.split())
    key, rest = keyed.groups()
    expected = [_type_name(t) for t in re.findall(r"Expected an? (.+?)(?=\. Got value:|$)", rest, re.M)]
    got = re.search(r"(?:Got|Given) value: (.*)", rest)
    if expected and got:
        return f"{key}: expected {' or '.join(dict.fromkeys(expected))}. Got value: {got[1].strip()}"
    return f"{key}: {' '.join(rest.split())}"


def _type_name(text: str) -> str:
    """``<class 'int'>`` -> int, ``typing.Literal['a', 'b']`` -> one of ['a', 'b'], NoneType -> null."""
    text = text.strip().rstrip(".")
    text = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", text).replace("typing.", "")
    if text == "NoneType":
        return "null"
    return re.sub(r"^Literal\[(.*)\]$", r"one of [\1]", text)


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
            "--config", action="config", help="YAML file of sections (repeatable: later files win)"
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
    "USER_ERRORS",
    "ConfigError",
    "Parser",
    "add_section",
    "field_docs",
    "main",
    "new_parser",
    "one_line",
    "plain",
    "section",
]
