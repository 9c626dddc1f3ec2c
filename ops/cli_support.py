"""The plumbing of ``reloop``'s exits: one-line errors, --version, quiet broken pipes.

``ops/cli.py`` holds the commands and their parsers; this module holds what turns any
failure into one line on stderr and an exit code (2: bad input or settings, 1: failure at run
time, 130: interrupted, 141: stdout closed by its reader).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


class CliError(Exception):
    """A user-facing failure: printed as ``reloop CMD: message`` with exit ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class ReloopParser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``reloop CMD: error: ... (see reloop CMD --help)``."""

    def error(self, message: str) -> Any:  # argparse's signature: never returns
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("reloop")
    except PackageNotFoundError:
        return "unknown"


class VersionAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *a: Any, **k: Any) -> None:
        print(f"reloop {version()}")
        parser.exit()


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures that are the user's input or environment (exit 2 or 1, one line)."""
    import asyncio

    errs: list[type[BaseException]] = [ValueError, OSError, asyncio.TimeoutError, CliError]
    for mod, name in (("reloop.models.bundle", "CorruptModelError"), ("aiokafka.errors", "KafkaError")):
        module = sys.modules.get(mod)  # only if a command imported it: never import torch here
        if module is not None:
            errs.append(getattr(module, name))
    return tuple(errs)


def quiet_broken_pipe() -> int:
    """The reader of stdout went away (``reloop ... | head``): exit quietly, 141 like SIGPIPE."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail
    except (OSError, ValueError):
        pass
    return 141
