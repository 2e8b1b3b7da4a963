"""``bonsai engine start|stop|status``: a resident vLLM server that every command can use.

Exit codes: ``start`` 0 when the engine answers (also when one for the same base already ran: nothing
is started twice), 2 for bad input, 3 when it cannot start (the message carries vLLM's cause) or the
port is taken by another base or program; ``status`` 0 when every recorded engine is running or
starting (or none is recorded), 3 when one crashed or does not answer; ``stop`` 0 once nothing runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from bonsai.cli.common import home_from
from bonsai.cli.serve_options import add_serve_options, plan_from_args
from bonsai.engine import resident
from bonsai.engine.auth import env_api_key
from bonsai.errors import ConfigError
from bonsai.model.chat_template import read_chat_template, template_hash
from bonsai.model.prepare import resolve_base
from bonsai.serve import resident as serving


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "engine",
        help="start, stop or list resident engines (a background `bonsai serve` every command uses)",
        description=(
            "A resident engine is `bonsai serve` running in the background, recorded in $BONSAI_HOME/engines/. "
            "Commands that need an engine for the same base model use it instead of starting their own."
        ),
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    start = verbs.add_parser("start", help="start a resident engine and wait until it answers", description="Start `bonsai serve` in the background.")
    add_serve_options(start)
    start.set_defaults(func=run_start)

    stop = verbs.add_parser("stop", help="stop a resident engine (SIGTERM, then SIGKILL after --timeout)")
    stop.add_argument("--port", type=int, default=None, help="the engine's port (default: the only one running)")
    stop.add_argument("--all", action="store_true", help="stop every resident engine")
    stop.add_argument("--timeout", type=float, default=resident.STOP_GRACE_S, help=f"seconds to wait for a clean shutdown before killing (default {resident.STOP_GRACE_S:.0f})")
    stop.set_defaults(func=run_stop)

    status = verbs.add_parser("status", help="list resident engines: running, starting, crashed")
    status.add_argument("--json", action="store_true", help="one JSON object per engine")
    status.set_defaults(func=run_status)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _since(t: float) -> str:
    s = max(0, int(time.time() - t))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run_start(args: argparse.Namespace) -> int:
    home = home_from(args)
    if args.port is None:
        # no port asked for: an engine for this base anywhere will do
        base = resolve_base(args.base, home)
        template = read_chat_template(args.chat_template) if args.chat_template is not None else None
        found = resident.find_resident(
            home, base.content_hash, base.path, min_lora_rank=args.max_lora_rank or 0, chat_template_hash=template_hash(template),
            api_key=args.api_key or env_api_key(),
        )
        if found is not None:
            return _report(found, started=False, as_json=args.json)
    plan = plan_from_args(args, home)
    if args.dry_run:
        print(plan.shell_command())
        return 0
    result = serving.start(
        home,
        plan,
        timeout=args.start_timeout,
        on_spawn=lambda e: _say(f"starting vLLM for {e.base_name} on {e.url} in the background (pid {e.pid}, log: {e.log_path})..."),
        on_progress=lambda elapsed: _say(f"  still starting ({elapsed:.0f} s)..."),
    )
    for note in result.notes:
        _say(note)
    return _report(result.engine, started=result.started, as_json=args.json)


def _report(engine: resident.ResidentEngine, *, started: bool, as_json: bool) -> int:
    if as_json:
        print(json.dumps({**asdict(engine), "started": started}), flush=True)
        return 0
    if started:
        print(f"engine for {engine.base_name} running at {engine.url} (pid {engine.pid}, log {engine.log_path})")
        print(f"commands for this base use it by themselves; stop it with `bonsai engine stop --port {engine.port}`", flush=True)
    else:
        print(f"an engine for {engine.base_name} already runs at {engine.url} (pid {engine.pid}, up {_since(engine.started_at)}); nothing started", flush=True)
    return 0


def run_status(args: argparse.Namespace) -> int:
    home = home_from(args)
    trouble = False
    checked = list(resident.iter_checked(home))
    for c in checked:
        e = c.engine
        trouble |= c.health in (resident.Health.GONE, resident.Health.NOT_ANSWERING)
        if args.json:
            print(json.dumps({**asdict(e), "health": c.health.value, "note": c.note}), flush=True)
            continue
        print(f"{e.port}  {c.health.value:<13}  pid {e.pid}  {e.base_name}  {e.url}  up {_since(e.started_at)}  log {e.log_path}")
        if c.note:
            _say(c.note)
    if not checked and not args.json:
        print(f"no resident engine in {home}; start one with `bonsai engine start`")
    return 3 if trouble else 0


def run_stop(args: argparse.Namespace) -> int:
    home = home_from(args)
    engines = resident.list_states(home)
    if args.port is not None:
        engines = [e for e in engines if e.port == args.port]
        if not engines:
            print(f"no resident engine on port {args.port} in {home}; nothing to stop")
            return 0
    elif len(engines) > 1 and not args.all:
        ports = ", ".join(str(e.port) for e in engines)
        raise ConfigError(f"{len(engines)} resident engines run (ports {ports})", "pass --port PORT for one, or --all")
    if not engines:
        print(f"no resident engine in {home}; nothing to stop")
        return 0
    for e in engines:
        how = resident.stop(home, e, grace_s=args.timeout)
        if how == "was not running":
            print(f"the engine on port {e.port} (pid {e.pid}) was not running any more; its stale state file was removed")
        else:
            print(f"engine on port {e.port} (pid {e.pid}, {e.base_name}) {how}", flush=True)
    return 0
