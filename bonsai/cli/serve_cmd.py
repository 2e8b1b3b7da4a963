"""``bonsai serve``: a vLLM OpenAI-compatible server with every persona's adapter, for ``--endpoint``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bonsai.cli.common import home_from
from bonsai.cli.serve_options import add_serve_options, plan_from_args
from bonsai.engine.auth import API_KEY_ENV
from bonsai.serve.server import ServePlan, run_server, serve_info_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the base model and the personas' adapters over an OpenAI-compatible API (vLLM)",
        description=(
            "Start vLLM's OpenAI-compatible server with every persona's LoRA adapter, each under its "
            "content-hash name; debates use it with --endpoint URL. Adapters can be added at run time."
        ),
    )
    add_serve_options(p)
    p.add_argument("--detach", action="store_true", help="run in the background as a resident engine, the same as `bonsai engine start`")
    p.set_defaults(func=run_serve)


def _print_ready(plan: ServePlan, log_path: Path, *, as_json: bool, info_path: Path) -> None:
    if as_json:
        print(json.dumps({"endpoint": plan.endpoint, "base_model": plan.base.name, "adapters": plan.adapter_names, "log": str(log_path), "info": str(info_path),
                          "api_key_required": bool(plan.api_key)}), flush=True)
        return
    print(f"serving {plan.base.name} at {plan.endpoint}  (log: {log_path})", flush=True)
    if plan.api_key:
        print(f"  clients must send the API key (--api-key or {API_KEY_ENV})", flush=True)
    if plan.adapter_names:
        width = max(len(p) for p in plan.adapter_names)
        for persona, name in plan.adapter_names.items():
            print(f"  {persona:<{width}}  {name}")
    else:
        print("  no persona has an adapter: every persona uses the bare base")
    print(f"adapter map written to {info_path}; Ctrl-C stops the server", flush=True)


def run_serve(args: argparse.Namespace) -> int:
    if args.detach:
        from bonsai.cli.engine_cmd import run_start

        return run_start(args)
    home = home_from(args)
    plan = plan_from_args(args, home)
    if args.dry_run:
        if args.json:
            print(json.dumps({"command": plan.command, "env": dict(plan.env), **plan.describe()}))
        else:
            print(plan.shell_command())
        return 0
    info_path = serve_info_path(home, plan.port)
    print(f"starting vLLM on {plan.endpoint} (this takes a minute or more)...", file=sys.stderr, flush=True)
    return run_server(
        plan,
        home,
        on_ready=lambda p, log_path: _print_ready(p, log_path, as_json=args.json, info_path=info_path),
        health_timeout=args.start_timeout,
    )
