"""Fault injection: the store locked by another process, a full disk, SIGKILL in the middle of a sweep, a
debate, a promotion and a training run, two runs of one sweep (or debate) at once, stale server state, and one token
count whichever way a debate ran. Each test is a row of the fault table in docs/reliability.md.

The faults are real (another process's ``BEGIN EXCLUSIVE``, a 16 MiB tmpfs, ``kill -9``, ``flock``); the
engine is the scripted one where the fault is about bonsai's own bookkeeping, which is all of these
but the last two tests (a real ``bonsai debate`` killed and resumed on the real engine, a real ``bonsai
train`` killed and run again)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fakes import FakeEngine
from test_store import debate
from test_sweep import CountingEngine, assert_each_finished_once, run_sweep, write_sweep
from trainkit import cli, register_version, small_adapter, tiny_recipe, write_dataset

from bonsai import locks, orphans
from bonsai.cli.main import main
from bonsai.debate import events as ev
from bonsai.debate.runner import DebateRunner
from bonsai.debate.spec import DebateSpec
from bonsai.debate.usage import bundle_tokens
from bonsai.engine import GenerationRequest, StreamEvent
from bonsai.engine.types import Completion
from bonsai.errors import LockHeld, StoreError, StoreUnavailable
from bonsai.model.prepare import BaseModel
from bonsai.personas import PersonaBook
from bonsai.store import db as store_db
from bonsai.store.transcripts import TranscriptStore
from bonsai.sweep.config import Budget

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
FREE_KB = 1024  # room left on the small disk: a few debates fit, then it is full
UNREACHABLE = "http://127.0.0.1:9"  # discard port: nothing listens, so a run that got past its lock stops at once


@pytest.fixture
def book() -> PersonaBook:
    return PersonaBook.load()


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_db, "BUSY_TIMEOUT_MS", 200)  # 10 s in use; the behaviour is the same


@contextlib.contextmanager
def sqlite_lock_held(path: Path, seconds: float = 600.0) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the database's write lock (``BEGIN EXCLUSIVE``) for ``seconds``."""
    code = ("import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None); db.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True); time.sleep(float(sys.argv[2]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


class LockingEngine(CountingEngine):
    """The scripted engine, which on call ``at`` has another process take the store's write lock."""

    def __init__(self, store: Path, *, at: int, seconds: float) -> None:
        super().__init__()
        self.store, self.at, self.seconds = store, at, seconds
        self.stack = contextlib.ExitStack()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        if self.n + 1 == self.at:
            self.stack.enter_context(sqlite_lock_held(self.store, self.seconds))
        async for e in super().stream(request):
            yield e


# --- the store locked by another process ---------------------------------------------------------


def test_a_write_to_a_locked_store_is_one_clear_error(tmp_path: Path, short_busy_timeout: None) -> None:
    path = tmp_path / "t.sqlite"
    with TranscriptStore(path) as store:
        store.create_debate(debate("d1"))
        with sqlite_lock_held(path):
            assert [d.debate_id for d in store.list_debates()] == ["d1"]  # readers go on (WAL)
            with pytest.raises(StoreUnavailable) as caught:
                store.set_status("d1", "failed")
            with pytest.raises(StoreUnavailable, match="is locked by another process"):
                TranscriptStore(path)  # a writer opening it (the migration check takes the write lock)
        store.set_status("d1", "failed")  # the lock gone, the same store works again
    err = caught.value
    assert isinstance(err, StoreError) and err.kind == "locked" and err.retryable and err.exit_code == 5
    assert "is locked by another process" in str(err) and "0.2 s busy timeout" in str(err) and "--resume" in str(err)


async def test_a_sweep_retries_a_debate_until_the_other_writer_lets_go(tmp_path: Path, book: PersonaBook, isolated_home: Path,
                                                                       short_busy_timeout: None) -> None:
    engine = LockingEngine(tmp_path / "t.sqlite", at=3, seconds=1.0)
    path = write_sweep(tmp_path, motions=["M1"], concurrency=1, retries=4)
    with engine.stack:
        plan, result = await run_sweep(tmp_path, book, isolated_home, engine, path, sleep=lambda s: asyncio.sleep(0.4))
    assert result.complete and not result.failures
    assert_each_finished_once(tmp_path / "t.sqlite", plan)


async def test_a_lock_held_throughout_fails_the_debates_with_the_reason_and_the_next_run_finishes_them(
        tmp_path: Path, book: PersonaBook, isolated_home: Path, short_busy_timeout: None) -> None:
    engine = LockingEngine(tmp_path / "t.sqlite", at=3, seconds=600)
    path = write_sweep(tmp_path, motions=["M1"], concurrency=1, retries=1)
    with engine.stack:
        plan, result = await run_sweep(tmp_path, book, isolated_home, engine, path)
        # the worker survived: every debate was tried and reported, none raised out of the sweep
        assert result.finished == 0 and len(result.failures) == 2
        for f in result.failures:
            assert f.message.startswith("store error after 2 attempts: The transcript store") and "locked by another process" in f.message
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        # the first debate's row could not be written either: it stays "running" until the next run
        assert {d.status for d in store.list_debates()} <= {"running", "failed"}
    _, again = await run_sweep(tmp_path, book, isolated_home, CountingEngine(), path)
    assert again.complete and not again.failures
    assert_each_finished_once(tmp_path / "t.sqlite", plan)


# --- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the full-disk fault was not tried")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here ({done.stderr.strip()}); the full-disk fault was not tried")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_full_disk_fails_debates_with_the_reason_and_loses_nothing_finished(small_disk: Path, tmp_path: Path, book: PersonaBook,
                                                                                   isolated_home: Path) -> None:
    path = write_sweep(tmp_path, motions=[f"Motion {i}" for i in range(8)], concurrency=2, retries=1)
    # the disk has room for the store and a few debates, then fills up
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (16 * 1024 * 1024 - FREE_KB * 1024))
    plan, result = await run_sweep(small_disk, book, isolated_home, CountingEngine(), path)
    assert 0 < result.finished < len(plan.jobs) and result.failures
    assert all("is full" in f.message for f in result.failures), [f.message for f in result.failures]
    with TranscriptStore(small_disk / "t.sqlite", read_only=True) as store:
        finished = {d.debate_id: [t.to_dict() for t in store.turns(d.debate_id)] for d in store.list_debates(status="finished")}
    assert len(finished) == result.finished
    filler.unlink()  # space freed: the next run finishes the rest, and what had finished is untouched
    _, again = await run_sweep(small_disk, book, isolated_home, CountingEngine(), path)
    assert again.complete and again.skipped == len(finished)
    assert_each_finished_once(small_disk / "t.sqlite", plan)
    with TranscriptStore(small_disk / "t.sqlite", read_only=True) as store:
        assert {k: [t.to_dict() for t in store.turns(k)] for k in finished} == finished


