"""Authenticated serving: the API key (vLLM's check, sent by every bonsai client), the refusal of a
reachable --host without one, and the guard that keeps runtime adapter loads under $BONSAI_HOME."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bonsai.cli.main import main
from bonsai.engine import EngineConfig
from bonsai.engine.adapter_guard import ROOT_ENV, AdapterGuard, adapter_source_problem
from bonsai.registry.identity import inspect_adapter
from bonsai.engine.auth import API_KEY_ENV, EngineAuthError, is_loopback
from bonsai.engine import resident
from bonsai.engine.openai import OpenAIEngine
from bonsai.serve.server import plan_serve, serve_log_path
from bonsai.engine.session import EngineOptions
from bonsai.errors import AdapterError, ConfigError
from bonsai.model.prepare import BaseModel
from servekit import START_TIMEOUT_S, TEST_KV_CACHE_GIB, free_port, group_gone

KEY = "bonsai-test-key-7f3a9c"


# --- fast: the rules -------------------------------------------------------------------------------


def test_loopback_hosts() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.4", "example.org", "10.0.0.1"))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.4"])
def test_reachable_host_without_a_key_is_refused(base_model: BaseModel, tmp_path: Path, host: str, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"--host {host} makes the server reachable") as info:
        plan_serve(tmp_path, base=str(base_model.path), host=host)
    assert API_KEY_ENV in (info.value.hint or "") and "127.0.0.1" in (info.value.hint or "")
    code = main(["--home", str(tmp_path), "serve", "--base", str(base_model.path), "--host", host, "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and "no API key is set" in err and "Traceback" not in err
    detached = main(["--home", str(tmp_path), "engine", "start", "--base", str(base_model.path), "--host", host, "--port", "8123", "--dry-run"])
    assert detached == 2 and "no API key is set" in capsys.readouterr().err


def test_a_key_lets_it_bind_and_stays_out_of_the_command(base_model: BaseModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(API_KEY_ENV, KEY)
    assert main(["--home", str(tmp_path), "serve", "--base", str(base_model.path), "--host", "0.0.0.0", "--dry-run", "--json"]) == 0
    out = capsys.readouterr().out
    plan = json.loads(out)
    assert KEY not in out and plan["api_key_required"] and plan["env"][ROOT_ENV] == str(tmp_path.resolve())
    assert "bonsai.engine.adapter_guard.AdapterGuard" in plan["command"]
    served = plan_serve(tmp_path, base=str(base_model.path), host="0.0.0.0", api_key=KEY)
    assert KEY not in served.shell_command() and KEY not in repr(served) and KEY not in json.dumps(served.describe())
    env = served.process_env({"VLLM_API_KEY": "inherited", "VLLM_LORA_RESOLVER_CACHE_DIR": "/x", "PATH": "/bin"})
    assert env["VLLM_API_KEY"] == KEY and "VLLM_LORA_RESOLVER_CACHE_DIR" not in env and env["PATH"] == "/bin"
    anything = plan_serve(tmp_path, base=str(base_model.path), allow_any_adapter_path=True)
    assert anything.env[ROOT_ENV] == "" and "VLLM_API_KEY" not in anything.process_env({"VLLM_API_KEY": "inherited"})


def test_the_key_is_never_dumped_or_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, KEY)
    options = EngineOptions(endpoints=["http://127.0.0.1:1"])
    assert options.secret() == KEY  # from the environment
    assert KEY not in options.model_dump_json() and KEY not in repr(options) and "api_key" not in options.model_dump()
    config = EngineConfig(kind="openai", endpoints=["http://127.0.0.1:1"], api_key=KEY)
    assert KEY not in config.model_dump_json() and KEY not in repr(config)
    proc = subprocess.run([sys.executable, "-m", "bonsai", "debate", "--help"], capture_output=True, text=True, env={**os.environ, API_KEY_ENV: KEY})
    assert proc.returncode == 0 and "--api-key KEY" in proc.stdout and "--judge-api-key KEY" in proc.stdout and KEY not in proc.stdout


def test_adapter_sources_outside_the_root_are_refused(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    (root / "adapters" / "a" / "v1").mkdir(parents=True)
    elsewhere.mkdir()
    (root / "adapters" / "sneaky").symlink_to(elsewhere)
    r = str(root.resolve())
    assert adapter_source_problem(str(root / "adapters" / "a" / "v1"), r) is None
    assert "outside this server's BONSAI_HOME" in (adapter_source_problem(str(elsewhere), r) or "")
    assert "outside" in (adapter_source_problem(str(root / "adapters" / "sneaky"), r) or "")  # a symlink out is out
    assert "outside" in (adapter_source_problem(str(root / "adapters" / ".." / ".." / "elsewhere"), r) or "")
    assert "hub ids" in (adapter_source_problem("someone/their-lora", r) or "")
    assert "no adapter folder" in (adapter_source_problem(None, r) or "")
    assert adapter_source_problem(str(elsewhere), "") is None  # --allow-any-adapter-path
    assert "not configured" in (adapter_source_problem(str(root), None) or "")  # a lost setting fails closed


async def _asgi(guard: AdapterGuard, method: str, path: str, body: dict[str, Any] | None = None, key: str | None = None) -> tuple[int, dict[str, Any]]:
    raw = json.dumps(body).encode() if body is not None else b""
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": headers, "query_string": b""}
    sent: list[dict[str, Any]] = []
    chunks = [raw[: len(raw) // 2], raw[len(raw) // 2 :]]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await guard(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(payload) if payload else {}


async def test_guard_checks_the_key_and_the_adapter_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inside = tmp_path / "home" / "adapters" / "a"
    inside.mkdir(parents=True)
    seen: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:  # stands in for vLLM: echoes what it received
        message = await receive()
        seen.append(message.get("body", b""))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "home"))
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    guard = AdapterGuard(app)
    # the routes vLLM's own check leaves open ask for the key too; liveness probes stay open
    assert (await _asgi(guard, "POST", "/adapters", {"name": "x", "src": str(inside)}))[0] == 401
    assert (await _asgi(guard, "POST", "/invocations", {"prompt": "hi"}, key="wrong"))[0] == 401
    assert (await _asgi(guard, "GET", "/health"))[0] == 200
    # both load routes: a folder outside the home is refused with the reason and the fix
    for path, field in (("/v1/load_lora_adapter", "lora_path"), ("/adapters", "src"), ("/v1/load_lora_adapter/", "lora_path")):
        status, body = await _asgi(guard, "POST", path, {"lora_name": "x", "name": "x", field: str(tmp_path)}, key=KEY)
        assert status == 403 and "outside this server's BONSAI_HOME" in body["error"]["message"]
        assert "--allow-any-adapter-path" in body["error"]["message"]
    good = {"lora_name": "x", "lora_path": str(inside), "load_inplace": True}
    assert (await _asgi(guard, "POST", "/v1/load_lora_adapter", good, key=KEY))[0] == 200
    assert json.loads(seen[-1]) == good  # the body reaches vLLM whole, though the guard read it
    assert (await _asgi(guard, "POST", "/v1/load_lora_adapter", None, key=KEY))[0] == 400

    monkeypatch.setenv(ROOT_ENV, "")
    monkeypatch.delenv("VLLM_API_KEY")
    anything = AdapterGuard(app)
    assert (await _asgi(anything, "POST", "/adapters", {"name": "x", "src": str(tmp_path)}))[0] == 200


# --- one real resident engine with a key --------------------------------------------------------------


@dataclass(frozen=True)
class Resident:
    """A `bonsai serve --detach` server: its home, port and process group, and what the command printed."""

    home: Path
    port: int
    pid: int
    printed: str

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class KeyedResident:
    """A resident engine started with the key in its environment (not on its command line). The last test
    here kills it (a crash, as `bonsai engine status` must report it); a test that runs after that, say in
    another order, gets a new one."""

    def __init__(self, root: Path, base: BaseModel) -> None:
        self.root, self.base, self.current, self.starts = root, base, None, 0

    def live(self) -> Resident:
        if self.current is None or not resident.pid_alive(self.current.pid):
            self.starts += 1
            home, port = self.root / f"home{self.starts}", free_port()
            started = _bonsai(home, "serve", "--detach", "--base", str(self.base.path), "--port", str(port), "--json", "--max-model-len", "1024",
                              "--kv-cache-gib", str(TEST_KV_CACHE_GIB), "--start-timeout", str(START_TIMEOUT_S), key=KEY)
            assert started.returncode == 0, started.stderr
            self.current = Resident(home, port, json.loads(started.stdout)["pid"], started.stdout + started.stderr)
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.current.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def keyed_resident(base_model: BaseModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedResident]:
    holder = KeyedResident(tmp_path_factory.mktemp("keyed"), base_model)
    try:
        yield holder
    finally:
        holder.stop()


@pytest.fixture
def keyed(keyed_resident: KeyedResident) -> Resident:
    return keyed_resident.live()


def _bonsai(home: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    if key is not None:
        env[API_KEY_ENV] = key
    return subprocess.run([sys.executable, "-m", "bonsai", "--home", str(home), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.serve
def test_wrong_or_missing_key_is_one_clear_message(keyed: Resident, tmp_path: Path) -> None:
    assert httpx.get(f"{keyed.endpoint}/v1/models", timeout=10).status_code == 401  # vLLM's own check
    debate = ["debate", "Tea beats coffee", "--endpoint", keyed.endpoint, "--format", "quick", "--rounds", "1", "--max-tokens", "6",
              "--store", str(tmp_path / "t.sqlite")]
    missing = _bonsai(tmp_path / "home", *debate)
    assert missing.returncode == 3 and "Traceback" not in missing.stderr
    assert f"the engine at {keyed.endpoint} needs an API key (HTTP 401) and none was sent" in missing.stderr
    assert "--api-key KEY or BONSAI_API_KEY=KEY" in missing.stderr
    assert not (tmp_path / "t.sqlite").exists()  # refused before the store was opened
    wrong = _bonsai(tmp_path / "home", *debate, "--api-key", "not-the-key", key=KEY)  # the flag wins over the environment
    assert wrong.returncode == 3 and "Traceback" not in wrong.stderr and "refused the API key (HTTP 401)" in wrong.stderr
    judge = _bonsai(tmp_path / "home", *debate, "--judge-endpoint", keyed.endpoint, "--judge-api-key", "nope", key=KEY)
    assert judge.returncode == 3 and "the judge's engine: the engine at" in judge.stderr and "--judge-api-key" in judge.stderr


@pytest.mark.serve
def test_debate_with_the_key_and_the_key_never_written(keyed: Resident, tmp_path: Path) -> None:
    done = _bonsai(tmp_path / "home", "debate", "Tea beats coffee", "--endpoint", keyed.endpoint, "--format", "quick", "--rounds", "1",
                   "--max-tokens", "6", "--store", str(tmp_path / "t.sqlite"), "--json", key=KEY)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["status"] == "finished"
    info = json.loads(resident.state_path(keyed.home, keyed.port).read_text())
    assert info["api_key_required"] is True
    for text in (keyed.printed, serve_log_path(keyed.home, keyed.port).read_text(), json.dumps(info), done.stdout, done.stderr):
        assert KEY not in text


@pytest.mark.serve
async def test_runtime_adapter_loads_stay_under_the_home(keyed: Resident, lora_adapters: list[Path]) -> None:
    outside = lora_adapters[0]
    inside = keyed.home / "adapters" / "advocate" / "v-test"
    shutil.copytree(lora_adapters[1], inside, dirs_exist_ok=True)
    async with OpenAIEngine([keyed.endpoint], api_key=KEY) as engine:
        with pytest.raises(AdapterError, match="outside this server's BONSAI_HOME") as info:
            await engine.add_adapter(inspect_adapter(outside))
        assert "HTTP 403" in info.value.message and "--allow-any-adapter-path" in info.value.message
        ref = inspect_adapter(inside)
        await engine.add_adapter(ref)
        served = {m["id"] for m in httpx.get(f"{keyed.endpoint}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()["data"]}
        assert ref.name in served
    # SageMaker's route to the same loader: no key, no load; with it, the folder is still checked
    sagemaker = httpx.post(f"{keyed.endpoint}/adapters", json={"name": "evil", "src": str(outside)}, timeout=30)
    assert sagemaker.status_code == 401
    sagemaker = httpx.post(f"{keyed.endpoint}/adapters", json={"name": "evil", "src": str(outside)}, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert sagemaker.status_code == 403
    hub = httpx.post(f"{keyed.endpoint}/v1/load_lora_adapter", json={"lora_name": "hub", "lora_path": "someone/lora"},
                     headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert hub.status_code == 403 and "hub ids" in hub.json()["error"]["message"]
    with pytest.raises(EngineAuthError):
        async with OpenAIEngine([keyed.endpoint]):
            pass


@pytest.mark.serve
def test_a_resident_engine_killed_is_reported_with_its_log(keyed_resident: KeyedResident, base_model: BaseModel) -> None:
    """Last in this module on purpose: it kills the resident engine the tests above used (one vLLM start
    less than an engine of its own)."""
    engine = keyed_resident.live()
    home, port, pid = engine.home, engine.port, engine.pid
    assert resident.state_path(home, port).exists()
    os.kill(pid, signal.SIGKILL)  # the server dies without a word
    deadline = time.monotonic() + 30
    while resident.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    status = _bonsai(home, "engine", "status", key=KEY)
    assert status.returncode == 3
    assert f"the engine on port {port} (pid {pid}, {base_model.name}) was running but its process is gone" in status.stderr
    assert "Last lines of" in status.stderr and ("Application startup complete" in status.stderr or "GET /v1/models" in status.stderr)  # the log's end
    assert not resident.state_path(home, port).exists()
    assert group_gone(pid), "vLLM's engine core outlived the crash report"
