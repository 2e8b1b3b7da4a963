"""Reading never writes: read-only commands open the store with SQLite's mode=ro, and a damaged, empty or
foreign file gets one clear message and is left byte for byte as it was. Real SQLite, the real CLI."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from bonsai.cli.main import main
from bonsai.errors import StoreError
from bonsai.store import TranscriptStore, migrations
from test_store import debate, turn
from test_transcripts_cli import fill

READ_COMMANDS = [["transcripts", "list"], ["transcripts", "show", "deb-aaa111"], ["transcripts", "export", "-o", "OUT"], ["ratings", "s1"]]


def _argv(cmd: list[str], store: Path, tmp_path: Path) -> list[str]:
    return [a.replace("OUT", str(tmp_path / "out.jsonl")) for a in cmd] + ["--store", str(store)]


def _snapshot(path: Path) -> tuple[bytes, list[str]]:
    """The file's bytes and every file beside it (a -wal/-shm appearing would mean a switch to WAL)."""
    return path.read_bytes(), sorted(p.name for p in path.parent.iterdir())


@pytest.mark.parametrize("cmd", READ_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_empty_file_is_a_clear_error_and_stays_empty(isolated_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], cmd: list[str]) -> None:
    store = tmp_path / "db" / "empty.sqlite"
    store.parent.mkdir()
    store.touch()
    assert main(_argv(cmd, store, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "empty file (0 bytes), not a transcript store" in err and "Traceback" not in err
    assert _snapshot(store) == (b"", ["empty.sqlite"])


@pytest.mark.parametrize("cmd", READ_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_foreign_sqlite_file_is_refused_and_not_switched_to_wal(isolated_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               cmd: list[str]) -> None:
    store = tmp_path / "db" / "other.sqlite"
    store.parent.mkdir()
    with sqlite3.connect(store) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
    before = _snapshot(store)
    assert main(_argv(cmd, store, tmp_path)) == 2
    assert "not a bonsai transcript store (it holds notes)" in capsys.readouterr().err
    assert _snapshot(store) == before
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_writer_refuses_a_foreign_file_before_switching_it_to_wal(tmp_path: Path) -> None:
    store = tmp_path / "other.sqlite"
    with sqlite3.connect(store) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
    with pytest.raises(StoreError, match="not a bonsai transcript store"):
        TranscriptStore(store)
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_reading_an_older_store_migrates_a_copy_in_memory_not_the_file(isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "old.sqlite"
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])  # an older bonsai wrote it
    with TranscriptStore(store) as s:
        s.create_debate(debate("d-old"))
        t = turn("d-old", 0).to_dict()
        t.pop("generated_tokens")  # a column the older schema did not have
        s._db.execute(f"INSERT INTO turns ({', '.join(t)}) VALUES ({', '.join('?' * len(t))})",
                      [json.dumps(v) if k in ("sampling", "prompt") and v is not None else v for k, v in t.items()])
    monkeypatch.undo()
    with sqlite3.connect(store) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = store.read_bytes()
    assert main(["transcripts", "list", "--json", "--store", str(store)]) == 0
    assert '"debate_id": "d-old"' in capsys.readouterr().out
    assert main(["sweep", "--list", "--store", str(store)]) == 0  # the sweeps table exists only in the copy
    assert store.read_bytes() == before
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 1
    with TranscriptStore(store) as s:  # a writer migrates the file itself
        assert s.list_sweeps() == []
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == len(migrations.MIGRATIONS)


def test_reading_a_store_changes_nothing(isolated_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "db" / "t.sqlite"
    store.parent.mkdir()
    fill(store)
    with sqlite3.connect(store) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = store.read_bytes()
    for cmd in READ_COMMANDS:
        main(_argv(cmd, store, tmp_path))
    assert store.read_bytes() == before
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        TranscriptStore(store, read_only=True)._db.execute("DELETE FROM debates")


def _corrupt_schema_page(store: Path) -> None:
    with sqlite3.connect(store) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name='schema_version'").fetchone()[0]
    data = bytearray(store.read_bytes())
    start = (root - 1) * page_size
    for i in range(start + 200, start + page_size):  # the page's cells, its header left intact
        data[i] = (i * 7919) % 251
    store.write_bytes(bytes(data))


@pytest.mark.parametrize("read_only", [True, False])
def test_a_damaged_page_is_reported_as_corruption_not_as_a_newer_bonsai(tmp_path: Path, read_only: bool) -> None:
    store = tmp_path / "t.sqlite"
    fill(store)
    _corrupt_schema_page(store)
    before = store.read_bytes()
    with pytest.raises(StoreError) as info:
        TranscriptStore(store, read_only=read_only)
    assert "is corrupt (SQLite integrity check:" in info.value.message and "newer bonsai" not in info.value.message
    assert "backup" in info.value.hint
    assert store.read_bytes() == before


def test_corruption_through_the_cli(isolated_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "t.sqlite"
    fill(store)
    _corrupt_schema_page(store)
    assert main(["transcripts", "list", "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: The transcript store") and "is corrupt" in err and "Traceback" not in err


def test_a_really_newer_store_is_still_called_newer(tmp_path: Path) -> None:
    store = tmp_path / "t.sqlite"
    fill(store)
    with sqlite3.connect(store) as db:
        db.execute("INSERT INTO schema_version VALUES (99, 'm_future', 0)")
    with pytest.raises(StoreError, match=r"newer bonsai \(schema 99"):
        TranscriptStore(store, read_only=True)
