"""The LangGraph checkpoint database: read strictly, pruned when a debate is done.

Reading: LangGraph's default serializer rebuilds any ``module.callable`` a checkpoint names (and, with
its pickle fallback, unpickles), so whoever can write the checkpoint file could run code on the next
``--resume``. Bonsai's graph state is plain data (see ``state.py``), so checkpoints are read with the
strict allow-list (LangGraph's own safe types only, no pickle, no JSON constructors), and a checkpoint
that names anything else is refused with :class:`CheckpointError` instead of half-loaded.

Growth: every turn of every debate leaves a checkpoint. Once a debate has finished, only its last state
is kept (:func:`prune_finished`), unless moderator notes were given during it: a fork takes the notes
given before its turn from the checkpoint history, which the store does not hold. ``bonsai transcripts
vacuum`` drops the checkpoints of debates finished long ago (a fork of those rebuilds its past from the
stored turns) and compacts both files.
"""

from __future__ import annotations

import contextlib
import contextvars
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph.checkpoint.serde.event_hooks import register_serde_event_listener
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from bonsai.errors import StoreError
from bonsai.store.records import DebateStatus

#: types rebuilt from a checkpoint that LangGraph's strict list refused, for the load under way
_blocked: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("bonsai_blocked_checkpoint_types", default=None)


def _on_serde_event(event: Any) -> None:
    found = _blocked.get()
    if found is not None and str(event.get("kind", "")).endswith("blocked"):
        found.append(".".join(str(event.get(k)) for k in ("module", "name", "method") if event.get(k)))


register_serde_event_listener(_on_serde_event)


class CheckpointError(StoreError):
    """A checkpoint that cannot be trusted or read (tampered, or written by something else)."""


class StrictSerializer(JsonPlusSerializer):
    """JsonPlusSerializer in its strict mode, failing loudly instead of handing back raw data."""

    def __init__(self) -> None:
        super().__init__(pickle_fallback=False, allowed_json_modules=None, allowed_msgpack_modules=None)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        kind = data[0]
        if kind not in ("null", "bytes", "bytearray", "msgpack"):
            # "pickle" runs code by design; "json" is the pre-msgpack format bonsai never wrote
            raise _tampered(f"it holds a value serialized as {kind!r}")
        token = _blocked.set([])
        try:
            value = super().loads_typed(data)
            blocked = _blocked.get() or []
        except Exception as exc:
            raise _tampered(f"it cannot be decoded ({type(exc).__name__}: {exc})") from exc
        finally:
            _blocked.reset(token)
        if blocked:
            raise _tampered(f"it asks to construct {', '.join(sorted(set(blocked)))}, which a bonsai checkpoint never holds")
        return value


def _tampered(why: str) -> CheckpointError:
    return CheckpointError(
        f"A debate checkpoint was refused: {why}. The checkpoint file may have been modified by something other than bonsai.",
        hint="the debate's finished turns are safe in the transcript store; move the checkpoint file "
        "($BONSAI_HOME/checkpoints.sqlite) away to start clean, or fork the debate from its stored turns",
    )


def strict_serializer() -> StrictSerializer:
    return StrictSerializer()


async def prune_finished(saver: Any, thread_id: str) -> int:
    """Delete every checkpoint of ``thread_id`` but its latest (and their pending writes); returns rows deleted.

    ``saver`` is the graph's AsyncSqliteSaver: its own connection and lock, so this never races its writes
    (a sweep's queued saver writes what it holds first: see ``checkpoint_queue.py``).
    """
    flush = getattr(saver, "flush", None)
    if flush is not None:
        await flush()
    async with saver.lock, saver.conn.cursor() as cur:
        await cur.execute(
            "SELECT checkpoint_ns, MAX(checkpoint_id) FROM checkpoints WHERE thread_id = ? GROUP BY checkpoint_ns", (thread_id,)
        )
        keep = await cur.fetchall()
        deleted = 0
        for ns, last in keep:
            for table in ("writes", "checkpoints"):
                await cur.execute(f"DELETE FROM {table} WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id != ?", (thread_id, ns, last))
                deleted += max(cur.rowcount, 0)
        await saver.conn.commit()
    return deleted


@dataclass(frozen=True)
class VacuumReport:
    debates_dropped: int
    rows_deleted: int
    bytes_before: int
    bytes_after: int

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after


def vacuum(store_file: Path, checkpoints_file: Path, *, older_than_days: float, now: float | None = None) -> VacuumReport:
    """Drop the checkpoints of debates that finished more than ``older_than_days`` ago, then VACUUM both
    databases. Unfinished debates (running, interrupted, failed: all resumable) are never touched."""
    from bonsai.store.transcripts import TranscriptStore

    cutoff = (now if now is not None else time.time()) - older_than_days * 86400
    with TranscriptStore(store_file, read_only=True) as store:
        finished = [(d.debate_id, d.finished_at or d.created_at) for d in store.list_debates(status=DebateStatus.FINISHED)]
    files = [p for p in (store_file, checkpoints_file) if p.exists()]
    before = sum(_size(p) for p in files)
    dropped = rows = 0
    if checkpoints_file.exists():
        with _connect(checkpoints_file) as ck:
            if not _has_table(ck, "checkpoints"):
                raise StoreError(f"{checkpoints_file} is not a LangGraph checkpoint database.", hint="pass the checkpoints.sqlite from the bonsai home")
            threads = {r[0] for r in ck.execute("SELECT DISTINCT thread_id FROM checkpoints")}
            ck.execute("BEGIN IMMEDIATE")
            try:
                for debate_id, finished_at in finished:
                    if debate_id in threads and finished_at < cutoff:
                        rows += sum(ck.execute(f"DELETE FROM {t} WHERE thread_id = ?", (debate_id,)).rowcount for t in ("writes", "checkpoints"))
                        dropped += 1
                ck.execute("COMMIT")
            except BaseException:
                ck.execute("ROLLBACK")
                raise
    for path in files:
        with _connect(path) as db:
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    after = sum(_size(p) for p in files)
    return VacuumReport(dropped, rows, before, after)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


@contextlib.contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    try:
        db = sqlite3.connect(str(path), isolation_level=None, timeout=10)
    except sqlite3.Error as exc:
        raise StoreError(f"Cannot open {path}: {exc}.", hint="check the path and its permissions") from exc
    try:
        yield db
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise StoreError(f"{path} is in use by another bonsai process ({exc}).", hint="run the vacuum again when no debate or sweep is running") from exc
        raise StoreError(f"Cannot vacuum {path}: {exc}.", hint="check the disk has room (VACUUM needs about the file's size again)") from exc
    finally:
        db.close()
