"""The transcript store's schema, grown only by appending numbered migrations (as simonw/llm does).

Rules: never edit or reorder a migration that has shipped; add a new ``mNNN_...`` function at the end.
Each one gets its version from its position, runs once per database inside the same transaction that
records it in ``schema_version``, and must use plain ``execute`` (``executescript`` would commit halfway).
A database whose version is higher than ``len(MIGRATIONS)`` was written by a newer bonsai and is refused
rather than half-understood.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from bonsai.errors import StoreError

log = logging.getLogger(__name__)

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    # dict/list fields are JSON text. No CHECK constraints on status/team values: SQLite can only change
    # those by rebuilding the table, so the store validates them in Python instead.
    db.execute(
        """
        CREATE TABLE debates (
            debate_id   TEXT PRIMARY KEY,
            motion      TEXT NOT NULL,
            format      TEXT NOT NULL,
            rounds      INTEGER NOT NULL,
            base_model  TEXT NOT NULL,
            engine      TEXT NOT NULL,
            seats       TEXT NOT NULL,
            seed        INTEGER,
            candidates  INTEGER NOT NULL,
            created_at  REAL NOT NULL,
            status      TEXT NOT NULL,
            winner      TEXT,
            finished_at REAL,
            sweep       TEXT,
            config      TEXT NOT NULL DEFAULT '{}'
        )
        """
    )
    db.execute("CREATE INDEX debates_status ON debates(status)")
    db.execute("CREATE INDEX debates_created_at ON debates(created_at)")
    db.execute("CREATE INDEX debates_sweep ON debates(sweep)")
    # The primary key (debate_id, turn_index) is also the index for "all turns of a debate".
    db.execute(
        """
        CREATE TABLE turns (
            debate_id     TEXT NOT NULL REFERENCES debates(debate_id) ON DELETE CASCADE,
            turn_index    INTEGER NOT NULL,
            phase         TEXT NOT NULL,
            round         INTEGER NOT NULL,
            speaker       TEXT NOT NULL,
            team          TEXT NOT NULL,
            role          TEXT NOT NULL,
            text          TEXT NOT NULL,
            answer        TEXT NOT NULL,
            reasoning     TEXT,
            adapter_name  TEXT,
            adapter_hash  TEXT,
            base_model    TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            latency_s     REAL NOT NULL,
            first_token_s REAL,
            sampling      TEXT NOT NULL,
            seed          INTEGER,
            finish_reason TEXT NOT NULL,
            prompt        TEXT,
            created_at    REAL NOT NULL,
            PRIMARY KEY (debate_id, turn_index)
        )
        """
    )
    db.execute("CREATE INDEX turns_speaker ON turns(speaker)")
    # Candidates point at the debate, not the turn: the graph may store them before the chosen turn.
    db.execute(
        """
        CREATE TABLE candidates (
            debate_id       TEXT NOT NULL REFERENCES debates(debate_id) ON DELETE CASCADE,
            turn_index      INTEGER NOT NULL,
            candidate_index INTEGER NOT NULL,
            text            TEXT NOT NULL,
            answer          TEXT NOT NULL,
            reasoning       TEXT,
            score           REAL NOT NULL,
            chosen          INTEGER NOT NULL,
            output_tokens   INTEGER NOT NULL,
            finish_reason   TEXT NOT NULL,
            seed            INTEGER,
            PRIMARY KEY (debate_id, turn_index, candidate_index)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE verdicts (
            debate_id  TEXT NOT NULL REFERENCES debates(debate_id) ON DELETE CASCADE,
            judge      TEXT NOT NULL,
            winner     TEXT NOT NULL,
            prob_a     REAL NOT NULL,
            confidence REAL NOT NULL,
            scores     TEXT NOT NULL,
            rationale  TEXT NOT NULL,
            parsed     INTEGER NOT NULL,
            orders     TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (debate_id, judge)
        )
        """
    )


@migration
def m002_sweeps(db: sqlite3.Connection) -> None:
    # One row per `bonsai sweep`: its resolved grid (motions read, names checked) and the hash compared on
    # --resume. The sweep's debates are the debates rows tagged with its name.
    db.execute(
        """
        CREATE TABLE sweeps (
            name        TEXT PRIMARY KEY,
            grid_hash   TEXT NOT NULL,
            config      TEXT NOT NULL,
            total       INTEGER NOT NULL,
            status      TEXT NOT NULL,
            created_at  REAL NOT NULL,
            updated_at  REAL NOT NULL,
            finished_at REAL
        )
        """
    )


@migration
def m003_verdict_tie_band(db: sqlite3.Connection) -> None:
    # A verdict may now be a tie ("tie" in verdicts.winner and debates.winner: plain TEXT, checked in
    # Python, so no rebuild). The band that decided it is kept with it; older verdicts keep NULL: they were
    # decided by the sign of prob_a alone, from readings in speaking order only, and are not re-judged.
    db.execute("ALTER TABLE verdicts ADD COLUMN tie_band REAL")


@migration
def m004_verdict_confidence_optional(db: sqlite3.Connection) -> None:
    # A judge on a server that returns no logprobs has no confidence to record (NULL), so the column may
    # be empty. SQLite cannot drop NOT NULL in place: the table is rebuilt with the same rows.
    db.execute(
        """
        CREATE TABLE verdicts_new (
            debate_id  TEXT NOT NULL REFERENCES debates(debate_id) ON DELETE CASCADE,
            judge      TEXT NOT NULL,
            winner     TEXT NOT NULL,
            prob_a     REAL NOT NULL,
            confidence REAL,
            scores     TEXT NOT NULL,
            rationale  TEXT NOT NULL,
            parsed     INTEGER NOT NULL,
            orders     TEXT NOT NULL,
            created_at REAL NOT NULL,
            tie_band   REAL,
            PRIMARY KEY (debate_id, judge)
        )
        """
    )
    db.execute("INSERT INTO verdicts_new SELECT debate_id, judge, winner, prob_a, confidence, scores, rationale, parsed, orders, created_at, tie_band FROM verdicts")
    db.execute("DROP TABLE verdicts")
    db.execute("ALTER TABLE verdicts_new RENAME TO verdicts")


@migration
def m005_generated_tokens(db: sqlite3.Connection) -> None:
    # One token count (issue 13): a turn's candidates and scoring probes, and each judge's readings, are
    # generated tokens too. Older rows keep NULL / 0: their count was never taken, and a turn then
    # counts its own output_tokens (see bonsai/debate/usage.py).
    db.execute("ALTER TABLE turns ADD COLUMN generated_tokens INTEGER")
    db.execute("ALTER TABLE verdicts ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0")


def current_version(db: sqlite3.Connection) -> int:
    if not _has_table(db, "schema_version"):
        return 0
    row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def check_identity(db: sqlite3.Connection, path: Path) -> None:
    """Refuse an SQLite file that holds tables but no ``schema_version``: somebody else's database."""
    if _has_table(db, "schema_version"):
        return
    others = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
    if others:
        raise StoreError(
            f"{path} is an SQLite database but not a bonsai transcript store (it holds {', '.join(sorted(others)[:5])}).",
            hint="pass --store with a bonsai transcripts.sqlite (the checkpoint database is a different file)",
        )


def check_version(db: sqlite3.Connection, path: Path) -> int:
    """The store's schema version; a version this bonsai does not know is refused, as corruption if it is."""
    if not _has_table(db, "schema_version"):
        raise StoreError(f"{path} is an empty SQLite database, not a transcript store.", hint="pass --store with a bonsai transcripts.sqlite")
    version = current_version(db)
    known = len(MIGRATIONS)
    if version > known or version < 0:
        # a version from the future is far more often a damaged page than a newer bonsai: check first
        problems = quick_check(db)
        if problems:
            raise corrupt_error(path, problems[0])
        raise StoreError(
            f"The transcript store {path} was written by a newer bonsai (schema {version}, this one knows {known}).",
            hint="upgrade bonsai (pip install -U bonsai), or pass --store with another file",
        )
    return version


def quick_check(db: sqlite3.Connection) -> list[str]:
    """SQLite's ``PRAGMA quick_check``: [] for a sound file, else its first complaints."""
    try:
        rows = [str(r[0]) for r in db.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return [] if rows == ["ok"] else rows


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return "malformed" in text or "corrupt" in text or "not a database" in text


def corrupt_error(path: Path, detail: str) -> StoreError:
    return StoreError(
        f"The transcript store {path} is corrupt (SQLite integrity check: {detail}).",
        hint=f"restore it from a backup, or try `sqlite3 {path} .recover > recovered.sql`; bonsai will not write to it",
    )


def migrate(db: sqlite3.Connection, path: Path) -> int:
    """Bring the database up to ``len(MIGRATIONS)`` in one transaction; returns the version it ends at."""
    known = len(MIGRATIONS)
    db.execute("BEGIN IMMEDIATE")  # taken before reading the version, so two processes cannot both migrate
    try:
        check_identity(db, path)
        if not _has_table(db, "schema_version"):
            db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
        version = check_version(db, path)
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            log.info("transcript store %s: applying migration %d (%s)", path, number, step.__name__)
            step(db)
            db.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)", (number, step.__name__, time.time()))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return known


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None
