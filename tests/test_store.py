"""The SQLite transcript store: schema, migrations, idempotent writes, round trips, export."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from bonsai.errors import DebateNotFound, StoreError
from bonsai.store import TranscriptStore
from bonsai.store import migrations
from bonsai.store.export import SCHEMA, export_turns
from bonsai.store.records import CandidateRecord, DebateRecord, TurnRecord, VerdictRecord

MOTION_JA = "この議会は週四日勤務制を導入すべきである"


def debate(debate_id: str = "d1", **over) -> DebateRecord:
    fields = dict(
        debate_id=debate_id,
        motion=MOTION_JA,
        format="quick",
        rounds=2,
        base_model="smollm2-135m-instruct",
        engine="vllm-cpu",
        seats={"A": ["advocate"], "B": ["skeptic"], "judge": ["judge"], "moderator": ["moderator"]},
        seed=7,
        candidates=2,
        created_at=1_700_000_000.0,
        config={"max_tokens": 32, "nested": {"k": [1, 2.5, None]}},
    )
    fields.update(over)
    return DebateRecord(**fields)


def turn(debate_id: str = "d1", index: int = 0, **over) -> TurnRecord:
    team = "A" if index % 2 == 0 else "B"
    fields = dict(
        debate_id=debate_id,
        turn_index=index,
        phase="opening",
        round=1,
        speaker="advocate" if team == "A" else "skeptic",
        team=team,
        role="debater",
        text=f"<think>考える {index}</think>答え {index}：週四日は生産性を上げる。",
        answer=f"答え {index}：週四日は生産性を上げる。",
        reasoning=f"考える {index}",
        adapter_name=f"advocate@{index}",
        adapter_hash="abc123",
        base_model="smollm2-135m-instruct",
        prompt_tokens=120,
        output_tokens=24,
        latency_s=1.5,
        first_token_s=0.25,
        sampling={"temperature": 0.7, "top_p": 0.95, "max_tokens": 32},
        seed=11,
        finish_reason="stop",
        prompt=[{"role": "system", "content": "你是辩手"}, {"role": "user", "content": MOTION_JA}],
        created_at=1_700_000_010.0 + index,
    )
    fields.update(over)
    return TurnRecord(**fields)


def candidate(debate_id: str = "d1", turn_index: int = 0, index: int = 0, **over) -> CandidateRecord:
    fields = dict(
        debate_id=debate_id,
        turn_index=turn_index,
        candidate_index=index,
        text=f"候補 {index}",
        answer=f"候補 {index}",
        reasoning=None,
        score=0.25 + 0.5 * index,
        chosen=index == 1,
        output_tokens=10 + index,
        finish_reason="length",
        seed=100 + index,
    )
    fields.update(over)
    return CandidateRecord(**fields)


def verdict(debate_id: str = "d1", judge: str = "panel", **over) -> VerdictRecord:
    fields = dict(
        debate_id=debate_id,
        judge=judge,
        winner="A",
        prob_a=0.8,
        confidence=0.8,
        scores={"A": {"logic": 8.0, "evidence": 7.5}, "B": {"logic": 6.0, "evidence": 5.0}},
        rationale="A の論証が明確。",
        parsed=True,
        orders=[{"order": "AB", "raw": "{...}", "probs": {"A": 0.81, "B": 0.19}, "errors": []}],
        created_at=1_700_000_100.0,
    )
    fields.update(over)
    return VerdictRecord(**fields)


def filled_store(path: Path, debate_id: str = "d1", *, n_turns: int = 3) -> TranscriptStore:
    store = TranscriptStore(path)
    store.create_debate(debate(debate_id))
    for i in range(n_turns):
        store.record_turn(turn(debate_id, i))
        store.record_candidates([candidate(debate_id, i, 0), candidate(debate_id, i, 1)])
    store.record_turn(
        turn(debate_id, n_turns, speaker="moderator", team="none", role="moderator", adapter_name=None, adapter_hash=None, reasoning=None)
    )
    store.record_verdict(verdict(debate_id, "judge", created_at=1_700_000_090.0))
    store.record_verdict(verdict(debate_id))
    store.set_status(debate_id, "finished", winner="A")
    return store


@pytest.fixture
def store(tmp_path: Path):
    with TranscriptStore(tmp_path / "t.sqlite") as s:
        yield s


# -- schema and migrations --------------------------------------------------------------------------


def test_new_store_is_migrated_wal_and_enforces_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "t.sqlite"
    TranscriptStore(path).close()
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT version, name FROM schema_version ORDER BY version").fetchall()
        assert rows == [(i + 1, m.__name__) for i, m in enumerate(migrations.MIGRATIONS)]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"debates", "turns", "candidates", "verdicts", "schema_version"} <= tables
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"debates_status", "debates_sweep", "turns_speaker"} <= indexes
    finally:
        db.close()
    with TranscriptStore(path) as s:
        assert s._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert s._db.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        with pytest.raises(DebateNotFound, match="not in the store"):
            s.record_turn(turn("ghost"))


def test_every_record_field_has_a_column(store: TranscriptStore) -> None:
    for table, record in (("debates", DebateRecord), ("turns", TurnRecord), ("candidates", CandidateRecord), ("verdicts", VerdictRecord)):
        columns = {r[1] for r in store._db.execute(f"PRAGMA table_info({table})")}
        assert set(record.__dataclass_fields__) == columns, table


def test_migrations_run_once_and_later_ones_are_applied_and_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.sqlite"
    with TranscriptStore(path) as s:
        s.create_debate(debate())
    TranscriptStore(path).close()  # reopening must not re-run (m001 would fail: tables exist)

    def m999_extra(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE extra_things (name TEXT PRIMARY KEY)")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, m999_extra])
    with TranscriptStore(path) as s:
        assert s.get_debate("d1").motion == MOTION_JA  # data survives the migration
        names = [r[0] for r in s._db.execute("SELECT name FROM schema_version ORDER BY version")]
        assert names[-1] == "m999_extra" and len(names) == len(migrations.MIGRATIONS)
        s._db.execute("SELECT * FROM extra_things").fetchall()


def test_failed_migration_rolls_back_entirely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.sqlite"

    def m002_broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half (x)")
        raise RuntimeError("boom")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, m002_broken])
    with pytest.raises(RuntimeError, match="boom"):
        TranscriptStore(path)
    db = sqlite3.connect(path)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()
    assert tables == set()  # not even m001 or schema_version: one transaction


def test_store_from_a_newer_bonsai_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    TranscriptStore(path).close()
    known = len(migrations.MIGRATIONS)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO schema_version VALUES (?, 'm_future', 0)", (known + 3,))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=rf"newer bonsai \(schema {known + 3}, this one knows {known}\)") as info:
        TranscriptStore(path)
    assert "upgrade" in info.value.hint


def test_non_sqlite_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    path.write_text("debate notes, not a database\n" * 20)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not an SQLite database"):
        TranscriptStore(path)
    assert path.read_bytes() == before


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE checkpoints (thread_id TEXT)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a bonsai transcript store.*checkpoints"):
        TranscriptStore(path)
    db = sqlite3.connect(path)
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["checkpoints"]
    db.close()


def test_missing_store_is_not_created_when_create_is_false(tmp_path: Path) -> None:
    path = tmp_path / "nope.sqlite"
    with pytest.raises(StoreError, match="no transcript store"):
        TranscriptStore(path, create=False)
    assert not path.exists()
    with pytest.raises(StoreError, match="folder"):
        TranscriptStore(tmp_path)


# -- round trips and idempotent writes ---------------------------------------------------------------


def test_records_round_trip_faithfully(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    d = debate(sweep="sweep-1", winner=None)
    t0 = turn(index=0)
    t1 = turn(index=1, prompt="### Instruction:\nアルパカ形式\n### Response:\n", reasoning=None, first_token_s=None, seed=None)
    t2 = turn(index=2, prompt=None, adapter_name=None, adapter_hash=None, team="none", role="moderator", speaker="moderator")
    cands = [candidate(index=0, reasoning="なぜ"), candidate(index=1, seed=None)]
    verd = verdict(parsed=False)
    with TranscriptStore(path) as s:
        assert s.create_debate(d) is True
        for t in (t0, t1, t2):
            s.record_turn(t)
        s.record_candidates(cands)
        s.record_verdict(verd)
    with TranscriptStore(path, create=False) as s:  # a fresh connection reads what was written
        assert s.get_debate("d1") == d
        assert s.turns("d1") == [t0, t1, t2]
        assert s.candidates("d1") == cands
        assert s.verdicts("d1") == [verd]
        got = s.candidates("d1")[1]
        assert got.chosen is True and isinstance(got.chosen, bool)
        assert s.verdicts("d1")[0].parsed is False
        assert s.turns("d1")[1].prompt.startswith("### Instruction")
        assert s.turns("d1")[2].prompt is None


def test_create_debate_twice_keeps_the_stored_row(store: TranscriptStore) -> None:
    assert store.create_debate(debate()) is True
    store.set_status("d1", "interrupted")
    assert store.create_debate(debate()) is False  # a resume
    assert store.get_debate("d1").status == "interrupted"
    assert store.create_debate(debate(status="running"), reset_status=True) is False
    assert store.get_debate("d1").status == "running"
    assert len(store.list_debates()) == 1


def test_turn_upsert_replaces_instead_of_duplicating(store: TranscriptStore) -> None:
    store.create_debate(debate())
    store.record_turn(turn(index=0))
    store.record_turn(turn(index=1))
    rerun = turn(index=1, answer="再実行の答え", text="再実行の答え", output_tokens=5)
    store.record_turn(rerun)  # the node ran again after a crash
    assert [t.turn_index for t in store.turns("d1")] == [0, 1]
    assert store.turns("d1")[1] == rerun
    assert store.count_turns() == 2


def test_candidate_and_verdict_upserts_are_idempotent(store: TranscriptStore) -> None:
    store.create_debate(debate())
    store.record_candidates([candidate(index=0), candidate(index=1)])
    store.record_candidates([candidate(index=0, score=0.9), candidate(index=1)])
    store.record_candidates([])
    cands = store.candidates("d1")
    assert [(c.candidate_index, c.score) for c in cands] == [(0, 0.9), (1, 0.75)]
    store.record_verdict(verdict())
    store.record_verdict(verdict(winner="B", prob_a=0.3, confidence=0.7))
    store.record_verdict(verdict(judge="judge"))
    assert [(v.judge, v.winner) for v in store.verdicts("d1")] == [("judge", "A"), ("panel", "B")]


def test_set_status_winner_and_finished_at(store: TranscriptStore) -> None:
    store.create_debate(debate())
    assert store.get_debate("d1").finished_at is None
    store.set_status("d1", "interrupted")
    assert store.get_debate("d1").finished_at is None
    store.set_status("d1", "finished", winner="B")
    done = store.get_debate("d1")
    assert (done.status, done.winner) == ("finished", "B") and done.finished_at is not None
    store.set_status("d1", "finished")  # no winner given keeps the stored one
    assert store.get_debate("d1").winner == "B"
    store.set_status("d1", "running")
    assert store.get_debate("d1").finished_at is None
    with pytest.raises(DebateNotFound) as info:
        store.set_status("nope", "finished")
    assert "bonsai transcripts list" in info.value.hint
    with pytest.raises(ValueError, match="status"):
        store.set_status("d1", "done")
    with pytest.raises(ValueError, match="winner"):
        store.set_status("d1", "finished", winner="C")


def test_unknown_debate_reads_raise_debate_not_found(store: TranscriptStore) -> None:
    for call in (store.get_debate, store.turns, store.candidates, store.verdicts, store.resolve_id):
        with pytest.raises(DebateNotFound, match="nope"):
            call("nope")


def test_list_filters_order_and_limit(store: TranscriptStore) -> None:
    store.create_debate(debate("old", created_at=1.0, sweep="s1"))
    store.create_debate(debate("mid", created_at=2.0, seats={"A": ["optimist"], "B": ["skeptic"], "judge": ["strict-judge"]}))
    store.create_debate(debate("new", created_at=3.0, sweep="s1"))
    store.set_status("old", "finished", winner="A")
    store.set_status("mid", "finished", winner="B")
    ids = lambda ds: [d.debate_id for d in ds]  # noqa: E731
    assert ids(store.list_debates()) == ["new", "mid", "old"]
    assert ids(store.list_debates(newest_first=False)) == ["old", "mid", "new"]
    assert ids(store.list_debates(limit=2)) == ["new", "mid"]
    assert ids(store.list_debates(status="finished")) == ["mid", "old"]
    assert ids(store.list_debates(winner="A")) == ["old"]
    assert ids(store.list_debates(sweep="s1")) == ["new", "old"]
    assert ids(store.list_debates(persona="optimist")) == ["mid"]
    assert ids(store.list_debates(persona="strict-judge")) == ["mid"]
    assert ids(store.list_debates(persona="skeptic", status="finished", winner="B")) == ["mid"]
    assert ids(store.list_debates(persona="nobody")) == []


def test_count_turns_and_resolve_prefix(store: TranscriptStore) -> None:
    store.create_debate(debate("abc-111"))
    store.create_debate(debate("abc-222"))
    for i in range(3):
        store.record_turn(turn("abc-111", i))
    store.record_turn(turn("abc-222", 0, speaker="moderator", team="none", role="moderator"))
    assert store.count_turns() == 4
    assert store.count_turns("advocate") == 2
    assert store.count_turns("skeptic") == 1
    assert store.count_turns("moderator", role="debater") == 0
    assert store.turn_counts() == {"abc-111": 3, "abc-222": 1}
    assert store.resolve_id("abc-1") == "abc-111"
    assert store.resolve_id("abc-222") == "abc-222"
    with pytest.raises(StoreError, match="several debates"):
        store.resolve_id("abc")
    with pytest.raises(DebateNotFound):
        store.resolve_id("ABC-1")  # ids are exact, even though SQL LIKE is not


def test_invalid_values_are_rejected_before_writing(store: TranscriptStore) -> None:
    with pytest.raises(ValueError):
        store.create_debate(debate(status="done"))
    store.create_debate(debate())
    with pytest.raises(ValueError):
        store.record_turn(turn(team="C"))
    with pytest.raises(ValueError):
        store.record_verdict(verdict(winner="draw"))
    with pytest.raises(ValueError, match="'A', 'B' or 'tie'"):
        store.set_status("d1", "finished", winner="C")
    assert store.turns("d1") == [] and store.verdicts("d1") == []


def test_a_tie_is_stored_with_its_band(store: TranscriptStore) -> None:
    store.create_debate(debate())
    store.record_verdict(verdict(winner="tie", prob_a=0.52, confidence=0.52, tie_band=0.05))
    store.set_status("d1", "finished", winner="tie")
    (v,) = store.verdicts("d1")
    assert (v.winner, v.tie_band) == ("tie", 0.05)
    assert store.get_debate("d1").winner == "tie"
    assert [d.debate_id for d in store.list_debates(winner="tie")] == ["d1"]


def test_migration_3_adds_the_tie_band_and_keeps_old_verdicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store written before ties existed (schema 2) opens, gains verdicts.tie_band, and its verdicts read
    back with tie_band None (decided by the old rule), next to new tie verdicts."""
    path = tmp_path / "old.sqlite"
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])
    db = sqlite3.connect(path, isolation_level=None)
    migrations.migrate(db, path)
    db.execute(
        "INSERT INTO debates (debate_id, motion, format, rounds, base_model, engine, seats, seed, candidates, created_at, status, winner)"
        " VALUES ('old', 'm', 'quick', 1, 'b', 'vllm', '{}', 1, 1, 1.0, 'finished', 'A')"
    )
    db.execute("INSERT INTO verdicts VALUES ('old', 'judge', 'A', 0.51, 0.51, '{}', '', 1, '[]', 1.0)")
    db.close()
    monkeypatch.undo()
    assert migrations.MIGRATIONS[2].__name__ == "m003_verdict_tie_band"
    with TranscriptStore(path) as store:
        (old,) = store.verdicts("old")
        assert (old.winner, old.prob_a, old.tie_band) == ("A", 0.51, None)
        store.create_debate(debate())
        store.record_verdict(verdict(winner="tie", tie_band=0.1))
        assert store.verdicts("d1")[0].tie_band == 0.1
    db = sqlite3.connect(path)
    assert [r[1] for r in db.execute("SELECT version, name FROM schema_version ORDER BY version")][2] == "m003_verdict_tie_band"
    db.close()


