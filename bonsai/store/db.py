"""Opening the transcript store's SQLite file: the checks and pragmas every connection needs.

Kept apart from the record logic so the rules for "is this file ours, and is it safe to write" live in
one place: a missing file is only created when the caller asks (read-only commands must not leave an
empty database behind), a file that is not SQLite or belongs to something else (the LangGraph
checkpoint database sits in the same folder) is refused before anything is written to it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from bonsai.errors import StoreError, StoreUnavailable
from bonsai.store import migrations

log = logging.getLogger(__name__)

SQLITE_HEADER = b"SQLite format 3\x00"
#: how long a writer waits for another process's transaction before giving up (the debate runner,
#: a sweep and `bonsai transcripts` may all hold the file at once)
BUSY_TIMEOUT_MS = 10_000


def unavailable(path: Path | str, exc: sqlite3.Error, *, what: str = "transcript store") -> StoreUnavailable | None:
    """The bonsai error for an SQLite failure that comes from outside (a lock held too long, a full disk,
    an I/O error), or None for anything else (a bug, a constraint, corruption: those are reported as such).

    Told by SQLite's own error name, not the message text, so a locale or a new SQLite wording cannot hide it."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or (not name and "locked" in text):
        return StoreUnavailable(
            f"The {what} {path} is locked by another process (it held its write lock past the "
            f"{BUSY_TIMEOUT_MS / 1000:g} s busy timeout): {exc}.",
            hint="wait for the other bonsai command (or the program holding the file open) to finish, then run again "
            "(`bonsai sweep FILE --resume` continues a sweep where it stopped)",
            kind="locked",
        )
    if name.startswith("SQLITE_FULL") or (not name and "full" in text):
        return StoreUnavailable(
            f"The disk holding the {what} {path} is full: {exc}. The last write was rolled back; nothing already saved is lost.",
            hint="free some space on that disk (or move $BONSAI_HOME), then run again; `bonsai transcripts vacuum` shrinks the checkpoint file",
            kind="full",
        )
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_READONLY")) or (not name and ("disk i/o" in text or "readonly" in text)):
        return StoreUnavailable(
            f"Cannot write the {what} {path}: {exc} ({name or 'I/O error'}).",
            hint="check the disk and the file's permissions (dmesg may say more), then run again",
            kind="io",
        )
    return None


class _Connection(sqlite3.Connection):
    """A connection whose lock, disk-full and I/O failures arrive as :class:`StoreUnavailable`, so every
    caller (the graph's nodes, a sweep worker, the CLI) gets one bonsai error instead of an OperationalError."""

    bonsai_path: str = "?"
    bonsai_read_only: bool = False

    def execute(self, sql: str, parameters: object = (), /) -> sqlite3.Cursor:  # type: ignore[override]
        try:
            return super().execute(sql, parameters)  # type: ignore[arg-type]
        except sqlite3.OperationalError as exc:
            raise _translated(self, exc) from exc

    def executemany(self, sql: str, parameters: object, /) -> sqlite3.Cursor:  # type: ignore[override]
        try:
            return super().executemany(sql, parameters)  # type: ignore[arg-type]
        except sqlite3.OperationalError as exc:
            raise _translated(self, exc) from exc


def _translated(db: _Connection, exc: sqlite3.OperationalError) -> BaseException:
    if db.bonsai_read_only and getattr(exc, "sqlite_errorname", "").startswith("SQLITE_READONLY"):
        return exc  # a write through a read-only handle is bonsai's own bug, not the disk's
    return unavailable(db.bonsai_path, exc) or exc


def open_store(path: Path, *, create: bool, read_only: bool = False) -> sqlite3.Connection:
    """A migrated connection to the store at ``path`` (WAL, foreign keys on, busy timeout set).

    ``read_only`` opens the file with SQLite's ``mode=ro``: nothing is created, migrated or switched to
    WAL, so reading a store (or a file that only looks like one) never changes it. A store older than
    this bonsai is then migrated in a private in-memory copy instead of on disk.
    """
    if read_only:
        return _open_read_only(path)
    _check_file(path, create=create)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # isolation_level=None: no implicit transactions; the store opens them itself (BEGIN IMMEDIATE)
        # so that a writer waits for the lock up front instead of failing when it upgrades a read.
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                             factory=_Connection)
        db.bonsai_path = str(path)
    except sqlite3.Error as exc:
        raise StoreError(f"Cannot open the transcript store {path}: {exc}.", hint="check the path and its permissions") from exc
    try:
        # whose file is it, before anything is written to it (WAL mode included)
        migrations.check_identity(db, path)
        _configure(db, path)
        migrations.migrate(db, path)
    except sqlite3.DatabaseError as exc:
        db.close()
        raise _unusable(path, exc) from exc
    except BaseException:
        db.close()
        raise
    return db


