"""A checkpointer for sweeps: a node's checkpoint is queued, not waited for, and written behind it in order.

With hundreds of debates on one event loop, LangGraph's ``durability="sync"`` made every debate wait, after
each turn, for its checkpoint to pass through the one SQLite connection (several trips to aiosqlite's thread,
one commit each) before its next turn could go to the engine. In a sweep the debates finish their turns
together, so those waits queued behind each other while the engine's batch stood part empty
(``bench/sweep_frontend.py``).

Here ``aput`` and ``aput_writes`` serialize on the caller's side, as before, append the rows to a queue and
return without awaiting anything. One background task writes whatever is queued, in order, and commits once
per batch. Every read (``aget_tuple``, ``alist``, deletes, copies,
:func:`~bonsai.debate.checkpoints.prune_finished`) first waits for the queue to be written, so a reader sees
every checkpoint put before it, as with the plain saver. Closing the runner writes what is left. The runner
pairs it with LangGraph's ``durability="async"`` (the next node starts while the checkpoint is handed over;
LangGraph still waits for those hand-overs when a run ends or is closed), which is safe here because a
hand-over is a synchronous append.

What changes: a process that is killed loses the checkpoints still queued (the last turn or two of the
debates in flight, whose turns are safe in the transcript store); the resume then generates those turns again
and overwrites them by key. A write that fails (the file locked past the busy timeout, a full disk) stays
queued; the error is raised once, to the next debate that saves or reads, which the sweep retries from its
checkpoint, and the next save or read tries the queue again.

With the plain ``AsyncSqliteSaver``, ``durability="async"`` was not safe: a debate closed between turns (a
sweep's token budget) resumed one turn early, and pruning a finished debate raced other debates' pending
saves into "database is locked".
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

from langgraph.checkpoint.base import WRITES_IDX_MAP, ChannelVersions, Checkpoint, CheckpointMetadata, CheckpointTuple, get_checkpoint_metadata
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

log = logging.getLogger(__name__)

_PUT = (
    "INSERT OR REPLACE INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_WRITES = "INTO writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


class QueuedSqliteSaver(AsyncSqliteSaver):
    """``AsyncSqliteSaver`` whose checkpoint writes are queued and written behind, in order (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: deque[tuple[str, list[tuple[Any, ...]]]] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        #: statements written and batches committed, for the bench and the tests
        self.written = 0
        self.batches = 0

    # --- writes ----------------------------------------------------------------------------------

    async def aput(self, config: Any, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions) -> Any:
        await self.setup()
        conf = config["configurable"]
        type_, blob = self.serde.dumps_typed(checkpoint)
        meta = json.dumps(get_checkpoint_metadata(config, metadata), ensure_ascii=False).encode("utf-8", "ignore")
        self._enqueue(_PUT, [(str(conf["thread_id"]), conf["checkpoint_ns"], checkpoint["id"], conf.get("checkpoint_id"), type_, blob, meta)])
        return {"configurable": {"thread_id": conf["thread_id"], "checkpoint_ns": conf["checkpoint_ns"], "checkpoint_id": checkpoint["id"]}}

    async def aput_writes(self, config: Any, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = "") -> None:
        await self.setup()
        conf = config["configurable"]
        # the same rule as the saver's own: special channels replace, ordinary writes never overwrite
        verb = "INSERT OR REPLACE " if all(w[0] in WRITES_IDX_MAP for w in writes) else "INSERT OR IGNORE "
        rows = [
            (str(conf["thread_id"]), str(conf["checkpoint_ns"]), str(conf["checkpoint_id"]), task_id, task_path,
             WRITES_IDX_MAP.get(channel, idx), channel, *self.serde.dumps_typed(value))
            for idx, (channel, value) in enumerate(writes)
        ]
        if rows:
            self._enqueue(verb + _WRITES, rows)

    def _enqueue(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure  # once: this debate is retried from its checkpoint; the queue is tried again below
        self._queue.append((sql, rows))
        self._start_writer()

    def _start_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_queued(), name="bonsai-checkpoint-writer")

    async def _write_queued(self) -> None:
        while self._queue:
            batch = list(self._queue)
            try:
                async with self.lock:
                    for sql, rows in batch:
                        await self.conn.executemany(sql, rows)
                    await self.conn.commit()
            except Exception as exc:
                # nothing of the batch is kept (rolled back) and nothing is dropped: it stays first in the queue
                try:
                    await self.conn.rollback()
                except Exception:
                    log.debug("rollback after a failed checkpoint write failed too", exc_info=True)
                log.warning("%d checkpoint writes could not be saved yet (%s); they are tried again with the next one", len(self._queue), exc)
                self._failure = exc
                return
            for _ in batch:
                self._queue.popleft()
            self.written += len(batch)
            self.batches += 1

    async def flush(self) -> None:
        """Write everything queued; raises the write's error if it fails again now."""
        while True:
            if self._writer is not None and not self._writer.done():
                await asyncio.shield(self._writer)  # a reader cancelled here leaves the writer going
                continue
            if not self._queue:
                return
            # left by a failed batch (or queued while the writer was finishing): try now
            self._failure = None
            self._start_writer()
            assert self._writer is not None
            await asyncio.shield(self._writer)
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure

    @property
    def pending(self) -> int:
        """Checkpoint writes queued and not yet committed."""
        return len(self._queue)

    async def close_queue(self) -> None:
        """Write what is left before the connection closes; a failure is logged (the turns are in the store)."""
        try:
            await self.flush()
        except Exception as exc:
            log.error("%d checkpoint writes were lost at close (%s): the debates they belong to resume a turn or two earlier", len(self._queue), exc)
            self._queue.clear()

    # --- reads and deletes wait for the queue ----------------------------------------------------

    async def aget_delta_channel_history(self, *, config: Any, channels: Sequence[str]) -> Any:
        await self.flush()
        return await super().aget_delta_channel_history(config=config, channels=channels)

    async def aget_tuple(self, config: Any) -> CheckpointTuple | None:
        await self.flush()
        return await super().aget_tuple(config)

    async def alist(self, config: Any, *, filter: dict[str, Any] | None = None, before: Any = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        await self.flush()
        async for item in super().alist(config, filter=filter, before=before, limit=limit):
            yield item

    async def adelete_thread(self, thread_id: str) -> None:
        await self.flush()
        await super().adelete_thread(thread_id)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self.flush()
        await super().acopy_thread(source_thread_id, target_thread_id)

    async def adelete_for_runs(self, run_ids: Any) -> None:
        await self.flush()
        await super().adelete_for_runs(run_ids)

    async def aprune(self, thread_ids: Any, *, strategy: str = "keep_latest") -> None:
        await self.flush()
        await super().aprune(thread_ids, strategy=strategy)