async def test_ray_retries_store_errors_on_a_worker_and_on_the_drivers_import(tmp_path: Path, isolated_home: Path,
                                                                               short_busy_timeout: None) -> None:
    from test_sweep_ray import FakeCluster, _dispatch, _fake_plan

    plan = _fake_plan(tmp_path, isolated_home, retries=3)
    cluster = FakeCluster({0: ["store"], 1: ["store", "store", "store", "store"]})
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        with sqlite_lock_held(tmp_path / "t.sqlite", seconds=0.3):  # the driver's store, while the first bundles arrive
            sweep, _, result = await _dispatch(plan, store, cluster)
        ids = cluster.ids
        assert [f.debate_id for f in result.failures] == [ids[1]]
        assert result.failures[0].message == "store error: The transcript store w.sqlite is locked by another process (after 4 attempts)"
        assert result.finished == 5 and sweep.progress.retries > 4  # 4 scripted, and at least one import into the locked store
        assert {d.debate_id for d in store.list_debates()} == set(ids) - {ids[1]}


# --- SIGKILL in the middle of a sweep, a debate, a promotion -------------------------------------

SWEEP_SCRIPT = """
import asyncio, sys
from pathlib import Path
from test_sweep import CountingEngine, run_sweep
from bonsai.personas import PersonaBook
folder, sweep_file, home = map(Path, sys.argv[1:4])
asyncio.run(run_sweep(folder, PersonaBook.load(), home, CountingEngine(delay=0.02), sweep_file,
                      on_debate=lambda job, s: print('finished', job.debate_id, flush=True)))
"""


