"""How every command runs: help texts as plain text, bad input as one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Callable, Iterator, Sequence

from eeg_core.errors import FormatError


def plain(text: str) -> str:
    """Help text as plain text: without the RST double backticks that docstrings use for code."""
    return text.replace("``", "")


@contextlib.contextmanager
def plain_help() -> Iterator[None]:
    """Every argparse help and usage text printed meanwhile reads as plain text (see ``plain``): the commands
    build their descriptions from their docstrings."""
    parser = argparse.ArgumentParser
    original = parser.format_help, parser.format_usage
    parser.format_help = lambda self: plain(original[0](self))
    parser.format_usage = lambda self: plain(original[1](self))
    try:
        yield
    finally:
        parser.format_help, parser.format_usage = original


def run(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run a command's ``main`` with plain help texts; bad input ends with one line on stderr and exit status 2."""
    try:
        with plain_help():
            status = main(argv)
    except FormatError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(status if isinstance(status, int) else 0)
