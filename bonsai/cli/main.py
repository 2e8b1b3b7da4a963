"""The ``bonsai`` command. Each subcommand lives in its own module with ``register(subparsers)``: bonsai's
own below, training's and the TUI's found through entry points (:mod:`bonsai.cli.plugins`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from bonsai import __version__
from bonsai.cli.limits import check_numeric_options
from bonsai.cli.plugins import STALE_HINT, register_plugins
from bonsai.errors import BonsaiError

SUBCOMMANDS = (
    "bonsai.cli.debate_cmd",
    "bonsai.cli.serve_cmd",
    "bonsai.cli.engine_cmd",
    "bonsai.cli.personas_cmd",
    "bonsai.cli.transcripts_cmd",
    "bonsai.cli.model_cmd",
    "bonsai.cli.sweep_cmd",
    "bonsai.cli.ratings_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="bonsai", description="LLM debates whose debaters learn.")
    parser.add_argument("--version", action="version", version=f"bonsai {__version__}")
    parser.add_argument("--home", help="bonsai's data folder (default: $BONSAI_HOME or ~/.cache/bonsai)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    if not register_plugins(sub):
        parser.epilog = STALE_HINT
    return parser


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # vLLM logs to stdout by default, which would mix its warnings into `--json` output and piped transcripts.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    if verbose < 2:
        # vLLM, httpx and transformers are chatty at INFO; users asked for bonsai's logs.
        for noisy in ("vllm", "httpx", "transformers", "urllib3", "aiosqlite", "datasets"):
            logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING" if verbose else "ERROR")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _clean_orphans(args: argparse.Namespace) -> None:
    """Half-written files and folders, and stale server state, a killed bonsai left in its home (see orphans.py)."""
    from bonsai import orphans
    from bonsai.paths import bonsai_home

    try:
        orphans.clean(bonsai_home(args.home))
    except Exception:  # tidying must never stop a command
        logging.getLogger(__name__).debug("orphan cleanup failed", exc_info=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code == 2 and parser.epilog == STALE_HINT:  # most likely a plugin command, not registered
            print(f"  hint: {STALE_HINT}", file=sys.stderr)
        raise
    _configure_logging(args.verbose)
    _clean_orphans(args)
    try:
        check_numeric_options(args)
        return int(args.func(args) or 0)
    except BonsaiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