def test_concurrent_writes_from_threads(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    shared = TranscriptStore(path)
    other = TranscriptStore(path)  # a second connection, as another process would have
    shared.create_debate(debate("d1"))
    shared.create_debate(debate("d2"))
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def write(s: TranscriptStore, debate_id: str, offset: int) -> None:
        try:
            barrier.wait()
            for i in range(offset, offset + 40):
                s.record_turn(turn(debate_id, i))
                s.record_candidates([candidate(debate_id, i, 0), candidate(debate_id, i, 1)])
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(shared, "d1", 0)),
        threading.Thread(target=write, args=(shared, "d1", 40)),  # same connection, other thread
        threading.Thread(target=write, args=(other, "d2", 0)),  # other connection
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [t.turn_index for t in shared.turns("d1")] == list(range(80))
    assert len(other.turns("d2")) == 40 and len(shared.candidates("d1")) == 160
    shared.close()
    other.close()


# -- export ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_loads_in_datasets_with_japanese_intact(tmp_path: Path, fmt: str) -> None:
    import datasets

    with filled_store(tmp_path / "t.sqlite") as s:
        s.create_debate(debate("d2", created_at=1_800_000_000.0, motion="人工智能应当被监管"))
        s.record_turn(turn("d2", 0))  # unjudged, no candidates
        out = tmp_path / "out" / f"turns.{fmt}"
        assert export_turns(s, out, fmt) == 4  # 3 debater turns of d1 + 1 of d2; moderator excluded
    if fmt == "jsonl":
        raw = out.read_text(encoding="utf-8")
        assert MOTION_JA in raw and "\\u" not in raw  # readable, not escaped
    ds = datasets.load_dataset(fmt if fmt == "parquet" else "json", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 4
    assert set(ds.column_names) == set(SCHEMA.names)
    first = ds[0]
    assert first["debate_id"] == "d1" and first["motion"] == MOTION_JA
    assert first["answer"] == "答え 0：週四日は生産性を上げる。"
    assert first["winner"] == "A" and first["status"] == "finished" and first["base_model"] == "smollm2-135m-instruct"
    assert {"seat": "A", "personas": ["advocate"]} in first["seats"]
    assert json.loads(first["prompt"])[0]["content"] == "你是辩手"
    assert json.loads(first["sampling"]) == {"temperature": 0.7, "top_p": 0.95, "max_tokens": 32}
    assert [(c["text"], c["score"], c["chosen"]) for c in first["candidates"]] == [("候補 0", 0.25, False), ("候補 1", 0.75, True)]
    assert first["verdict"]["judge"] == "panel" and first["verdict"]["winner"] == "A"
    assert {"team": "A", "criterion": "logic", "score": 8.0} in first["verdict"]["scores"]
    assert first["verdict"]["rationale"] == "A の論証が明確。"
    last = ds[3]
    assert last["motion"] == "人工智能应当被监管" and last["verdict"] is None and last["candidates"] == []
    assert [r["role"] for r in ds] == ["debater"] * 4


def test_export_rows_match_schema_in_both_formats(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    with filled_store(tmp_path / "t.sqlite") as s:
        n = export_turns(s, tmp_path / "a.jsonl", "jsonl", include_moderator=True)
        m = export_turns(s, tmp_path / "a.parquet", "parquet", ["d1"], include_moderator=True)
    assert n == m == 4
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(list(r) == SCHEMA.names for r in rows)  # JSONL carries exactly the Parquet columns
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.schema.equals(SCHEMA)
    assert table.to_pylist()[3]["role"] == "moderator"
    assert table.to_pylist() == rows


def test_export_errors_leave_no_file(tmp_path: Path) -> None:
    out = tmp_path / "turns.jsonl"
    with TranscriptStore(tmp_path / "t.sqlite") as s:
        with pytest.raises(StoreError, match="no debates"):
            export_turns(s, out, "jsonl")
        s.create_debate(debate())
        s.record_turn(turn(index=0, speaker="moderator", team="none", role="moderator"))
        with pytest.raises(StoreError, match="no debater turns"):
            export_turns(s, out, "parquet")
        with pytest.raises(DebateNotFound):
            export_turns(s, out, "jsonl", ["missing"])
        with pytest.raises(StoreError, match="format"):
            export_turns(s, out, "csv")  # type: ignore[arg-type]
    assert not out.exists() and not list(tmp_path.glob(".turns.jsonl.*"))


def test_export_replaces_an_existing_file_atomically(tmp_path: Path) -> None:
    out = tmp_path / "turns.jsonl"
    out.write_text("old\n")
    with filled_store(tmp_path / "t.sqlite") as s:
        with pytest.raises(StoreError, match="already exists"):
            export_turns(s, out, "jsonl")  # never replaced unasked
        with pytest.raises(DebateNotFound):
            export_turns(s, out, "jsonl", ["missing"], force=True)
        assert out.read_text() == "old\n"  # a failed export keeps the previous file
        assert export_turns(s, out, "jsonl", force=True) == 3
    assert out.read_text(encoding="utf-8").count("\n") == 3
