"""``bonsai tui``: the terminal UI (the ``tui`` package, Textual) with the same engine options as ``bonsai debate``.

Textual is imported only when the command runs, so nothing in ``bonsai`` needs it installed; ``bonsai``
finds this command through its ``bonsai.commands`` entry point (see :mod:`bonsai.cli.plugins`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from bonsai.cli.common import add_engine_arguments, engine_options, home_from
from bonsai.debate.spec import USER_SETTINGS, DebateSpec
from bonsai.engine.session import add_option_arguments, options_from_args
from bonsai.errors import ConfigError, describe_validation


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tui",
        help="watch, steer and replay debates in a terminal UI",
        description="Start, watch and steer live debates (pause, step, moderator notes, forks), browse and replay stored ones, and monitor sweeps.",
    )
    p.add_argument("--store", type=Path, default=None, help="transcript store (default: $BONSAI_HOME/transcripts.sqlite)")
    start = p.add_argument_group("what to show first")
    start.add_argument("--replay", metavar="ID", help="replay a stored debate (a unique id prefix is enough)")
    start.add_argument("--resume", metavar="ID", help="go on with an unfinished debate")
    start.add_argument("--sweep", metavar="NAME", help="open the sweep monitor on this sweep")
    start.add_argument("--replay-delay", type=float, default=0.0, metavar="SECONDS", help="pause between words when replaying a stored debate (default 0: at once)")
    form = p.add_argument_group("new-debate form defaults (as for `bonsai debate`)")
    form.add_argument("--motion", default="", help="the motion the form starts with")
    add_option_arguments(form, DebateSpec, only=USER_SETTINGS)
    add_engine_arguments(p, judge=False)
    p.set_defaults(func=run)


def _quiet_logging(home: Path) -> Path:
    """Logs go to a file while the UI owns the terminal (a stray line on stderr would tear the screen)."""
    log_dir = home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "tui.log"
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    for var, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error"), ("VLLM_LOGGING_LEVEL", "ERROR"), ("TQDM_DISABLE", "1")):
        os.environ.setdefault(var, value)
    return path


@contextlib.contextmanager
def _screen_only_terminal(log_path: Path) -> Iterator[None]:
    """While the UI runs, file descriptors 1 and 2 point at the log file, so nothing but the UI writes
    to the terminal: not the engine's child processes (vLLM's engine core inherits them), not C
    libraries. Textual draws (on ``sys.__stderr__``) and sizes the screen (``sys.__stdout__``) through
    duplicates of the terminal's descriptors."""
    if not (os.isatty(1) and os.isatty(2)):
        yield
        return
    saved = (sys.__stdout__, sys.__stderr__, sys.stdout, sys.stderr)
    kept = os.dup(1), os.dup(2)
    tty_out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    tty_err = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        sys.__stdout__ = sys.stdout = tty_out  # type: ignore[misc]
        sys.__stderr__ = sys.stderr = tty_err  # type: ignore[misc]
        yield
    finally:
        for stream in (tty_out, tty_err):
            with contextlib.suppress(OSError):
                stream.flush()
        os.dup2(kept[0], 1)
        os.dup2(kept[1], 2)
        sys.__stdout__, sys.__stderr__, sys.stdout, sys.stderr = saved  # type: ignore[misc]
        for fd in (*kept, log_fd):
            os.close(fd)
        tty_out.close()
        tty_err.close()


def run(args: argparse.Namespace) -> int:
    try:
        from pydantic import ValidationError

        from tui.app import BonsaiApp
        from tui.options import FormDefaults, TuiOptions
    except ImportError as exc:
        raise ConfigError(f"the terminal UI needs Textual, which is not installed ({exc.name})", "pip install 'bonsai[tui]'") from None
    home = home_from(args)
    engine = engine_options(args)
    engine.resolved_kind()  # --engine openai without --endpoint: say so now, not in the UI
    form = options_from_args(FormDefaults, args, what="options", hint="see `bonsai tui --help`", motion=args.motion)
    try:
        options = TuiOptions(
            home=home,
            store=args.store.expanduser() if args.store else None,
            personas_dir=args.personas_dir,
            engine=engine,
            form=form,
            replay=args.replay,
            resume=args.resume,
            sweep=args.sweep,
            replay_delay=args.replay_delay,
        )
    except ValidationError as exc:
        msg = "; ".join(describe_validation(exc))
        raise ConfigError(f"invalid options: {msg}", "see `bonsai tui --help`") from None
    log_file = _quiet_logging(home)
    with _screen_only_terminal(log_file):
        unfinished = BonsaiApp(options).run()
    if unfinished:
        print(
            f"debate {unfinished} is saved; go on with `bonsai tui --resume {unfinished}` or `bonsai debate --resume {unfinished}`",
            file=sys.stderr,
        )
    logging.getLogger(__name__).info("tui closed; log in %s", log_file)
    return 0
