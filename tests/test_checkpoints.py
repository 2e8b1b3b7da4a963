"""The checkpoint database: read with LangGraph's strict allow-list (a tampered checkpoint is refused,
never run), pruned to its last state when a debate finishes, and `bonsai transcripts vacuum`."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import ormsgpack
import pytest
from fakes import FakeEngine
from langgraph.checkpoint.serde.jsonplus import EXT_CONSTRUCTOR_POS_ARGS, JsonPlusSerializer
from test_tui_steering import Hold, collect

from bonsai.cli.main import main
from bonsai.debate.checkpoints import CheckpointError, StrictSerializer
from bonsai.debate.runner import DebateRunner, DebateSpec
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore

SPEC = DebateSpec(motion="Tea beats coffee", format="quick", rounds=1, seed=3)


def rows(ck: Path, thread: str) -> int:
    with sqlite3.connect(ck) as db:
        return int(db.execute("SELECT COUNT(*) FROM checkpoints WHERE thread_id=?", (thread,)).fetchone()[0])


def evil_payload(marker: Path) -> bytes:
    """A msgpack value that, read by a permissive deserializer, calls os.mkdir(marker)."""
    return ormsgpack.packb(ormsgpack.Ext(EXT_CONSTRUCTOR_POS_ARGS, ormsgpack.packb(["os", "mkdir", [str(marker)]])))


def test_the_permissive_default_would_run_the_payload_and_the_strict_one_refuses(tmp_path: Path) -> None:
    permissive = tmp_path / "permissive"
    JsonPlusSerializer(allowed_msgpack_modules=True).loads_typed(("msgpack", evil_payload(permissive)))
    assert permissive.is_dir()  # what a writable checkpoint file could do on resume before
    strict = tmp_path / "strict"
    with pytest.raises(CheckpointError, match=r"construct os\.mkdir"):
        StrictSerializer().loads_typed(("msgpack", evil_payload(strict)))
    assert not strict.exists()
    with pytest.raises(CheckpointError, match="serialized as 'pickle'"):
        StrictSerializer().loads_typed(("pickle", b"cos\nsystem\n(S'true'\ntR."))
    # bonsai's own values round-trip
    s = StrictSerializer()
    value = {"motion": "茶", "turns": [{"a": 1, "b": [1.5, None]}], "notes": []}
    assert s.loads_typed(s.dumps_typed(value)) == value


async def test_a_tampered_checkpoint_stops_the_resume_with_a_clear_error(tmp_path: Path, isolated_home: Path) -> None:
    ck, marker = tmp_path / "ck.sqlite", tmp_path / "pwned"
    book = PersonaBook.load()
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(FakeEngine(), store, ck, book, isolated_home, "fake") as runner:
            did = (await collect(runner.run(SPEC, gate=Hold(2))))[0].debate_id  # held before turn 2
        assert store.get_debate(did).status == "interrupted"
        with sqlite3.connect(ck) as db:  # someone with write access to the file swaps the latest checkpoint
            last = db.execute("SELECT MAX(checkpoint_id) FROM checkpoints WHERE thread_id=?", (did,)).fetchone()[0]
            blob = db.execute("SELECT checkpoint FROM checkpoints WHERE checkpoint_id=?", (last,)).fetchone()[0]
            doc = StrictSerializer().loads_typed(("msgpack", blob))
            doc["channel_values"]["motion"] = ormsgpack.Ext(EXT_CONSTRUCTOR_POS_ARGS, ormsgpack.packb(["os", "mkdir", [str(marker)]]))
            db.execute("UPDATE checkpoints SET checkpoint=? WHERE checkpoint_id=?", (ormsgpack.packb(doc), last))
        async with DebateRunner(FakeEngine(), store, ck, book, isolated_home, "fake") as runner:
            with pytest.raises(CheckpointError) as info:
                await collect(runner.resume(did))
        assert "os.mkdir" in info.value.message and "checkpoint" in info.value.hint
        assert not marker.exists()
        assert len(store.turns(did)) == 2  # what was finished is still in the store


async def test_a_finished_debate_keeps_only_its_last_checkpoint(tmp_path: Path, isolated_home: Path) -> None:
    ck = tmp_path / "ck.sqlite"
    book = PersonaBook.load()
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(FakeEngine(), store, ck, book, isolated_home, "fake") as runner:
            held = (await collect(runner.run(SPEC, gate=Hold(2))))[0].debate_id
            before = rows(ck, held)
            assert before > 2  # an unfinished debate keeps its history (resumable, forkable)
            done = (await collect(runner.run(SPEC.model_copy(update={"seed": 4}))))[0].debate_id
            assert store.get_debate(done).status == "finished"
            assert rows(ck, done) == 1 and rows(ck, held) == before
            state = await runner.graph.aget_state({"configurable": {"thread_id": done}})
            assert state.values["verdict"] is not None and len(state.values["turns"]) == len(store.turns(done))
            # and the held one still finishes, and is pruned then
            await collect(runner.resume(held))
            assert store.get_debate(held).status == "finished" and rows(ck, held) == 1


async def test_vacuum_drops_old_finished_debates_only(tmp_path: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_file, ck = isolated_home / "transcripts.sqlite", isolated_home / "checkpoints.sqlite"
    book = PersonaBook.load()
    with TranscriptStore(store_file) as store:
        async with DebateRunner(FakeEngine(), store, ck, book, isolated_home, "fake") as runner:
            old = [(await collect(runner.run(SPEC.model_copy(update={"seed": s}))))[0].debate_id for s in range(6)]
            recent = (await collect(runner.run(SPEC.model_copy(update={"seed": 10}))))[0].debate_id
            held = (await collect(runner.run(SPEC.model_copy(update={"seed": 11}), gate=Hold(2))))[0].debate_id
    with sqlite3.connect(store_file) as db:
        db.executemany("UPDATE debates SET finished_at=? WHERE debate_id=?", [(time.time() - 40 * 86400, d) for d in old])
        # an old interrupted debate is never touched, however old
        db.execute("UPDATE debates SET created_at=? WHERE debate_id=?", (time.time() - 400 * 86400, held))
    held_rows = rows(ck, held)
    assert main(["transcripts", "vacuum", "--older-than", "30"]) == 0
    out = capsys.readouterr().out
    assert "dropped those of 6 debates finished more than 30 days ago" in out
    saved = int(out.split("(")[-1].split(" bytes saved")[0].replace(",", ""))
    assert saved >= 0 and "vacuum:" in out
    assert [rows(ck, d) for d in old] == [0] * 6 and rows(ck, recent) == 1 and rows(ck, held) == held_rows
    assert len(TranscriptStore(store_file, read_only=True).list_debates()) == 8  # transcripts are never deleted
    # a second run has nothing left to drop
    assert main(["transcripts", "vacuum", "--older-than", "30"]) == 0
    assert "dropped those of 0 debates" in capsys.readouterr().out


def test_vacuum_bad_inputs(isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transcripts", "vacuum"]) == 2
    assert "There is no transcript store" in capsys.readouterr().err
    TranscriptStore(isolated_home / "transcripts.sqlite").close()
    assert main(["transcripts", "vacuum", "--older-than", "-1"]) == 2
    assert "--older-than must be 0 days or more" in capsys.readouterr().err
    (isolated_home / "checkpoints.sqlite").write_bytes(b"")
    assert main(["transcripts", "vacuum"]) == 2
    assert "not a LangGraph checkpoint database" in capsys.readouterr().err