async def test_a_sweep_killed_midway_loses_and_repeats_nothing_finished(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    path = write_sweep(tmp_path, motions=["M1", "M2", "M3"], concurrency=2)
    proc = subprocess.Popen([sys.executable, "-c", SWEEP_SCRIPT, str(tmp_path), str(path), str(isolated_home)], stdout=subprocess.PIPE,
                            text=True, env=ENV)
    assert proc.stdout is not None
    for _ in range(2):
        assert proc.stdout.readline().startswith("finished ")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    with TranscriptStore(tmp_path / "t.sqlite", read_only=True) as store:
        statuses = {d.debate_id: d.status for d in store.list_debates()}
        finished = {k: [t.to_dict() for t in store.turns(k)] for k, s in statuses.items() if s == "finished"}
    assert len(finished) >= 2 and "running" in statuses.values()  # what kill -9 leaves: debates "running", half done
    plan, result = await run_sweep(tmp_path, book, isolated_home, CountingEngine(), path)
    assert result.complete and result.skipped == len(finished)
    assert_each_finished_once(tmp_path / "t.sqlite", plan)
    with TranscriptStore(tmp_path / "t.sqlite", read_only=True) as store:
        assert {k: [t.to_dict() for t in store.turns(k)] for k in finished} == finished  # finished ones untouched


DEBATE_SCRIPT = """
import asyncio, sys
from pathlib import Path
from test_sweep import CountingEngine
from bonsai.debate import events as ev
from bonsai.debate.runner import DebateRunner
from bonsai.debate.spec import DebateSpec
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore
folder, home = map(Path, sys.argv[1:3])
async def go():
    with TranscriptStore(folder / "t.sqlite") as store:
        async with DebateRunner(CountingEngine(delay=0.05), store, folder / "ck.sqlite", PersonaBook.load(), home, "fake") as runner:
            async for e in runner.run(DebateSpec(motion="Tea beats coffee", format="standard", candidates=2, seed=3), debate_id="killed"):
                if isinstance(e, ev.TurnEnd):
                    print("turn", e.turn, flush=True)
asyncio.run(go())
"""


async def test_a_debate_killed_midway_resumes_from_its_last_turn(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", DEBATE_SCRIPT, str(tmp_path), str(isolated_home)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout is not None
    for i in range(3):
        assert proc.stdout.readline().strip() == f"turn {i}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        assert store.get_debate("killed").status == "running"
        before = [t.to_dict() for t in store.turns("killed")]
        assert len(before) >= 3
        async with DebateRunner(CountingEngine(), store, tmp_path / "ck.sqlite", book, isolated_home, "fake") as runner:
            resumed = [e async for e in runner.resume("killed")]
        start = resumed[0]
        assert isinstance(start, ev.DebateStart) and start.resumed and start.turns_done is not None and start.turns_done >= 2
        assert isinstance(resumed[-1], ev.DebateEnd) and resumed[-1].status == "finished"
        turns = store.turns("killed")
        assert [t.turn_index for t in turns] == list(range(len(turns)))  # keyed by index: nothing twice
        assert [t.to_dict() for t in turns[: start.turns_done]] == before[: start.turns_done]  # checkpointed turns kept as they were
        assert len(store.verdicts("killed")) == 1


PROMOTE_SCRIPT = """
import sys
from pathlib import Path
from bonsai import registry
home, a, b = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
print("go", flush=True)
i = 0
while True:
    registry.promote(home, "advocate", (a, b)[i % 2]); i += 1
"""


def test_a_promotion_killed_midway_leaves_a_valid_pointer_and_history(isolated_home: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    versions = [register_version(isolated_home, "advocate", small_adapter(tmp_path / f"a{i}", seed=i)) for i in range(2)]
    folder = isolated_home / "adapters" / "advocate"
    for attempt in range(5):  # killed at a random moment: a few tries to also catch one inside a write
        proc = subprocess.Popen([sys.executable, "-c", PROMOTE_SCRIPT, str(isolated_home), *versions], stdout=subprocess.PIPE, text=True, env=ENV)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
        time.sleep(0.3 + 0.1 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert (folder / "current").read_text().strip() in versions  # the old pointer or the new one, never half
        history = json.loads((folder / "history.json").read_text())
        assert history and all(e.get("version") in versions for e in history if "version" in e)
    stages = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    old = time.time() - 120
    for p in stages:
        os.utime(p, (old, old))
    assert cli(["adapters", "list"], pytest.MonkeyPatch()) == 0  # the next start removes what the kills left
    capsys.readouterr()
    assert not [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def test_a_stale_serve_file_is_removed_at_the_next_start(isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, live = isolated_home / "serve-8765.json", isolated_home / "serve-8766.json"
    stale.write_text(json.dumps({"endpoint": "http://127.0.0.1:8765/v1", "pid": dead.pid, "server_pid": dead.pid}))
    live.write_text(json.dumps({"endpoint": "http://127.0.0.1:8766/v1", "pid": os.getpid(), "server_pid": dead.pid}))
    assert main(["adapters", "list"]) == 0
    capsys.readouterr()
    assert not stale.exists() and live.exists()


def test_engine_processes_of_a_dead_owner_are_stopped_at_the_next_start(isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Processes marked with a dead owner's tag are killed at any command's start; a live owner's, a reused
    pid's (same pid, other start time: the owner tag's start differs) and unmarked ones are left alone."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    marked = lambda tag: subprocess.Popen(sleeper, env={**os.environ, orphans.ENGINE_OWNER_ENV: tag})  # noqa: E731
    orphan = marked(f"{dead.pid}:1")
    reused = marked(f"{os.getpid()}:1")  # our pid, but not our start time: the owner it names is gone
    owned = marked(orphans.owner_tag())
    plain = subprocess.Popen(sleeper)
    try:
        time.sleep(0.5)  # their environment is readable once they have started
        assert main(["adapters", "list"]) == 0
        capsys.readouterr()
        assert orphan.wait(10) == -signal.SIGKILL and reused.wait(10) == -signal.SIGKILL
        assert owned.poll() is None and plain.poll() is None
        assert orphans.kill_orphaned_engines() == []  # nothing left to stop
    finally:
        for proc in (orphan, reused, owned, plain):
            proc.kill()
            proc.wait()


def test_a_killed_trainers_scratch_folder_is_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed, running = tmp_path / f"bonsai-train-{dead.pid}-x1", tmp_path / f"bonsai-train-{os.getpid()}-x2"
    for folder in (killed, running):
        (folder / "checkpoint-1").mkdir(parents=True)
        os.utime(folder, (time.time() - 120,) * 2)
    assert orphans.remove_dead_train_scratch(tmp_path) == [killed]
    assert running.exists()


# --- one run of a sweep (or a resumed debate) at a time ---------------------------------------------

HOLDER_SCRIPT = """
import sys, time
from pathlib import Path
from bonsai import locks, orphans
home, kind, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
sys.argv = ["bonsai", *sys.argv[4:]]  # what the lock records as its holder's command
lock = (locks.sweep_lock if kind == "sweep" else locks.debate_lock)(home, name).acquire()
if "--orphan-child" in sys.argv:
    import subprocess, os
    child = subprocess.Popen(["sleep", "60"], pass_fds=[lock._fd])  # a child inherits the lock, then the holder dies
    print("held", child.pid, flush=True)
    os._exit(0)
print("held", flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def lock_holder(home: Path, kind: str, name: str, *command: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(home), kind, name, *command], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:1] == ["held"]
        proc.child = int(line[1]) if len(line) > 1 else None  # type: ignore[attr-defined]
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def bonsai(*argv: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bonsai", *argv], capture_output=True, text=True, timeout=120,
                          env={**ENV, "BONSAI_HOME": str(home)})


def test_a_second_run_of_a_sweep_is_refused_saying_who_holds_it(tmp_path: Path, isolated_home: Path) -> None:
    path = write_sweep(tmp_path)
    with lock_holder(isolated_home, "sweep", "s1", "sweep", str(path), "--resume") as holder:
        run = bonsai("sweep", str(path), "--endpoint", UNREACHABLE, home=isolated_home)
        assert run.returncode == 6, run.stderr
        assert f"error: sweep 's1' is in use by another bonsai process (pid {holder.pid}, `bonsai sweep {path} --resume`, since " in run.stderr
        assert f"kill {holder.pid}" in run.stderr
        holder.send_signal(signal.SIGKILL)  # the holder dies: the kernel drops its lock
        holder.wait(10)
        run = bonsai("sweep", str(path), "--endpoint", UNREACHABLE, home=isolated_home)
        assert run.returncode != 6 and "in use by another" not in run.stderr  # got past the lock (then no server)
    assert not list((isolated_home / "locks").glob("*.lock"))  # released and removed on the way out


async def test_a_debate_resume_is_refused_while_its_sweep_or_another_resume_runs(tmp_path: Path, book: PersonaBook,
                                                                                 isolated_home: Path) -> None:
    path = write_sweep(tmp_path, motions=["M1"])
    plan, result = await run_sweep(tmp_path, book, isolated_home, CountingEngine(delay=0.01), path, budget=Budget(tokens=5))
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        unfinished = [d.debate_id for d in store.list_debates() if d.status != "finished"]
    assert unfinished
    debate_id = unfinished[0]
    store_arg = ["--store", str(tmp_path / "t.sqlite")]
    with lock_holder(isolated_home, "sweep", "s1", "sweep", "s1.yaml", "--resume"):
        run = bonsai("debate", "--resume", debate_id, *store_arg, "--endpoint", UNREACHABLE, home=isolated_home)
        assert run.returncode == 6 and "sweep 's1' is in use by another bonsai process" in run.stderr, run.stderr
    with lock_holder(isolated_home, "debate", debate_id, "debate", "--resume", debate_id) as holder:
        run = bonsai("debate", "--resume", debate_id, *store_arg, "--endpoint", UNREACHABLE, home=isolated_home)
        assert run.returncode == 6 and f"debate {debate_id} is in use by another bonsai process (pid {holder.pid}" in run.stderr, run.stderr


def test_a_lock_kept_by_an_orphaned_child_is_taken_over(isolated_home: Path) -> None:
    with lock_holder(isolated_home, "sweep", "s1", "sweep", "s1.yaml", "--orphan-child") as holder:
        holder.wait(10)  # the holder is gone; a `sleep` it started keeps the flock on the file
        children = [holder.child]  # type: ignore[attr-defined]
        try:
            with locks.sweep_lock(isolated_home, "s1"):
                with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
                    locks.sweep_lock(isolated_home, "s1").acquire()  # and now it is ours, for everyone else
        finally:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


# --- one token count ------------------------------------------------------------------------------


class MeteredFake(FakeEngine):
    """The scripted engine, keeping the output tokens of every completion it produced (the truth)."""

    def __init__(self) -> None:
        super().__init__(p_a=0.7)
        self.produced: dict[str, int] = {}

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        async for e in super().stream(request):
            if isinstance(e, Completion):
                self.produced[request.request_id] = e.output_tokens
            yield e


SPEC = DebateSpec(motion="Tea beats coffee", format="quick", candidates=2, seed=7, personas=["advocate", "skeptic", "judge"])


async def _debate(folder: Path, book: PersonaBook, home: Path, *, stop_after_turns: int | None = None) -> tuple[int, MeteredFake]:
    """Run the SPEC debate (id "d"), or stop it after some turns and resume it; returns the tokens its events reported."""
    engine, counted = MeteredFake(), 0
    with TranscriptStore(folder / "t.sqlite") as store:
        async with DebateRunner(engine, store, folder / "ck.sqlite", book, home, "fake") as runner:
            async with contextlib.aclosing(runner.run(SPEC, debate_id="d", stream_tokens=False)) as events:
                async for e in events:
                    counted += ev.generated_tokens(e)
                    if stop_after_turns is not None and isinstance(e, ev.TurnStart) and e.turn == stop_after_turns:
                        break  # closed before that turn generates anything: saved as interrupted
            if stop_after_turns is not None:
                assert store.get_debate("d").status == "interrupted"
                async for e in runner.resume("d", stream_tokens=False):
                    counted += ev.generated_tokens(e)
        assert store.get_debate("d").status == "finished"
    return counted, engine


async def test_one_token_count_for_a_local_a_resumed_and_a_ray_shipped_debate(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "resumed").mkdir()
    local, engine = await _debate(tmp_path / "local", book, isolated_home)
    resumed, _ = await _debate(tmp_path / "resumed", book, isolated_home, stop_after_turns=2)
    truth = sum(engine.produced.values())
    judge = sum(n for rid, n in engine.produced.items() if "-judge-" in rid)
    probes = sum(n for rid, n in engine.produced.items() if rid.endswith(("-score-AB", "-score-BA")))
    assert judge > 0 and probes > 0  # the debate did generate judge readings and best-of-N probes
    assert local == resumed == truth
    with TranscriptStore(tmp_path / "local" / "t.sqlite") as store:
        assert store.debate_tokens("d") == truth
        bundle = store.export_bundle("d")  # what a Ray worker ships to the driver
        assert sum(v.output_tokens for v in store.verdicts("d")) == judge
    with TranscriptStore(tmp_path / "resumed" / "t.sqlite") as store:
        assert store.debate_tokens("d") == truth
    assert bundle_tokens(bundle) == truth
    with TranscriptStore(tmp_path / "imported.sqlite") as store:  # the driver's store after the import
        store.import_bundle(bundle)
        assert store.debate_tokens("d") == truth


async def test_a_sweep_counts_the_same_tokens_run_at_once_or_stopped_and_resumed(tmp_path: Path, book: PersonaBook,
                                                                                   isolated_home: Path) -> None:
    (tmp_path / "once").mkdir()
    (tmp_path / "twice").mkdir()
    path = write_sweep(tmp_path, motions=["M1", "M2"], concurrency=2, candidates=[2])
    plan, once = await run_sweep(tmp_path / "once", book, isolated_home, CountingEngine(), path)
    _, first = await run_sweep(tmp_path / "twice", book, isolated_home, CountingEngine(delay=0.01), path, budget=Budget(tokens=30))
    assert first.stopped and not first.complete
    _, second = await run_sweep(tmp_path / "twice", book, isolated_home, CountingEngine(), path, budget=Budget())
    assert second.complete
    with TranscriptStore(tmp_path / "once" / "t.sqlite") as a, TranscriptStore(tmp_path / "twice" / "t.sqlite") as b:
        assert once.tokens == a.sweep_tokens(plan.name) == b.sweep_tokens(plan.name) == first.tokens + second.tokens
        # the ratings' per-debate tokens are the same count
        assert sum(n for _, _, n in a.sweep_results(plan.name)) == once.tokens


# --- the real engine -------------------------------------------------------------------------------


@pytest.mark.engine
@pytest.mark.slow
def test_a_real_debate_killed_midway_resumes_on_the_real_engine(isolated_home: Path, base_model: object, quick_short_judge: str) -> None:
    """`bonsai debate` on the real model, SIGKILLed after its second turn, then `bonsai debate --resume`."""
    env = {**ENV, "BONSAI_HOME": str(isolated_home)}
    proc = subprocess.Popen([sys.executable, "-m", "bonsai", "debate", "Tea beats coffee", "--format", quick_short_judge, "--max-tokens", "24",
                             "--seed", "1", "--jsonl"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    ended = 0
    debate_id = None
    for line in proc.stdout:
        event = json.loads(line)
        debate_id = event.get("debate_id", debate_id)
        ended += event["event"] == "turn_end"
        if ended == 2:
            break
    import psutil

    engine = psutil.Process(proc.pid).children(recursive=True)  # vLLM's engine core and worker
    assert engine
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert debate_id
    with TranscriptStore(isolated_home / "transcripts.sqlite", read_only=True) as store:
        before = [t.to_dict() for t in store.turns(debate_id)]
        assert store.get_debate(debate_id).status == "running" and len(before) >= 2
    run = subprocess.run([sys.executable, "-m", "bonsai", "debate", "--resume", debate_id, "--json"], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    gone, alive = psutil.wait_procs(engine, timeout=10)
    assert not alive, alive  # vLLM's processes outlive a SIGKILLed parent; the next command's start stops them
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["tokens"] > 0
    with TranscriptStore(isolated_home / "transcripts.sqlite", read_only=True) as store:
        turns = store.turns(debate_id)
        assert [t.turn_index for t in turns] == list(range(len(turns)))
        # turn 0 was checkpointed before turn 1 began; turn 1's checkpoint may not have been (then it is spoken again)
        assert turns[0].to_dict() == before[0]
        assert store.debate_tokens(debate_id) == summary["tokens"]
    assert not list((isolated_home / "locks").glob("*.lock"))



@pytest.mark.engine
@pytest.mark.slow
def test_a_training_run_killed_midway_registers_nothing_and_the_next_run_registers_one_version(
        isolated_home: Path, base_model: BaseModel, tmp_path: Path) -> None:
    """`bonsai train` on the real model, SIGKILLed (its whole process group) once a step is logged, then run again."""
    import yaml

    from bonsai import registry

    old = register_version(isolated_home, "advocate", small_adapter(tmp_path / "a0", seed=0))
    registry.promote(isolated_home, "advocate", old, reason="before the kill")
    folder = isolated_home / "adapters" / "advocate"
    history = (folder / "history.json").read_text()
    dataset = write_dataset(tmp_path / "ds", base=base_model, per_motion=1)  # 2 pairs: one batch a step
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(steps=1).model_dump(mode="json")))
    scratch_root = tmp_path / "tmp"  # the trainer's scratch folder goes here (TMPDIR), where the test can see it
    scratch_root.mkdir()
    env = {**ENV, "BONSAI_HOME": str(isolated_home), "TMPDIR": str(scratch_root)}
    command = [sys.executable, "-m", "bonsai", "train", "advocate", "--dataset", str(dataset), "--recipe", str(recipe),
               "--base", str(base_model.path), "--no-progress"]
    proc = subprocess.Popen([*command, "--max-steps", "10000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not any(p.stat().st_size for p in folder.glob(".advocate.*.partial/metrics.jsonl")):  # a step has been logged
            assert proc.poll() is None and time.monotonic() < deadline, "bonsai train ended or never reached its training loop"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert [p.name for p in scratch_root.glob(f"bonsai-train-{proc.pid}-*")]  # what kill -9 leaves: the scratch folder...
    assert [p.name for p in folder.glob(".advocate.*.partial")]  # ...and the staged version
    assert registry.list_versions(isolated_home, "advocate") == [old]  # but no new version
    assert (folder / "current").read_text().strip() == old and (folder / "history.json").read_text() == history
    json.loads(history)
    for p in [*folder.glob(".advocate.*.partial"), *scratch_root.glob("bonsai-train-*")]:
        os.utime(p, (time.time() - 120,) * 2)  # a dead writer's leftovers are removed once a minute old
    listed = subprocess.run([sys.executable, "-m", "bonsai", "adapters", "list", "advocate", "--json"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["version"] for line in listed.stdout.splitlines()] == [old]
    assert not list(folder.glob(".*.partial")) and not list(scratch_root.glob("bonsai-train-*"))  # the next start tidied up
    again = subprocess.run([*command, "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    new = json.loads(again.stdout.strip().splitlines()[-1])["version"]
    assert sorted(registry.list_versions(isolated_home, "advocate")) == sorted([old, new]) and new != old
    assert (folder / "current").read_text().strip() == old and (folder / "history.json").read_text() == history  # not promoted
    assert not list(folder.glob(".*.partial")) and not list(scratch_root.glob("bonsai-train-*"))
