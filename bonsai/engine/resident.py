"""Resident engines: a ``bonsai serve`` left running in the background, found again by every command.

``bonsai engine start`` (or ``bonsai serve --detach``, see :mod:`bonsai.serve.resident`) starts vLLM's server in its own session, its
output in ``$BONSAI_HOME/logs/serve-<port>.log``, and records it in ``$BONSAI_HOME/engines/<port>.json``
(pid, port, URL, base path and content hash, start time, log, bonsai version; written atomically).
A command that needs an engine calls :func:`find_resident` and, when an engine for the same base
answers, talks to it over HTTP instead of spending half a minute (CPU) to minutes (GPU) starting its
own; the adapters it needs are loaded at run time by their content-hash names (``OpenAIEngine``).

A state file is trusted only as far as the process behind it: the pid must be alive and be the same
process (its start time in ``/proc`` is recorded), and the port must answer ``/v1/models`` with the
recorded base. A state whose process is gone is removed, and the caller is told why.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from bonsai import atomic
from bonsai.engine import EngineConfig
from bonsai.engine.serverlog import root_cause_of, start_failure, tail
from bonsai.model.chat_template import template_hash

log = logging.getLogger(__name__)

#: how long a probe of a resident engine may take before it counts as not answering
PROBE_TIMEOUT_S = 2.0
STOP_GRACE_S = 30.0


def engines_dir(home: Path) -> Path:
    return home / "engines"


def state_path(home: Path, port: int) -> Path:
    return engines_dir(home) / f"{port}.json"


# --- processes ----------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], start time is [19]); None if
    there is no such process or no /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return int(stat[19]) if stat else None


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """True when ``pid`` runs (not a zombie) and, if ``start_ticks`` is known, is the same process
    (a pid reused after a reboot or a long time is another program)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child that exited
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    stat = _proc_stat(pid)
    if stat is None:
        return not Path("/proc/self/stat").exists()  # no /proc at all: kill(0) is all we know
    if stat[0] in ("Z", "X"):
        return False
    return start_ticks is None or int(stat[19]) == start_ticks


