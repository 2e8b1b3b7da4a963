"""Helpers the subcommands share: the home folder, progress spinners, the console."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from bonsai.engine.session import USING_RESIDENT, EngineOptions, JudgeEngineOptions, Starting, add_option_arguments, options_from_args
from bonsai.paths import bonsai_home


#: characters json.dumps(ensure_ascii=False) leaves raw that a terminal or a JavaScript reader can take
#: for something else: C1 controls (U+009B is a one-byte CSI escape on some terminals) and the two
#: Unicode line separators. Model output is untrusted text; readable non-ASCII text stays as it is.
_UNSAFE_IN_JSON = re.compile("[\u0080-\u009f\u2028\u2029]")


def json_text(data: object) -> str:
    """``data`` as one line of JSON for the terminal or a pipe: UTF-8 text kept readable, control
    characters escaped (they occur only inside strings, so the escape is valid JSON)."""
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(data, ensure_ascii=False))


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


def add_engine_arguments(p: argparse.ArgumentParser, *, judge: bool = True) -> None:
    """The engine flags (generated from :class:`EngineOptions`), the judge's engine (from
    :class:`JudgeEngineOptions`) where a command judges debates, and ``--personas-dir``."""
    add_option_arguments(p, EngineOptions)
    if judge:
        add_option_arguments(p.add_argument_group("judge engine (default: the debaters' engine)"), JudgeEngineOptions)
    p.add_argument("--personas-dir", type=Path, default=None, help="folder of persona YAML files (default: the shipped personas)")


def engine_options(args: argparse.Namespace, **fixed: object) -> EngineOptions:
    return options_from_args(EngineOptions, args, **fixed)


def judge_options(args: argparse.Namespace) -> JudgeEngineOptions:
    return options_from_args(JudgeEngineOptions, args)


def starting(*, enabled: bool = True) -> Starting:
    """A spinner (or a line) on stderr while an engine starts. Which running engine a command talks to
    is said even when the spinner is off (``--json``): output on stdout stays machine-readable, and the
    user still learns that no engine of its own was started."""

    def start(what: str) -> contextlib.AbstractContextManager[None]:
        if what.startswith(USING_RESIDENT):
            print(what, file=sys.stderr, flush=True)
            return contextlib.nullcontext()
        return progress(what, enabled=enabled)

    return start