def _open_read_only(path: Path) -> sqlite3.Connection:
    _check_file(path, create=False)
    if path.stat().st_size == 0:
        raise StoreError(f"{path} is an empty file (0 bytes), not a transcript store.", hint="pass --store with a bonsai transcripts.sqlite, or run a debate to fill it")
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, check_same_thread=False, isolation_level=None,
                             timeout=BUSY_TIMEOUT_MS / 1000, factory=_Connection)
        db.bonsai_path, db.bonsai_read_only = str(path), True
    except sqlite3.Error as exc:
        raise StoreError(f"Cannot open the transcript store {path}: {exc}.", hint="check the path and its permissions") from exc
    try:
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA query_only=ON")
        migrations.check_identity(db, path)
        version = migrations.check_version(db, path)
        if version < len(migrations.MIGRATIONS):
            # an older store: read it through a migrated copy in memory, leaving the file as it is
            log.info("transcript store %s has schema %d; reading a migrated in-memory copy", path, version)
            mem = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            db.backup(mem)
            db.close()
            db = mem
            migrations.migrate(db, path)
            db.execute("PRAGMA query_only=ON")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise _unusable(path, exc) from exc
    except BaseException:
        db.close()
        raise
    return db


def _unusable(path: Path, exc: sqlite3.DatabaseError) -> StoreError:
    if migrations.is_corruption(exc):
        return migrations.corrupt_error(path, str(exc))
    return StoreError(
        f"{path} is not a usable transcript store ({exc}).",
        hint="pass --store with a bonsai transcripts.sqlite, or move the damaged file away and run again",
    )


def _check_file(path: Path, *, create: bool) -> None:
    if path.is_dir():
        raise StoreError(f"The transcript store path {path} is a folder, not a file.", hint="pass --store with a .sqlite file")
    if not path.exists():
        if create:
            return
        raise StoreError(
            f"There is no transcript store at {path}.",
            hint="run a debate first (`bonsai debate ...`), or pass --store with the right file",
        )
    try:
        with path.open("rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise StoreError(f"Cannot read the transcript store {path}: {exc.strerror}.", hint="check its permissions") from exc
    # An empty file is a valid, empty SQLite database (sqlite3 creates them that way).
    if header and header != SQLITE_HEADER:
        raise StoreError(
            f"{path} is not an SQLite database, so it cannot be a transcript store.",
            hint="pass --store with a bonsai transcripts.sqlite, or move that file away",
        )


def _configure(db: sqlite3.Connection, path: Path) -> None:
    # WAL lets `bonsai transcripts` read while a debate writes; these pragmas cannot run inside a transaction.
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        log.warning("transcript store %s runs in %s journal mode, not WAL", path, mode)
    db.execute("PRAGMA foreign_keys=ON")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # NORMAL is durable across application crashes in WAL mode; only an OS crash can lose the last commit.
    db.execute("PRAGMA synchronous=NORMAL")


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection, lock: threading.RLock) -> Iterator[sqlite3.Connection]:
    """One short write transaction, serialised with the other threads that share ``db``."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            # a COMMIT that fails (disk full, I/O) can leave the transaction open: rolled back below
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error, StoreError):
                    db.execute("ROLLBACK")
            raise


@contextlib.contextmanager
def read_transaction(db: sqlite3.Connection, lock: threading.RLock) -> Iterator[sqlite3.Connection]:
    """A consistent snapshot for reads that take several queries."""
    with lock:
        db.execute("BEGIN")
        try:
            yield db
        finally:
            if db.in_transaction:
                db.execute("COMMIT")
