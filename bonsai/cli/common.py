"""Helpers the subcommands share: the home folder, progress spinners, the console."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from bonsai.paths import bonsai_home


def home_from(args: argparse.Namespace) -> Path:
    return bonsai_home(getattr(args, "home", None))


def err_console() -> Console:
    return Console(stderr=True)


@contextlib.contextmanager
def progress(message: str, *, enabled: bool = True) -> Iterator[None]:
    """A spinner on stderr while something slow (model preparation, engine start) runs."""
    if not enabled or not sys.stderr.isatty():
        if enabled:
            print(f"{message}...", file=sys.stderr, flush=True)
        yield
        return
    with err_console().status(message):
        yield
