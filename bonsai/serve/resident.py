"""Starting a resident engine: ``bonsai engine start`` (or ``bonsai serve --detach``) runs a
:class:`~bonsai.serve.server.ServePlan` in the background and records it where every command finds it
(:mod:`bonsai.engine.resident`, which knows nothing of serve plans: the engine finds, this starts).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bonsai import __version__, atomic
from bonsai.engine.resident import (
    PROBE_TIMEOUT_S,
    Health,
    ResidentEngine,
    check,
    port_in_use,
    process_start_ticks,
    read_state,
    remove_state,
    state_path,
    stop,
    wait_ready,
)
from bonsai.errors import EngineError
from bonsai.model.chat_template import template_hash
from bonsai.serve.server import ServePlan, ServerProcess, serve_log_path


@dataclass(frozen=True)
class StartResult:
    engine: ResidentEngine
    #: False when an engine for this base was already running (nothing was started)
    started: bool
    #: sentences for the user about what was found and cleaned on the way
    notes: tuple[str, ...] = ()


def _engine_from_plan(plan: ServePlan, pid: int, log_path: Path) -> ResidentEngine:
    return ResidentEngine(
        pid=pid,
        port=plan.port,
        host=plan.host,
        url=plan.endpoint,
        base_path=str(plan.base.path),
        base_name=plan.base.name,
        base_hash=plan.base.content_hash,
        started_at=time.time(),
        log_path=str(log_path),
        bonsai_version=__version__,
        max_model_len=plan.max_model_len,
        max_lora_rank=plan.max_lora_rank,
        dtype=plan.dtype,
        pid_start_ticks=process_start_ticks(pid),
        adapters=plan.adapter_names,
        chat_template_hash=template_hash(plan.base.chat_template),
        api_key_required=bool(plan.api_key),
    )


def preflight(home: Path, plan: ServePlan) -> tuple[ResidentEngine | None, list[str]]:
    """What already holds ``plan``'s port: the running engine for the same base (returned), or an
    error for another base / another program; stale state is cleaned (said in the notes)."""
    notes: list[str] = []
    existing = read_state(home, plan.port)
    if existing is not None:
        checked = check(home, existing, api_key=plan.api_key)
        if checked.health is Health.GONE:
            notes.append(checked.note)
        elif not existing.serves(plan.base.content_hash, plan.base.path):
            raise EngineError(
                f"port {plan.port} already runs an engine for another base model, {existing.base_name} "
                f"({existing.base_path}, pid {existing.pid}), not {plan.base.name} ({plan.base.path})",
                f"stop it with `bonsai engine stop --port {plan.port}`, or start this one on another --port",
            )
        elif existing.chat_template_hash != template_hash(plan.base.chat_template):
            raise EngineError(
                f"port {plan.port} already runs an engine for {existing.base_name} with another chat template (pid {existing.pid})",
                f"stop it with `bonsai engine stop --port {plan.port}`, or start this one on another --port",
            )
        elif checked.health is Health.NOT_ANSWERING:
            raise EngineError(checked.note.splitlines()[0], f"`bonsai engine stop --port {plan.port}`, then start it again")
        else:
            return existing, notes  # running or starting: the caller waits for it
    if port_in_use(plan.host, plan.port):
        served = _served_models(plan.endpoint, plan.api_key)
        what = f"a server of {', '.join(served)} not started as a resident engine from {home}" if served else "another program"
        raise EngineError(
            f"port {plan.port} on {plan.host} is in use by {what}",
            (f"use it with --endpoint {plan.endpoint}, or pick another --port" if served else "pick another --port, or stop the program that holds it (`ss -ltnp` shows which)"),
        )
    return None, notes


def _served_models(url: str, api_key: str | None = None) -> list[str]:
    """The base models an OpenAI-compatible server at ``url`` lists, or [] if it is not one."""
    try:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        response = httpx.get(f"{url}/v1/models", timeout=PROBE_TIMEOUT_S, headers=headers)
        return [m["id"] for m in response.json()["data"] if not m.get("parent")] if response.status_code == 200 else []
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return []


def start(
    home: Path,
    plan: ServePlan,
    *,
    timeout: float = 600.0,
    on_spawn: Callable[[ResidentEngine], None] = lambda _engine: None,
    on_progress: Callable[[float], None] = lambda _elapsed: None,
) -> StartResult:
    """Start ``plan`` as a resident engine and wait until it answers; reuse one already running.
    ``on_spawn`` is told once a new server process runs; ``on_progress`` every 10 s while it loads.

    Ctrl-C while waiting stops the half-started server: nothing is left running or recorded.
    """
    existing, notes = preflight(home, plan)
    if existing is not None:
        return StartResult(wait_ready(home, existing, timeout=timeout, on_progress=on_progress, api_key=plan.api_key), started=False, notes=tuple(notes))
    server = ServerProcess(plan, serve_log_path(home, plan.port))
    server.start(detached=True)
    assert server.proc is not None
    engine = _engine_from_plan(plan, server.proc.pid, server.log_path)
    try:
        atomic.write_text(state_path(home, plan.port), engine.to_json())
        on_spawn(engine)
        ready = wait_ready(home, engine, timeout=timeout, on_progress=on_progress, api_key=plan.api_key)
    except BaseException:
        if engine.alive():
            stop(home, engine)
        remove_state(home, plan.port)
        raise
    return StartResult(ready, started=True, notes=tuple(notes))
