"""Option fields that describe themselves: the help text beside each dataclass field, and what a flag
needs to read it (choices, a parser). The command line is built from these (cli.py), so an option is
declared once, where it is used."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any


def option(default: Any, help: str, *, choices: Sequence[str] | None = None,
           parse: Callable[[str], Any] | None = None, metavar: str | None = None, cli: bool = True,
           aliases: Sequence[str] = (), flag: str | None = None) -> Any:
    """A dataclass field with its help text. ``choices``: the values a text flag takes; ``parse``: how a
    flag's text becomes the value, for types a flag cannot read by itself; ``cli=False``: no flag (set
    from Python, or by a flag of its own); ``flag``: the flag's name when it is not the field's
    (``--field-name``); ``aliases``: more flag spellings."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "parse": parse,
            "metavar": metavar, "cli": cli, "aliases": tuple(aliases), "flag": flag}
    return dataclasses.field(default=default, metadata=meta)


def help_of(field: dataclasses.Field) -> str:
    return field.metadata.get("help", "")


def is_flag(field: dataclasses.Field) -> bool:
    return field.metadata.get("cli", True)
