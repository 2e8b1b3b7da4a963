"""The sweep's queued checkpointer: writes go behind the next turn, in order, in batches; every read sees them;
a failed write is raised once and retried, never dropped; what is queued at close is written."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiosqlite
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from test_faults import short_busy_timeout, sqlite_lock_held  # noqa: F401 (a fixture)
from test_sweep import CountingEngine, assert_each_finished_once, book, write_sweep  # noqa: F401 (book: a fixture)

from bonsai.debate.checkpoint_queue import QueuedSqliteSaver
from bonsai.debate.checkpoints import strict_serializer
from bonsai.debate.runner import DebateRunner
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore
from bonsai.sweep.config import load_sweep
from bonsai.sweep.executor import SweepExecutor
from bonsai.sweep.plan import plan_sweep


def _config(thread: str, parent: str | None = None) -> dict:
    return {"configurable": {"thread_id": thread, "checkpoint_ns": "", **({"checkpoint_id": parent} if parent else {})}}


async def _put(saver: QueuedSqliteSaver, thread: str, parent: str | None, n: int) -> str:
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"step": n}
    await saver.aput(_config(thread, parent), checkpoint, {"source": "loop", "step": n}, {})
    await saver.aput_writes(_config(thread, checkpoint["id"]), [("turns", [f"turn {n}"])], task_id=f"task{n}")
    return checkpoint["id"]


def _rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


async def test_puts_return_at_once_and_every_read_sees_them(tmp_path: Path) -> None:
    path = tmp_path / "ck.sqlite"
    async with aiosqlite.connect(str(path)) as conn:
        saver = QueuedSqliteSaver(conn, serde=strict_serializer())
        last = None
        for n in range(20):
            last = await _put(saver, "t1", last, n)
        assert saver.pending > 0  # nothing waited for the disk
        got = await saver.aget_tuple(_config("t1"))  # a read writes the queue first
        assert got is not None and got.checkpoint["id"] == last and got.checkpoint["channel_values"] == {"step": 19}
        assert got.pending_writes == [("task19", "turns", ["turn 19"])]
        assert saver.pending == 0 and saver.written == 40
        assert saver.batches < 40  # many statements per commit
        assert len([c async for c in saver.alist(_config("t1"))]) == 20
        await saver.adelete_thread("t1")
        assert await saver.aget_tuple(_config("t1")) is None


async def test_what_is_queued_at_close_is_written(tmp_path: Path) -> None:
    path = tmp_path / "ck.sqlite"
    async with aiosqlite.connect(str(path)) as conn:
        saver = QueuedSqliteSaver(conn, serde=strict_serializer())
        last = None
        for n in range(5):
            last = await _put(saver, "t1", last, n)
        await saver.close_queue()
    assert _rows(path, "checkpoints") == 5 and _rows(path, "writes") == 5


async def test_a_failed_write_is_raised_once_kept_and_written_when_the_file_is_free(tmp_path: Path) -> None:
    path = tmp_path / "ck.sqlite"
    async with aiosqlite.connect(str(path), timeout=0.2) as conn:
        saver = QueuedSqliteSaver(conn, serde=strict_serializer())
        first = await _put(saver, "t1", None, 0)
        await saver.flush()
        with sqlite_lock_held(path):
            second = await _put(saver, "t1", first, 1)
            while saver._writer is not None and not saver._writer.done():  # the writer meets the lock
                await asyncio.sleep(0.05)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                await _put(saver, "t1", second, 2)  # the next save hears of it, once
            assert saver.pending == 2  # the failed checkpoint and its writes, not dropped
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                await saver.aget_tuple(_config("t1"))  # a read tries again, and says so
        got = await saver.aget_tuple(_config("t1"))  # the lock gone: written, in order
        assert got is not None and got.checkpoint["id"] == second
        assert saver.pending == 0
    assert _rows(path, "checkpoints") == 2 and _rows(path, "writes") == 2


async def test_a_sweep_with_queued_checkpoints_ends_as_one_that_waits(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    """Same debates, same turns, same pruned checkpoints: only when the checkpoints reach the disk differs."""
    path = write_sweep(tmp_path, motions=["M1", "M2", "M3"], concurrency=6)
    plan = plan_sweep(load_sweep(path), book, isolated_home)
    texts = {}
    for queued in (False, True):
        run = tmp_path / ("queued" if queued else "waited")
        run.mkdir()
        with TranscriptStore(run / "t.sqlite") as store:
            async with DebateRunner(CountingEngine(delay=0.001), store, run / "ck.sqlite", book, isolated_home, "fake",
                                    queue_checkpoints=queued) as runner:
                result = await SweepExecutor(runner, store, plan, concurrency=6, retries=0, backoff_s=0).run()
                saver = runner.graph.checkpointer
                assert isinstance(saver, QueuedSqliteSaver) == queued
                if queued:
                    assert saver.written > 0 and saver.batches < saver.written
            assert result.complete and not result.failures
            texts[queued] = {d.debate_id: [t.text for t in store.turns(d.debate_id)] for d in store.list_debates()}
        assert_each_finished_once(run / "t.sqlite", plan)
        with sqlite3.connect(run / "ck.sqlite") as db:  # finished debates keep only their last checkpoint
            per_thread = db.execute("SELECT thread_id, COUNT(*) FROM checkpoints GROUP BY thread_id").fetchall()
        assert sorted(t for t, _ in per_thread) == sorted(j.debate_id for j in plan.jobs) and {n for _, n in per_thread} == {1}
    assert texts[True] == texts[False]


async def test_a_locked_checkpoint_file_in_a_sweep_is_retried_from_the_checkpoint(tmp_path: Path, book: PersonaBook, isolated_home: Path,
                                                                                  short_busy_timeout: None, caplog: pytest.LogCaptureFixture) -> None:
    """The checkpoint file locked by another process for a while: the debates that hear of it are retried
    (the sweep's retries), and every debate finishes once, its turns in order."""
    path = write_sweep(tmp_path, motions=["M1", "M2"], concurrency=4, retries=5, backoff_s=0.3)
    plan = plan_sweep(load_sweep(path), book, isolated_home)
    ck = tmp_path / "ck.sqlite"

    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(CountingEngine(delay=0.05), store, ck, book, isolated_home, "fake", queue_checkpoints=True) as runner:
            await runner.graph.checkpointer.setup()  # the tables exist; then the file is locked for the sweep's first 0.8 s
            held = sqlite_lock_held(ck)
            held.__enter__()
            asyncio.get_running_loop().call_later(0.8, held.__exit__, None, None, None)
            cfg = load_sweep(path).config
            result = await SweepExecutor(runner, store, plan, concurrency=4, retries=cfg.retries, backoff_s=cfg.backoff_s).run()
    assert result.complete and not result.failures, result.failures
    assert_each_finished_once(tmp_path / "t.sqlite", plan)
    said = [r.getMessage() for r in caplog.records]
    assert any("could not be saved yet" in m for m in said)  # the lock was met
    assert any("checkpoint file" in m and "retry" in m for m in said)  # and a debate was retried from its checkpoint
