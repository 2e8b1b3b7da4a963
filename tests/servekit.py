"""Starting and stopping real `bonsai serve` processes for tests (each is a vLLM server on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bonsai.serve.server import serve_info_path, serve_log_path

START_TIMEOUT_S = 300
#: GiB of KV cache for the tests' servers and the session's in-process engine
TEST_KV_CACHE_GIB = 0.5

#: run as ``python -c SHIM PARENT_PID ARGV...``: the server gets SIGTERM when the test process dies (even
#: by SIGKILL, where no fixture's teardown runs), then execs ARGV. ``bonsai serve`` stops its vLLM child
#: on SIGTERM, so a killed pytest leaves no server holding a port and gigabytes behind. Done in a shim,
#: not ``preexec_fn``, which is unsafe in a process with threads (the suite starts its engine in one).
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM); "  # 1 = PR_SET_PDEATHSIG
    "os.getppid() == int(sys.argv[1]) or sys.exit(1); "  # the parent died before prctl took effect
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    home: Path
    port: int
    stdout: Path
    stderr: Path
    endpoint: str = ""
    adapters: dict[str, str] | None = None
    server_pid: int | None = None

    def wait_ready(self, timeout: float = START_TIMEOUT_S + 30) -> Server:
        deadline = time.monotonic() + timeout
        while not self.stdout.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = serve_log_path(self.home, self.port)
                raise AssertionError(f"bonsai serve did not come up:\n{self.stderr.read_text()}\n{log.read_text() if log.exists() else ''}")
            time.sleep(1)
        ready = json.loads(self.stdout.read_text().splitlines()[0])
        self.endpoint, self.adapters = ready["endpoint"], ready["adapters"]
        self.server_pid = json.loads(serve_info_path(self.home, self.port).read_text())["server_pid"]
        return self

    def kill(self) -> None:
        """SIGKILL the vLLM server itself (a crash, not a shutdown), then its `bonsai serve` parent."""
        for pid in (self.server_pid, self.proc.pid):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM `bonsai serve` (it forwards it to vLLM); kill whatever is left, so nothing outlives the tests."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.server_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.server_pid, signal.SIGKILL)


def start_serve(root: Path, base: Path, *extra: str, port: int | None = None, env: dict[str, str] | None = None) -> Server:
    """Launch `bonsai serve --json` in its own process group; call ``wait_ready()`` on the result.
    ``env``: variables set for it on top of this process's environment (an API key, say)."""
    root.mkdir(parents=True, exist_ok=True)
    home, port = root / "home", port or free_port()
    # half the default KV cache: the tests' requests fit many times over, and on 24 GiB a suite run can hold
    # four engines at once (docs/benchmarks.md, "Test suite")
    kv = [] if "--kv-cache-gib" in extra else ["--kv-cache-gib", str(TEST_KV_CACHE_GIB)]
    args = ["--home", str(home), "serve", "--base", str(base), "--port", str(port), "--json", "--start-timeout", str(START_TIMEOUT_S), *kv, *extra]
    stdout, stderr = root / "stdout", root / "stderr"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), sys.executable, "-m", "bonsai.cli.main", *args],
            stdout=out, stderr=err, start_new_session=True, env={**os.environ, **(env or {})},
        )
    return Server(proc, home, port, stdout, stderr)


def group_gone(pgid: int, timeout: float = 30) -> bool:
    """True once no process of the group ``pgid`` is left (a server and vLLM's engine core), within ``timeout``."""
    from bonsai.engine import resident

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not resident.group_alive(pgid):
            return True
        time.sleep(0.5)
    return False