def group_alive(pgid: int) -> bool:
    """True while a process other than a zombie is left in process group ``pgid``."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and int(stat[2]) == pgid and stat[0] not in ("Z", "X"):
                return True
    return False


def _kill_leftovers(engine: ResidentEngine, *, wait_s: float = 5.0) -> None:
    """SIGKILL what is left of the server's process group (vLLM's engine core, its workers) once the
    server itself is gone. Safe: a live group keeps its id reserved, so while the pid is free or
    still ours, a group with that id can only be our leftovers; a pid reused by another program is
    left alone."""
    stat = _proc_stat(engine.pid)
    if stat is not None and stat[0] not in ("Z", "X") and engine.pid_start_ticks is not None and int(stat[19]) != engine.pid_start_ticks:
        return
    deadline = time.monotonic() + wait_s
    while group_alive(engine.pid) and time.monotonic() < deadline:
        time.sleep(0.2)  # after SIGTERM the engine core exits on its own; give it the time
    if group_alive(engine.pid):
        log.warning("killing what is left of the engine's process group %d", engine.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(engine.pid, signal.SIGKILL)


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


# --- state --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResidentEngine:
    """One background server, as recorded in ``engines/<port>.json``."""

    pid: int
    port: int
    host: str
    url: str
    base_path: str
    base_name: str
    base_hash: str | None
    started_at: float
    log_path: str
    bonsai_version: str
    max_model_len: int
    max_lora_rank: int
    dtype: str
    pid_start_ticks: int | None = None
    #: when it first answered /v1/models; None while it is starting
    ready_at: float | None = None
    #: persona -> adapter name registered at start (others are loaded at run time)
    adapters: dict[str, str] = field(default_factory=dict)
    #: identity of the --chat-template it renders with (None: the base's own)
    chat_template_hash: str | None = None
    #: clients must send an API key. The key itself is not recorded (this file is as readable as the
    #: rest of $BONSAI_HOME): clients take it from --api-key or $BONSAI_API_KEY, like the server did
    api_key_required: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ResidentEngine:
        data = json.loads(text)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def alive(self) -> bool:
        return pid_alive(self.pid, self.pid_start_ticks)

    def serves(self, base_hash: str | None, base_path: Path | str | None = None) -> bool:
        """True when this engine serves that base (by content hash; by folder when a hash is missing)."""
        if base_hash and self.base_hash:
            return base_hash == self.base_hash
        return base_path is not None and Path(base_path).resolve() == Path(self.base_path).resolve()

    def answers(self, timeout: float = PROBE_TIMEOUT_S, *, api_key: str | None = None) -> bool:
        """True when /v1/models answers and lists this engine's base. An engine that needs a key
        and refuses ``api_key`` (or its absence) answers too: it runs, and the client using it
        then says which key is missing."""
        try:
            response = httpx.get(f"{self.url}/v1/models", timeout=timeout, headers=_auth_headers(api_key))
        except httpx.HTTPError:
            return False
        if response.status_code == 401 and self.api_key_required:
            return True
        if response.status_code != 200:
            return False
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return any(m.get("id") == self.base_name and not m.get("parent") for m in response.json()["data"])
        return False


def _auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def read_state(home: Path, port: int) -> ResidentEngine | None:
    path = state_path(home, port)
    try:
        return ResidentEngine.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        log.warning("ignoring unreadable engine state %s: %s", path, exc)
        return None


def list_states(home: Path) -> list[ResidentEngine]:
    found = []
    for path in sorted(engines_dir(home).glob("*.json")):
        with contextlib.suppress(ValueError):
            state = read_state(home, int(path.stem))
            if state is not None:
                found.append(state)
    return found


def remove_state(home: Path, port: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        state_path(home, port).unlink()


class Health(enum.Enum):
    RUNNING = "running"
    #: alive, not answering yet, never answered: still loading
    STARTING = "starting"
    #: alive, answered once, not answering now
    NOT_ANSWERING = "not answering"
    #: the process is gone: the state was stale (crashed, killed, or the machine restarted)
    GONE = "gone"


@dataclass(frozen=True)
class Checked:
    engine: ResidentEngine
    health: Health
    #: a sentence for the user (empty when running)
    note: str = ""


def check(home: Path, engine: ResidentEngine, *, clean: bool = True, api_key: str | None = None) -> Checked:
    """How ``engine`` is doing; a gone one's state file is removed (``clean``) and the note says so,
    with the cause and the end of its log when it crashed."""
    if not engine.alive():
        if clean:
            _kill_leftovers(engine, wait_s=0.0)
            remove_state(home, engine.port)
        log_path = Path(engine.log_path)
        causes = root_cause_of(log_path)
        said = f"; its log names {causes[0]!r}" if causes else ""
        what = "was running" if engine.ready_at else "was starting"
        note = (
            f"the engine on port {engine.port} (pid {engine.pid}, {engine.base_name}) {what} but its process is gone{said}"
            f"{'; its stale state file was removed' if clean else ''}. Last lines of {log_path}:\n{tail(log_path, 10)}"
        )
        return Checked(engine, Health.GONE, note)
    if engine.answers(api_key=api_key):
        return Checked(engine, Health.RUNNING)
    if engine.ready_at is None:
        return Checked(engine, Health.STARTING, f"the engine on port {engine.port} (pid {engine.pid}) is still starting (log: {engine.log_path})")
    return Checked(
        engine,
        Health.NOT_ANSWERING,
        f"the engine on port {engine.port} (pid {engine.pid}) runs but {engine.url} does not answer; "
        f"stop it with `bonsai engine stop --port {engine.port}`. Last lines of {engine.log_path}:\n{tail(Path(engine.log_path), 10)}",
    )


def find_resident(
    home: Path, base_hash: str | None, base_path: Path | str | None = None, *, min_lora_rank: int = 0, min_model_len: int = 0,
    chat_template_hash: str | None = None,
    api_key: str | None = None,
) -> ResidentEngine | None:
    """A running, answering resident engine for this base that serves adapters up to ``min_lora_rank``
    and contexts up to ``min_model_len`` tokens, or None.

    Cheap when none runs (a directory listing); a stale state file found on the way is removed.
    Prints nothing: the caller says "using the engine at URL".
    """
    for engine in list_states(home):
        if not engine.serves(base_hash, base_path):
            continue
        if engine.chat_template_hash != chat_template_hash:
            log.info("not using the engine at %s: it renders with another chat template", engine.url)
            continue
        if engine.max_lora_rank < min_lora_rank or engine.max_model_len < min_model_len:
            log.info(
                "not using the engine at %s: it serves rank <= %d and %d tokens, %d and %d are needed",
                engine.url, engine.max_lora_rank, engine.max_model_len, min_lora_rank, min_model_len,
            )
            continue
        checked = check(home, engine, api_key=api_key)
        if checked.health is Health.RUNNING:
            return engine
        if checked.health is Health.GONE:
            log.warning("%s", checked.note.splitlines()[0])
    return None


def use_resident(home: Path, config: EngineConfig) -> tuple[EngineConfig, ResidentEngine | None]:
    """``config`` switched to a resident engine for its base, when one runs and fits it.

    Only an in-process vLLM config (``kind="vllm"``) with a base is switched; the engine found must
    serve at least the context length and adapter rank asked for. The new config talks to it over
    HTTP (``kind="openai"``) and keeps the base folder, so adapters are still validated here before
    the server loads them by their content-hash names. Returns the config unchanged and None otherwise.
    """
    if config.kind != "vllm" or config.base_model is None:
        return config, None
    api_key = config.api_key.get_secret_value() if config.api_key else None
    found = find_resident(
        home, config.base_hash, config.base_model, min_lora_rank=config.max_lora_rank, min_model_len=config.max_model_len, api_key=api_key,
        chat_template_hash=template_hash(config.chat_template),
    )
    if found is None:
        return config, None
    return config.model_copy(update={"kind": "openai", "endpoints": [found.url]}), found


# --- start and stop -----------------------------------------------------------------------------


def wait_ready(
    home: Path,
    engine: ResidentEngine,
    *,
    timeout: float,
    on_progress: Callable[[float], None] = lambda _elapsed: None,
    poll_s: float = 1.0,
    progress_every_s: float = 10.0,
    api_key: str | None = None,
) -> ResidentEngine:
    """Block until ``engine`` answers /v1/models; record ``ready_at``. On death or timeout the state
    is removed (the server stopped first on timeout) and the error carries vLLM's root cause."""
    t0 = time.monotonic()
    last_progress = t0
    log_path = Path(engine.log_path)
    while True:
        if engine.answers(api_key=api_key):
            ready = ResidentEngine(**{**asdict(engine), "ready_at": time.time()})
            atomic.write_text(state_path(home, engine.port), ready.to_json())
            return ready
        if not engine.alive():
            remove_state(home, engine.port)
            raise start_failure(log_path, "exited while starting", again="bonsai engine start")
        now = time.monotonic()
        if now - t0 > timeout:
            stop(home, engine)
            raise start_failure(log_path, f"was not answering after {timeout:.0f} s and was stopped", again="bonsai engine start")
        if now - last_progress >= progress_every_s:
            last_progress = now
            on_progress(now - t0)
        time.sleep(poll_s)


def stop(home: Path, engine: ResidentEngine, *, grace_s: float = STOP_GRACE_S) -> str:
    """SIGTERM the server (vLLM shuts its engine core down), SIGKILL its whole process group after
    ``grace_s``; remove the state. Returns how it ended: "stopped", "killed" or "was not running"."""
    how = "was not running"
    if engine.alive():
        os.kill(engine.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while engine.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        how = "stopped"
        if engine.alive():
            log.warning("engine pid %d ignored SIGTERM for %.0f s; killing it", engine.pid, grace_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(engine.pid, signal.SIGKILL)
            how = "killed"
    _kill_leftovers(engine)
    remove_state(home, engine.port)
    return how


def iter_checked(home: Path) -> Iterator[Checked]:
    for engine in list_states(home):
        yield check(home, engine)
