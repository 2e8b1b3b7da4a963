"""``TranscriptStore``: the debate graph's records in and out of SQLite.

Every write is one short transaction and idempotent on the record's natural key, because the graph
re-runs a node after a crash or a resume and must not leave duplicates behind. The API is synchronous
(each call takes milliseconds) and thread-safe, so async code can call it directly or via a thread.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from bonsai.errors import DebateNotFound, StoreError
from bonsai.store.db import open_store, read_transaction, write_transaction
from bonsai.store.records import CandidateRecord, DebateRecord, DebateStatus, SweepRecord, SweepStatus, TurnRecord, VerdictRecord

log = logging.getLogger(__name__)

#: generated tokens per row, one count for every reader (see bonsai/debate/usage.py): a turn's candidates
#: and probes (its own text for turns stored before they were counted), and each judge's readings
_TOKENS_SQL = (
    "SELECT debate_id, COALESCE(generated_tokens, output_tokens) AS n FROM turns "
    "UNION ALL SELECT debate_id, output_tokens AS n FROM verdicts"
)

STATUSES = tuple(DebateStatus)
SWEEP_STATUSES = tuple(SweepStatus)
TEAMS = ("A", "B")
WINNERS = ("A", "B", "tie")


@dataclasses.dataclass(frozen=True)
class _Table:
    """How one record type maps onto one table: which fields are JSON text, which are 0/1 booleans."""

    name: str
    record: type
    key: tuple[str, ...]
    json_fields: frozenset[str] = frozenset()
    bool_fields: frozenset[str] = frozenset()
    #: JSON fields stored as NULL when the value is None (instead of the text "null")
    nullable_json: frozenset[str] = frozenset()

    @property
    def columns(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.record)]

    def to_row(self, record: Any) -> list[Any]:
        values = []
        for name in self.columns:
            value = getattr(record, name)
            if name in self.json_fields and not (value is None and name in self.nullable_json):
                value = json.dumps(value, ensure_ascii=False)
            elif name in self.bool_fields:
                value = int(bool(value))
            values.append(value)
        return values

    def from_row(self, row: sqlite3.Row) -> Any:
        kwargs = {}
        for name in self.columns:
            value = row[name]
            if name in self.json_fields and value is not None:
                value = json.loads(value)
            elif name in self.bool_fields:
                value = bool(value)
            kwargs[name] = value
        return self.record(**kwargs)

    def select(self) -> str:
        return f"SELECT {', '.join(self.columns)} FROM {self.name}"

    def upsert(self) -> str:
        cols = self.columns
        updates = ", ".join(f"{c}=excluded.{c}" for c in cols if c not in self.key)
        return (
            f"INSERT INTO {self.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT ({', '.join(self.key)}) DO UPDATE SET {updates}"
        )


DEBATES = _Table("debates", DebateRecord, ("debate_id",), json_fields=frozenset({"seats", "config"}))
TURNS = _Table(
    "turns",
    TurnRecord,
    ("debate_id", "turn_index"),
    json_fields=frozenset({"sampling", "prompt"}),
    nullable_json=frozenset({"prompt"}),
)
CANDIDATES = _Table("candidates", CandidateRecord, ("debate_id", "turn_index", "candidate_index"), bool_fields=frozenset({"chosen"}))
SWEEPS = _Table("sweeps", SweepRecord, ("name",), json_fields=frozenset({"config"}))
VERDICTS = _Table(
    "verdicts", VerdictRecord, ("debate_id", "judge"), json_fields=frozenset({"scores", "orders"}), bool_fields=frozenset({"parsed"})
)


class TranscriptStore:
    """The transcript database at ``path``.

    ``create=False``: a missing file is an error instead of a fresh empty store. ``read_only=True`` (for
    commands that only read) also never migrates, converts or writes the file: see :func:`open_store`.
    """

    def __init__(self, path: Path, *, create: bool = True, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        self._db = open_store(self.path, create=create and not read_only, read_only=read_only)
        self._db.row_factory = sqlite3.Row

    def __repr__(self) -> str:
        return f"TranscriptStore({str(self.path)!r})"

    def __enter__(self) -> TranscriptStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes ---------------------------------------------------------------------------------

    def create_debate(self, record: DebateRecord, *, reset_status: bool = False) -> bool:
        """Insert the debate; True if it is new.

        Resuming calls this again with the same id: the stored row is kept as it is (its status, winner and
        finish time included) unless ``reset_status`` asks to take the record's status, winner and
        ``finished_at`` instead.
        """
        _check_status(record.status)
        _check_winner(record.winner)
        with write_transaction(self._db, self._lock) as db:
            cols = DEBATES.columns
            cur = db.execute(
                f"INSERT INTO debates ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) ON CONFLICT (debate_id) DO NOTHING",
                DEBATES.to_row(record),
            )
            created = cur.rowcount == 1
            if not created:
                stored = db.execute("SELECT motion, format FROM debates WHERE debate_id=?", (record.debate_id,)).fetchone()
                if (stored["motion"], stored["format"]) != (record.motion, record.format):
                    log.warning(
                        "debate %s already exists with another motion or format; keeping the stored one", record.debate_id
                    )
                if reset_status:
                    db.execute(
                        "UPDATE debates SET status=?, winner=?, finished_at=? WHERE debate_id=?",
                        (record.status, record.winner, record.finished_at, record.debate_id),
                    )
        return created

    def record_turn(self, turn: TurnRecord) -> None:
        """Insert or replace the turn at (debate_id, turn_index): a re-run node overwrites, never duplicates."""
        _check_team(turn.team, allow_none=True)
        self._upsert(TURNS, [turn])

    def record_candidates(self, candidates: Iterable[CandidateRecord]) -> None:
        """Insert or replace candidates by (debate_id, turn_index, candidate_index), all in one transaction."""
        self._upsert(CANDIDATES, list(candidates))

    def record_verdict(self, verdict: VerdictRecord) -> None:
        """Insert or replace the verdict of one judge (or of the "panel") for a debate."""
        _check_winner(verdict.winner, required=True)
        self._upsert(VERDICTS, [verdict])

    def set_status(self, debate_id: str, status: str, *, winner: str | None = None) -> None:
        """Move a debate to ``status``; a given ``winner`` is stored, None keeps the stored one.

        ``finished_at`` is stamped when the debate ends (finished or failed) and cleared when it runs again.
        """
        _check_status(status)
        _check_winner(winner)
        with write_transaction(self._db, self._lock) as db:
            if status in (DebateStatus.FINISHED, DebateStatus.FAILED):
                finished_at_sql, params = "?", [time.time()]
            elif status == DebateStatus.RUNNING:
                finished_at_sql, params = "NULL", []
            else:
                finished_at_sql, params = "finished_at", []
            cur = db.execute(
                f"UPDATE debates SET status=?, winner=COALESCE(?, winner), finished_at={finished_at_sql} WHERE debate_id=?",
                [status, winner, *params, debate_id],
            )
            if cur.rowcount == 0:
                raise self._not_found(debate_id)

    def _upsert(self, table: _Table, records: list[Any]) -> None:
        if not records:
            return
        try:
            with write_transaction(self._db, self._lock) as db:
                db.executemany(table.upsert(), [table.to_row(r) for r in records])
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" not in str(exc):
                raise
            missing = sorted({r.debate_id for r in records if not self._exists(r.debate_id)})
            raise DebateNotFound(
                f"Cannot record {table.name} for debate {', '.join(missing) or '?'}: it is not in the store {self.path}.",
                hint="create the debate with create_debate() before recording its turns",
            ) from exc

    # -- sweeps ---------------------------------------------------------------------------------

    def create_sweep(self, record: SweepRecord) -> None:
        """Record a new sweep; a name already in the store is refused (two grids under one name would mix)."""
        if record.status not in SWEEP_STATUSES:
            raise ValueError(f"sweep status must be one of {', '.join(SWEEP_STATUSES)}, not {record.status!r}")
        try:
            with write_transaction(self._db, self._lock) as db:
                cols = SWEEPS.columns
                db.execute(f"INSERT INTO sweeps ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", SWEEPS.to_row(record))
        except sqlite3.IntegrityError:
            raise StoreError(
                f"a sweep named {record.name!r} already exists in {self.path}",
                "continue it with `bonsai sweep FILE --resume`, or give the new sweep another name (see `bonsai sweep --list`)",
            ) from None

    def get_sweep(self, name: str) -> SweepRecord | None:
        with self._lock:
            row = self._db.execute(f"{SWEEPS.select()} WHERE name=?", (name,)).fetchone()
        return SWEEPS.from_row(row) if row is not None else None

    def list_sweeps(self) -> list[SweepRecord]:
        with self._lock:
            rows = self._db.execute(f"{SWEEPS.select()} ORDER BY created_at").fetchall()
        return [SWEEPS.from_row(r) for r in rows]

    def set_sweep_status(self, name: str, status: str) -> None:
        if status not in SWEEP_STATUSES:
            raise ValueError(f"sweep status must be one of {', '.join(SWEEP_STATUSES)}, not {status!r}")
        now = time.time()
        with write_transaction(self._db, self._lock) as db:
            db.execute(
                "UPDATE sweeps SET status=?, updated_at=?, finished_at=? WHERE name=?",
                (status, now, now if status == SweepStatus.FINISHED else None, name),
            )

    def sweep_status_counts(self, name: str) -> dict[str, int]:
        """Debates of the sweep by status (absent statuses are 0)."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM debates WHERE sweep=? GROUP BY status", (name,)).fetchall()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    def debate_statuses(self, debate_ids: Iterable[str]) -> dict[str, str]:
        """Status of each of ``debate_ids`` that is in the store."""
        ids = list(debate_ids)
        found: dict[str, str] = {}
        with self._lock:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                rows = self._db.execute(
                    f"SELECT debate_id, status FROM debates WHERE debate_id IN ({', '.join('?' * len(chunk))})", chunk
                ).fetchall()
                found.update({r[0]: r[1] for r in rows})
        return found

    def sweep_tokens(self, name: str) -> int:
        """Tokens generated for the sweep's debates: every candidate, probe and judge reading (debate/usage.py)."""
        with self._lock:
            row = self._db.execute(f"SELECT COALESCE(SUM(n), 0) FROM ({_TOKENS_SQL}) WHERE debate_id IN (SELECT debate_id FROM debates WHERE sweep=?)",
                                   (name,)).fetchone()
        return int(row[0])

    def debate_tokens(self, debate_id: str) -> int:
        """Tokens generated for one debate, counted as :meth:`sweep_tokens` counts them."""
        with self._lock:
            row = self._db.execute(f"SELECT COALESCE(SUM(n), 0) FROM ({_TOKENS_SQL}) WHERE debate_id=?", (debate_id,)).fetchone()
        return int(row[0])

    def sweep_results(self, name: str) -> list[tuple[DebateRecord, list[VerdictRecord], int]]:
        """Each finished debate of the sweep with its verdicts and generated tokens, in three queries."""
        with read_transaction(self._db, self._lock) as db:
            debates = [DEBATES.from_row(r) for r in db.execute(f"{DEBATES.select()} WHERE sweep=? AND status='finished' ORDER BY created_at, debate_id", (name,))]
            verdicts: dict[str, list[VerdictRecord]] = {}
            for r in db.execute(
                f"{VERDICTS.select()} WHERE debate_id IN (SELECT debate_id FROM debates WHERE sweep=? AND status='finished') ORDER BY judge = 'panel', created_at",
                (name,),
            ):
                v = VERDICTS.from_row(r)
                verdicts.setdefault(v.debate_id, []).append(v)
            tokens = {
                r[0]: int(r[1])
                for r in db.execute(
                    f"SELECT debate_id, SUM(n) FROM ({_TOKENS_SQL}) WHERE debate_id IN (SELECT debate_id FROM debates WHERE sweep=?) GROUP BY debate_id",
                    (name,),
                )
            }
        return [(d, verdicts.get(d.debate_id, []), tokens.get(d.debate_id, 0)) for d in debates]

    # -- whole debates, for results produced elsewhere (Ray workers) -------------------------------

    def export_bundle(self, debate_id: str) -> dict[str, Any]:
        """A debate with its turns, candidates and verdicts as one JSON-able dict."""
        with read_transaction(self._db, self._lock) as db:
            row = db.execute(f"{DEBATES.select()} WHERE debate_id=?", (debate_id,)).fetchone()
            if row is None:
                raise self._not_found(debate_id)
            parts = {
                name: [table.from_row(r).to_dict() for r in db.execute(f"{table.select()} WHERE debate_id=?", (debate_id,)).fetchall()]
                for name, table in (("turns", TURNS), ("candidates", CANDIDATES), ("verdicts", VERDICTS))
            }
        return {"debate": DEBATES.from_row(row).to_dict(), **parts}

    def import_bundle(self, bundle: dict[str, Any]) -> None:
        """Write a whole debate in one transaction: all of it lands, or none of it (a retried import overwrites)."""
        debate = DebateRecord(**bundle["debate"])
        _check_status(debate.status)
        _check_winner(debate.winner)
        turns = [TurnRecord(**t) for t in bundle.get("turns", [])]
        candidates = [CandidateRecord(**c) for c in bundle.get("candidates", [])]
        verdicts = [VerdictRecord(**v) for v in bundle.get("verdicts", [])]
        for t in turns:
            if t.debate_id != debate.debate_id:
                raise ValueError(f"turn of debate {t.debate_id} in the bundle of {debate.debate_id}")
        with write_transaction(self._db, self._lock) as db:
            db.execute(DEBATES.upsert(), DEBATES.to_row(debate))
            for table, records in ((TURNS, turns), (CANDIDATES, candidates), (VERDICTS, verdicts)):
                if records:
                    db.executemany(table.upsert(), [table.to_row(r) for r in records])

    # -- reads ----------------------------------------------------------------------------------

    def get_debate(self, debate_id: str) -> DebateRecord:
        with self._lock:
            row = self._db.execute(f"{DEBATES.select()} WHERE debate_id=?", (debate_id,)).fetchone()
        if row is None:
            raise self._not_found(debate_id)
        return DEBATES.from_row(row)

    def resolve_id(self, prefix: str) -> str:
        """The full id of the one debate whose id is or starts with ``prefix`` (ids are long to type)."""
        if self._exists(prefix):
            return prefix
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        with self._lock:
            rows = self._db.execute(
                "SELECT debate_id FROM debates WHERE debate_id LIKE ? ESCAPE '\\' ORDER BY created_at LIMIT 6", (escaped + "%",)
            ).fetchall()
        # LIKE ignores ASCII case; ids are compared exactly.
        ids = [r[0] for r in rows if r[0].startswith(prefix)]
        if len(ids) == 1:
            return ids[0]
        if len(ids) > 1:
            raise StoreError(
                f"{prefix!r} matches several debates ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''}).",
                hint="give more of the id",
            )
        raise self._not_found(prefix)

    def list_debates(
        self,
        *,
        persona: str | None = None,
        status: str | None = None,
        winner: str | None = None,
        sweep: str | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[DebateRecord]:
        """Debates matching every given filter; ``persona`` matches any seat (debater, judge, moderator)."""
        where, params = [], []
        if persona is not None:
            where.append(
                "EXISTS (SELECT 1 FROM json_each(debates.seats) AS seat, json_each(seat.value) AS p WHERE p.value = ?)"
            )
            params.append(persona)
        for column, value in (("status", status), ("winner", winner), ("sweep", sweep)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = DEBATES.select()
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY created_at {'DESC' if newest_first else 'ASC'}, debate_id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [DEBATES.from_row(r) for r in rows]

    def turns(self, debate_id: str) -> list[TurnRecord]:
        return self._children(TURNS, debate_id, "turn_index")

    def candidates(self, debate_id: str) -> list[CandidateRecord]:
        return self._children(CANDIDATES, debate_id, "turn_index, candidate_index")

    def verdicts(self, debate_id: str) -> list[VerdictRecord]:
        """Each judge's verdict by time, the combined "panel" verdict last."""
        return self._children(VERDICTS, debate_id, "judge = 'panel', created_at, judge")

    def count_turns(self, persona: str | None = None, *, role: str | None = None) -> int:
        """Turns spoken by ``persona`` (all turns when None), optionally of one role (debater | moderator)."""
        where, params = [], []
        if persona is not None:
            where.append("speaker = ?")
            params.append(persona)
        if role is not None:
            where.append("role = ?")
            params.append(role)
        sql = "SELECT COUNT(*) FROM turns" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            return int(self._db.execute(sql, params).fetchone()[0])

    def turn_counts(self, debate_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Number of turns per debate (debates without turns are absent)."""
        with self._lock:
            rows = self._db.execute("SELECT debate_id, COUNT(*) FROM turns GROUP BY debate_id").fetchall()
        counts = {r[0]: int(r[1]) for r in rows}
        if debate_ids is None:
            return counts
        wanted = set(debate_ids)
        return {k: v for k, v in counts.items() if k in wanted}

    def _children(self, table: _Table, debate_id: str, order: str) -> list[Any]:
        with read_transaction(self._db, self._lock) as db:
            if db.execute("SELECT 1 FROM debates WHERE debate_id=?", (debate_id,)).fetchone() is None:
                raise self._not_found(debate_id)
            rows = db.execute(f"{table.select()} WHERE debate_id=? ORDER BY {order}", (debate_id,)).fetchall()
        return [table.from_row(r) for r in rows]

    def _exists(self, debate_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM debates WHERE debate_id=?", (debate_id,)).fetchone() is not None

    def _not_found(self, debate_id: str) -> DebateNotFound:
        return DebateNotFound(f"No debate {debate_id!r} in the transcript store {self.path}.", hint="see the ids with `bonsai transcripts list`")


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"debate status must be one of {', '.join(STATUSES)}, not {status!r}")


def _check_winner(winner: str | None, *, required: bool = False) -> None:
    if winner is None and not required:
        return
    if winner not in WINNERS:
        raise ValueError(f"winner must be 'A', 'B' or 'tie'{'' if required else ' or None'}, not {winner!r}")


def _check_team(team: str, *, allow_none: bool) -> None:
    if team not in TEAMS and not (allow_none and team == "none"):
        raise ValueError(f"team must be 'A', 'B' or 'none', not {team!r}")
