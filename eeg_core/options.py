"""One options dataclass per command, its command line generated from the fields: each default is typed once.

A field made with :func:`option` carries its help text and whatever argparse needs beyond the default (``nargs``,
``type``, ``choices``, ``metavar``, another flag name); the flag is ``--field-name``; a field without a default is
required; a bool is a switch (``False``: ``--name`` sets it; ``True``: the flag, e.g. ``--no-progress``, clears
it); an int, float or str default gives argparse its type. Fields made without :func:`option` are not flags.

    @dataclass(frozen=True)
    class TrainOptions:
        epochs: int = option(5, "passes over the records")

    add_options(parser, TrainOptions)                      # --epochs (type int, default 5)
    opts = options_from_args(TrainOptions, parser.parse_args(argv))
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, field, fields
from typing import Any, TypeVar

from eeg_core.errors import FormatError

T = TypeVar("T")


def option(default: Any = MISSING, help: str = "", *, flag: str | None = None, aliases: tuple[str, ...] = (),
           **argparse_kwargs: Any) -> Any:
    """A dataclass field that is also a command-line flag (see the module's docstring); ``aliases`` are other
    spellings of the flag (``--top-p`` beside LLaVA's ``--top_p``)."""
    return field(default=default, metadata={"help": help, "flag": flag, "aliases": tuple(aliases),
                                            "argparse": argparse_kwargs})


def add_options(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    """Add a flag to ``parser`` for every :func:`option` field of the dataclass ``cls`` (but ``exclude``)."""
    for f in fields(cls):
        if f.name in exclude or "help" not in f.metadata:
            continue
        kw = dict(f.metadata["argparse"])
        if f.default is MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
        if kw.get("action") == "append":
            kw["default"] = None  # argparse appends to its default: the field's (a tuple) comes back in options_from_args
        elif isinstance(f.default, bool) and "action" not in kw:
            kw["action"] = "store_false" if f.default else "store_true"
        elif isinstance(f.default, (int, float, str)) and "type" not in kw and "action" not in kw:
            kw["type"] = type(f.default)
        if "type" in kw:
            kw["type"] = _flag_type(kw["type"])
        parser.add_argument(f.metadata["flag"] or "--" + f.name.replace("_", "-"), *f.metadata["aliases"], dest=f.name,
                            help=f.metadata["help"], **kw)


def _flag_type(convert: Any) -> Any:
    """``convert`` for argparse: a ``FormatError`` it raises becomes argparse's usage error with its own message."""
    def parse(text: str) -> Any:
        try:
            return convert(text)
        except FormatError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def options_from_args(cls: type[T], namespace: argparse.Namespace, **overrides: Any) -> T:
    """The dataclass ``cls`` from parsed flags (fields the parser has), with ``overrides`` applied."""
    values = {}
    for f in fields(cls):
        if hasattr(namespace, f.name):
            value = getattr(namespace, f.name)
            appended = f.metadata.get("argparse", {}).get("action") == "append"
            values[f.name] = (f.default if value is None else tuple(value)) if appended else value
    return cls(**{**values, **overrides})
