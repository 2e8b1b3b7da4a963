"""Sweeps on Ray: the real CLI against a real local Ray cluster, and the driver's bookkeeping with fake workers.

The cluster is started here (``ray start --head --block`` in a process group of its own, every port free and
on 127.0.0.1, temp files in a short folder of its own) and stopped by signalling that group only, so a Ray
cluster that something else runs on this machine is never touched. The engine is transformers+PEFT: it
starts in seconds; the vLLM engine shares every line of the Ray path apart from the engine's kind.

Ray is a required dependency of the test environment (``make install`` installs the ``ray`` extra): without
it this module fails at import rather than skipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray  # noqa: F401  (required, never skipped: see the module docstring)
import yaml
from test_adapters import synthetic_lora

from bonsai.engine import EngineConfig
from bonsai.registry.identity import inspect_adapter
from bonsai.errors import AdapterError, ConfigError, EngineError, ModelError, StoreUnavailable
from bonsai.personas import PersonaBook, default_personas_dir
from bonsai.store.records import DebateRecord, TurnRecord
from bonsai.store.transcripts import TranscriptStore
from bonsai.sweep.config import load_sweep
from bonsai.sweep.plan import SweepJob, SweepPlan, plan_sweep
from bonsai.sweep.ray import dispatch
from bonsai.sweep.ray import worker as ray_worker
from bonsai.sweep.ray.dispatch import RaySweep, _Worker
from bonsai.sweep.ray.worker import DebateWorker, materialise_adapter

CLI_TIMEOUT_S = 300
#: loopback only: the cluster advertises 127.0.0.1 and binds there (Ray otherwise swaps 127.0.0.1 for the
#: machine's address); the driver needs the same setting to find it
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a real local cluster ------------------------------------------------------------------------------


@dataclass
class Cluster:
    address: str
    proc: subprocess.Popen[bytes]
    worker_home: Path

    def processes(self) -> list[psutil.Process]:
        """This cluster's processes only: its own process group and their descendants (Ray puts each worker
        in a process group of its own, under the raylet)."""
        out: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getpgid(p.pid) == self.proc.pid:
                    out[p.pid] = p
                    out.update({c.pid: c for c in p.children(recursive=True)})
        return list(out.values())


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # Ray's unix sockets live under its temp dir and must stay under 108 bytes: a short folder in /tmp
    ray_tmp = Path(tempfile.mkdtemp(prefix="bray-", dir="/tmp"))
    worker_home = tmp_path_factory.mktemp("ray-worker-home")
    port = _free_port()
    ports = {
        name: _free_port()
        for name in ("node-manager-port", "object-manager-port", "ray-client-server-port", "dashboard-port", "dashboard-agent-grpc-port",
                     "dashboard-agent-listen-port", "metrics-export-port", "runtime-env-agent-port")
    }
    args = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
        "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={ray_tmp}",
        *(f"--{name}={value}" for name, value in ports.items()),
    ]
    env = {**os.environ, **LOOPBACK, "BONSAI_HOME": str(worker_home), "AUTOSCALER_METRIC_PORT": str(_free_port()),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log_file = ray_tmp / "ray-start.log"
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while b"Ray runtime started" not in log_file.read_bytes():
            assert proc.poll() is None, f"ray start exited with {proc.returncode}:\n{log_file.read_text(errors='replace')}"
            assert time.monotonic() < deadline, f"ray start did not come up in 90 s:\n{log_file.read_text(errors='replace')}"
            time.sleep(0.5)
        yield Cluster(f"127.0.0.1:{port}", proc, worker_home)
    finally:
        # `ray start --block` stops its own processes on SIGTERM; stragglers of this cluster are killed by id
        cluster = Cluster("", proc, worker_home).processes()
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        for p in cluster:
            with contextlib.suppress(psutil.Error):
                p.kill()
        proc.wait(timeout=10)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _home(root: Path, base_model: Any) -> Path:
    """A bonsai home whose embedded model links to the one prepared for the session (nothing re-prepared)."""
    home = root / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / base_model.path.name).symlink_to(base_model.path)
    return home


def _short_format(root: Path) -> Path:
    """The quick format with short verdicts (most of a tiny debate's decoding is its judge's): a format file,
    so the Ray path's format shipping is exercised too."""
    raw = yaml.safe_load((Path(__file__).parents[1] / "bonsai" / "formats" / "quick.yaml").read_text())
    raw["name"] = "quick-short"
    raw["judge"]["max_tokens"] = 24
    path = root / "quick-short.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _sweep_file(root: Path, name: str, **over: Any) -> Path:
    cfg = {
        "name": name,
        "motions": ["Homework should be abolished", "Cities should ban private cars from their centres"],
        "pairings": [{"a": "advocate", "b": "skeptic"}],
        "sides": "both", "formats": [str(_short_format(root))], "rounds": 1, "max_tokens": 12, "concurrency": 4,
        "retries": 2, "backoff_s": 0.1,
        **over,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _personas_with_adapter(root: Path, adapter: Path) -> Path:
    """The shipped personas, the advocate debating on ``adapter`` (so pinning and adapter loading are exercised)."""
    folder = root / "personas"
    folder.mkdir()
    for f in default_personas_dir().glob("*.yaml"):
        raw = yaml.safe_load(f.read_text())
        if raw["name"] == "advocate":
            raw["adapter"] = str(adapter)
        (folder / f.name).write_text(yaml.safe_dump(raw, allow_unicode=True))
    return folder


def _cli_env() -> dict[str, str]:
    return {**os.environ, **LOOPBACK, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def _sweep_cmd(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "bonsai.cli.main", "--home", str(home), "sweep", *args]


def _summary(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


@dataclass
class Run:
    home: Path
    sweep_file: Path
    personas: Path
    adapter: Path
    done: subprocess.CompletedProcess[str]
    seconds: float


@pytest.fixture(scope="module")
def first_run(ray_cluster: Cluster, base_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("ray-sweep")
    home = _home(root, base_model)
    adapter = synthetic_lora(base_model.path, root / "lora-zero", rank=8, layers=2)
    personas = _personas_with_adapter(root, adapter)
    sweep_file = _sweep_file(root, "ray-grid")
    t0 = time.monotonic()
    done = subprocess.run(
        _sweep_cmd(home, str(sweep_file), "--ray", ray_cluster.address, "--ray-workers", "2", "--engine", "hf",
                   "--personas-dir", str(personas), "--json"),
        env=_cli_env(), capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
    )
    return Run(home, sweep_file, personas, adapter, done, time.monotonic() - t0)


def _plan(run: Run) -> SweepPlan:
    return plan_sweep(load_sweep(run.sweep_file), PersonaBook.load(run.personas), run.home)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sweep_on_a_local_ray_cluster_runs_every_debate_once_in_the_one_store(first_run: Run) -> None:
    done = first_run.done
    assert done.returncode == 0, done.stderr
    summary = _summary(done.stdout)
    assert (summary["status"], summary["debates"], summary["finished"], summary["finished_before"], summary["failed"]) == ("finished", 4, 4, 0, [])
    assert summary["tokens"] > 0
    assert "Traceback" not in done.stderr
    jobs = {j.debate_id: j for j in _plan(first_run).jobs}
    assert len(jobs) == 4
    adapter_name = inspect_adapter(first_run.adapter).name
    with TranscriptStore(first_run.home / "transcripts.sqlite") as store:
        debates = store.list_debates()
        assert sorted(d.debate_id for d in debates) == sorted(jobs)  # 4 rows, the plan's ids, each once
        workers = set()
        for d in debates:
            job = jobs[d.debate_id]
            assert d.status == "finished" and d.winner in ("A", "B", "tie")
            assert d.sweep == "ray-grid" and d.engine == "hf" and d.base_model == "smollm2-135m-instruct" and d.format == "quick-short"
            assert d.config["sweep_job"] == job.labels()
            # stored settings name the driver's adapter folder; the engine served it under its content name
            assert str(first_run.adapter.resolve()) in d.config["spec"]["adapters"].values()
            assert adapter_name in d.config["adapters"].values()
            turns = store.turns(d.debate_id)
            assert [t.turn_index for t in turns if t.role == "debater"] == [0, 1, 2, 3]
            assert any(t.adapter_name == adapter_name for t in turns)
            assert len(store.verdicts(d.debate_id)) >= 1
            workers.add((d.config["ray_worker"]["worker"], d.config["ray_worker"]["pid"]))
        assert {w for w, _ in workers} == {0, 1}  # both workers took part, each its own process
        assert len({pid for _, pid in workers}) == 2
        assert sum(t for _, _, t in store.sweep_results("ray-grid")) == summary["tokens"]
        assert store.get_sweep("ray-grid").status == "finished"


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_resume_of_a_finished_ray_sweep_runs_nothing(first_run: Run, ray_cluster: Cluster) -> None:
    assert first_run.done.returncode == 0, first_run.done.stderr
    done = subprocess.run(
        _sweep_cmd(first_run.home, str(first_run.sweep_file), "--resume", "--ray", ray_cluster.address, "--ray-workers", "2",
                   "--engine", "hf", "--personas-dir", str(first_run.personas), "--json"),
        env=_cli_env(), capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    summary = _summary(done.stdout)
    assert (summary["finished"], summary["finished_before"], summary["tokens"], summary["failed"]) == (4, 4, 0, [])
    with TranscriptStore(first_run.home / "transcripts.sqlite") as store:
        assert len(store.list_debates()) == 4
        assert store.get_sweep("ray-grid").status == "finished"


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_worker_killed_mid_debate_is_restarted_and_its_debates_run_again(ray_cluster: Cluster, base_model: Any, tmp_path: Path) -> None:
    home = _home(tmp_path, base_model)
    sweep_file = _sweep_file(tmp_path, "ray-kill")
    proc = subprocess.Popen(
        _sweep_cmd(home, str(sweep_file), "--ray", ray_cluster.address, "--ray-workers", "2", "--engine", "hf", "--json"),
        env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        victim = None
        deadline = time.monotonic() + 180
        while victim is None:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no worker started a debate within 180 s"
            for p in ray_cluster.processes():
                with contextlib.suppress(psutil.Error):
                    if " ".join(p.cmdline()).startswith("ray::DebateWorker.run_job"):
                        victim = p
                        break
            time.sleep(0.2)
        time.sleep(2)  # into its first turns
        victim.kill()  # a worker of the cluster this module started
        out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    summary = _summary(out)
    assert (summary["finished"], summary["failed"]) == (4, [])
    assert "died" in err and "is back" in err
    # the killed worker never cleaned up; its restarted successor removed its temp folder, and closing the others
    assert not [d for d in ray_worker.WORKER_TMP.glob("worker*") if f"-{victim.pid}-" in d.name]
    with TranscriptStore(home / "transcripts.sqlite") as store:
        debates = store.list_debates()
        assert len(debates) == 4 and all(d.status == "finished" for d in debates)


@pytest.mark.timeout(120)
def test_a_bad_address_fails_fast_with_one_clear_error(base_model: Any, tmp_path: Path) -> None:
    home = _home(tmp_path, base_model)
    sweep_file = _sweep_file(tmp_path, "ray-nowhere")
    t0 = time.monotonic()
    done = subprocess.run(
        _sweep_cmd(home, str(sweep_file), "--ray", f"127.0.0.1:{_free_port()}", "--engine", "hf", "--json"),
        env=_cli_env(), capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
    )
    assert done.returncode == ConfigError.exit_code, done.stderr
    assert time.monotonic() - t0 < 60
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no Ray cluster answers at 127.0.0.1:" in errors[0], done.stderr
    assert "ray start --head" in done.stderr and "Traceback" not in done.stderr
    with TranscriptStore(home / "transcripts.sqlite") as store:
        assert store.get_sweep("ray-nowhere") is None  # nothing recorded: it can be run again as it is


# --- the worker's shipped files, without Ray ------------------------------------------------------------


async def test_a_shipped_adapter_is_written_under_its_hash_and_a_local_copy_is_used_as_it_is(base_model: Any, tmp_path: Path, isolated_home: Path) -> None:
    real = synthetic_lora(base_model.path, tmp_path / "lora", rank=8, layers=1)
    ref = inspect_adapter(real)
    files = {f.name: f.read_bytes() for f in real.iterdir() if f.is_file()}
    elsewhere = str(tmp_path / "on-the-driver" / "lora")  # a path this "node" does not have
    fmt_text = (Path(__file__).parents[1] / "bonsai" / "formats" / "quick.yaml").read_text()
    setup = {
        "adapters": {elsewhere: {"hash": ref.content_hash, "files": files}, str(real): {"hash": ref.content_hash, "files": files}},
        "formats": {"/on-the-driver/my-format.yaml": fmt_text},
    }
    worker = DebateWorker(0, setup)
    from bonsai.debate.runner import DebateSpec

    spec = DebateSpec(motion="m", format="/on-the-driver/my-format.yaml", adapters={"advocate": elsewhere, "skeptic": str(real), "judge": None})
    local = await worker.localise(spec)
    shipped = Path(local.adapters["advocate"])
    assert shipped == isolated_home / "cache" / "ray-adapters" / ref.content_hash
    assert inspect_adapter(shipped).name == ref.name  # the same name on every node: it is the content's
    assert local.adapters["skeptic"] == str(real) and local.adapters["judge"] is None
    assert Path(local.format).read_text() == fmt_text and Path(local.format).is_relative_to(isolated_home)
    assert (await worker.localise(spec)).adapters == local.adapters  # cached, written once

    broken = dict(files, **{"adapter_model.safetensors": files["adapter_model.safetensors"][:-8] + b"\x01" * 8})
    with pytest.raises(AdapterError, match="hashes to"):
        materialise_adapter(tmp_path / "other-cache", ref.content_hash, broken)


def test_a_worker_without_the_base_prepares_the_embedded_one_or_names_the_missing_folder(base_model: Any, isolated_home: Path) -> None:
    config = EngineConfig(kind="hf", base_model=Path("/nonexistent/models/smollm2-135m-instruct"), base_hash=base_model.content_hash)
    with pytest.raises(ModelError, match="/nonexistent/models/smollm2-135m-instruct does not exist on Ray worker 3"):
        DebateWorker(3, {"embedded": False})._local_base(config, isolated_home)
    (isolated_home / "models").mkdir()
    (isolated_home / "models" / base_model.path.name).symlink_to(base_model.path)  # stands for a fresh preparation
    local = DebateWorker(3, {"embedded": True})._local_base(config, isolated_home)
    assert local.base_model == isolated_home / "models" / base_model.path.name
    with pytest.raises(ModelError, match="differs from the driver's"):
        DebateWorker(3, {"embedded": True})._local_base(config.model_copy(update={"base_hash": "0" * 64}), isolated_home)


# --- the driver's bookkeeping, with fake workers ---------------------------------------------------------


class FakeDied(Exception):
    """Stands for ray.exceptions.RayActorError."""


class FakeUnavailable(FakeDied):
    """Stands for ray.exceptions.ActorUnavailableError (a worker that Ray is restarting)."""


def _bundle(job: SweepJob, *, tokens: int, status: str = "finished") -> dict[str, Any]:
    now = time.time()
    debate = DebateRecord(
        debate_id=job.debate_id, motion=job.spec.motion, format="quick", rounds=1, base_model="m", engine="hf",
        seats={"A": ["advocate"], "B": ["skeptic"]}, seed=0, candidates=1, created_at=now, status=status,
        winner="A" if status == "finished" else None, finished_at=now, sweep=job.spec.sweep,
        config={"sweep_job": job.labels(), "spec": {"motion": "the worker's copy"}},
    )
    turn = TurnRecord(
        debate_id=job.debate_id, turn_index=0, phase="opening", round=0, speaker="advocate", team="A", role="debater", text="t",
        answer="t", reasoning=None, adapter_name=None, adapter_hash=None, base_model="m", prompt_tokens=3, output_tokens=tokens,
        latency_s=0.1, first_token_s=0.01, sampling={}, seed=0, finish_reason="stop",
    )
    return {"debate": debate.to_dict(), "turns": [turn.to_dict()], "candidates": [], "verdicts": []}


class FakeCluster:
    """Workers whose answers follow a script: per debate, the outcome of each attempt ("ok" after it runs out)."""

    def __init__(self, script: dict[int, list[str]] | None = None, *, starts: list[str] | None = None, tokens: int = 5) -> None:
        self.script = script or {}
        self.starts = starts or []
        self.tokens = tokens
        self.calls: list[tuple[int, str]] = []
        self.cancelled: list[str] = []
        self.ids: list[str] = []

    def call(self, worker: _Worker, method: str, args: tuple[Any, ...]) -> tuple[Any, Any]:
        if method == "start":
            outcome = self.starts.pop(0) if self.starts else "ok"

            async def start() -> dict[str, Any]:
                await asyncio.sleep(0.01)
                if outcome == "restarting":
                    raise FakeUnavailable("the actor is restarting")
                if outcome == "gone":
                    raise FakeDied("the actor died for good")
                return {}

            return start(), lambda: None
        job = SweepJob.model_validate_json(args[0])
        self.calls.append((worker.index, job.debate_id))
        steps = self.script.get(self.ids.index(job.debate_id), [])
        outcome = steps.pop(0) if steps else "ok"

        async def run() -> dict[str, Any]:
            await asyncio.sleep(0.02)
            if outcome == "engine":
                raise EngineError("the engine hiccuped")
            if outcome == "store":
                raise StoreUnavailable("The transcript store w.sqlite is locked by another process", kind="locked")
            if outcome == "died":
                raise FakeDied("worker process died")
            if outcome == "config":
                raise ConfigError("the motion does not fit")
            if outcome == "bug":
                raise KeyError("oops")
            if outcome == "slow":
                await asyncio.sleep(30)
            if outcome == "wait":
                await asyncio.sleep(0.5)
            return _bundle(job, tokens=self.tokens)

        return run(), lambda: self.cancelled.append(job.debate_id)


def _fake_plan(tmp_path: Path, isolated_home: Path, **over: Any) -> SweepPlan:
    motions = [f"Motion number {i} should pass" for i in range(3)]
    path = _sweep_file(tmp_path, "fake", motions=motions, backoff_s=0.01, **over)
    return plan_sweep(load_sweep(path), PersonaBook.load(), isolated_home)


async def _dispatch(plan: SweepPlan, store: TranscriptStore, cluster: FakeCluster, workers: int = 2, slots: int = 2) -> Any:
    cluster.ids = [j.debate_id for j in plan.jobs]
    pool = [_Worker(i, None, slots) for i in range(workers)]
    sweep = RaySweep(plan, store, pool, cluster.call, actor_errors=(FakeDied,), unavailable_errors=(FakeUnavailable,))
    result = await asyncio.wait_for(sweep.run(list(plan.jobs)), 30)
    return sweep, pool, result


async def test_engine_errors_and_dead_workers_are_retried_and_other_errors_fail_once(
    tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "RECOVERY_POLL_S", 0.01)
    plan = _fake_plan(tmp_path, isolated_home, retries=2)
    assert len(plan.jobs) == 6
    # job 5 takes longest, so the run outlasts the dead worker's recovery
    cluster = FakeCluster({0: ["engine"], 1: ["died"], 2: ["config"], 3: ["engine", "engine", "engine"], 4: ["bug"], 5: ["wait"]},
                          starts=["restarting", "restarting", "ok"])
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        sweep, pool, result = await _dispatch(plan, store, cluster)
        ids = cluster.ids
        failed = {f.debate_id: f for f in result.failures}
        assert set(failed) == {ids[2], ids[3], ids[4]}
        assert failed[ids[2]].attempts == 1 and failed[ids[2]].message == "the motion does not fit"  # not retried
        assert failed[ids[3]].attempts == 3 and "engine error: the engine hiccuped (after 3 attempts)" == failed[ids[3]].message
        assert failed[ids[4]].attempts == 1 and failed[ids[4]].message.startswith("KeyError")
        assert (result.finished, result.total, result.stopped, result.tokens) == (3, 6, None, 15)
        assert sweep.progress.retries == 4  # job 0 once, job 1 once (its worker died), job 3 twice
        assert [c[1] for c in cluster.calls].count(ids[1]) == 2
        died = next(w for w in pool if w.deaths)
        assert died.deaths == 1 and died.alive and not died.recovering and cluster.starts == []  # back after two "still restarting"
        assert {d.debate_id for d in store.list_debates()} == {ids[0], ids[1], ids[5]}
        assert store.get_debate(ids[0]).config["spec"] == plan.jobs[0].spec.model_dump(mode="json")  # the driver's settings


async def test_a_worker_gone_for_good_leaves_its_jobs_to_the_others_and_none_left_is_an_error(tmp_path: Path, isolated_home: Path) -> None:
    plan = _fake_plan(tmp_path, isolated_home, retries=2)
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        cluster = FakeCluster({0: ["died"]}, starts=["gone"])
        _, pool, result = await _dispatch(plan, store, cluster)
        assert result.finished == 6 and not result.failures
        assert [w.alive for w in pool].count(False) == 1
    with TranscriptStore(tmp_path / "t2.sqlite") as store:
        cluster = FakeCluster({0: ["died"]}, starts=["gone"])
        with pytest.raises(EngineError, match="every Ray worker died for good"):
            await _dispatch(plan, store, cluster, workers=1)


async def test_the_token_budget_stops_the_run_and_cancels_the_debates_in_flight(tmp_path: Path, isolated_home: Path) -> None:
    plan = _fake_plan(tmp_path, isolated_home, budget={"tokens": 8})
    cluster = FakeCluster({2: ["slow"], 3: ["slow"], 4: ["slow"], 5: ["slow"]}, tokens=5)
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        _, _, result = await _dispatch(plan, store, cluster)
        assert result.finished == 2 and result.stopped == "token budget of 8 reached (10 generated)"
        assert cluster.cancelled and set(cluster.cancelled) <= set(cluster.ids[2:])
        assert len(store.list_debates()) == 2


async def test_the_wall_budget_stops_the_run(tmp_path: Path, isolated_home: Path) -> None:
    plan = _fake_plan(tmp_path, isolated_home, budget={"wall_s": 0.3})
    cluster = FakeCluster({i: ["slow"] for i in range(6)})
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        t0 = time.monotonic()
        _, _, result = await _dispatch(plan, store, cluster)
        assert time.monotonic() - t0 < 5
        assert result.finished == 0 and result.stopped == "wall-time budget of 0.3 s reached"
        assert len(cluster.cancelled) == 4  # two workers x two slots were in flight
