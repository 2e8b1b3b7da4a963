"""The judge on an engine of its own (`--judge-endpoint URL [--judge-model NAME]`, `--judge-base DIR`).

Logic on scripted engines first (which engine gets which request, a server without logprobs, bad
flags), then a debate and a sweep judged by a second real `bonsai serve` while the debaters run on
the in-process transformers engine.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fakes import FakeEngine
from servekit import Server
from test_sweep import write_sweep

import bonsai.engine.session as session
from bonsai.cli.main import main
from bonsai.debate import events as ev
from bonsai.debate.runner import DebateRunner, DebateSpec
from bonsai.engine import Completion, GenerationRequest, StreamEvent
from bonsai.model.prepare import BaseModel
from bonsai.personas import PersonaBook
from bonsai.store import migrations
from bonsai.store.records import DebateRecord, VerdictRecord
from bonsai.store.transcripts import TranscriptStore


class NoLogprobsEngine(FakeEngine):
    """A server that answers but returns no logprobs (many OpenAI-compatible servers)."""

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        async for out in super().stream(request):
            yield dataclasses.replace(out, logprobs=None) if isinstance(out, Completion) else out


def _judge_call(request_id: str) -> bool:
    return "-judge-" in request_id or request_id.endswith(("-score-AB", "-score-BA"))


async def test_judge_requests_go_to_the_judges_engine_only(tmp_path: Path, isolated_home: Path) -> None:
    debaters, judge = FakeEngine(p_a=0.7), FakeEngine(p_a=0.2)
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(debaters, store, tmp_path / "ck.sqlite", PersonaBook.load(), isolated_home, "fake", judge_engine=judge) as runner:
            events = [e async for e in runner.run(DebateSpec(motion="Tea beats coffee", format="quick", rounds=1, candidates=2, seed=1))]
        assert judge.calls and all(_judge_call(r.request_id) for r in judge.calls)
        assert debaters.calls and not any(_judge_call(r.request_id) for r in debaters.calls)
        assert all(r.adapter is None for r in judge.calls)  # a judge persona's adapter fits the debaters' base only
        verdict = next(e for e in events if isinstance(e, ev.Verdict))
        assert verdict.confidence is not None and store.verdicts(verdict.debate_id)[0].confidence == verdict.confidence


async def test_a_judge_without_logprobs_says_it_has_no_confidence(tmp_path: Path, isolated_home: Path) -> None:
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(FakeEngine(), store, tmp_path / "ck.sqlite", PersonaBook.load(), isolated_home, "fake",
                                judge_engine=NoLogprobsEngine()) as runner:
            events = [e async for e in runner.run(DebateSpec(motion="Tea beats coffee", format="quick", rounds=1, seed=1))]
        verdict = next(e for e in events if isinstance(e, ev.Verdict))
        assert verdict.confidence is None and verdict.to_json()["confidence"] is None
        assert verdict.winner == store.get_debate(verdict.debate_id).winner  # decided by the readings' JSON votes alone
        stored = store.verdicts(verdict.debate_id)
        assert stored and all(v.confidence is None for v in stored)
        assert not any(o["found_labels"] for o in stored[0].orders)


def test_stores_of_the_previous_schema_keep_their_verdicts(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
    db.execute("BEGIN")
    for number, step in enumerate(migrations.MIGRATIONS[:2], start=1):
        step(db)
        db.execute("INSERT INTO schema_version VALUES (?, ?, 0)", (number, step.__name__))
    db.execute("COMMIT")
    db.execute("INSERT INTO debates (debate_id, motion, format, rounds, base_model, engine, seats, candidates, created_at, status) "
               "VALUES ('d1', 'm', 'quick', 1, 'b', 'vllm', '{}', 1, 0, 'finished')")
    db.execute("INSERT INTO verdicts VALUES ('d1', 'judge', 'A', 0.7, 0.7, '{}', 'r', 1, '[]', 0)")
    db.close()
    with TranscriptStore(path) as store:
        assert [(v.winner, v.confidence) for v in store.verdicts("d1")] == [("A", 0.7)]
        store.create_debate(DebateRecord("d2", "m", "quick", 1, "b", "openai", {}, None, 1, 0.0))
        store.record_verdict(VerdictRecord("d2", "judge", "B", 0.5, None, {}, "", True, [], 0.0))
        assert store.verdicts("d2")[0].confidence is None


# --- bad flags: one message, exit != 0, nothing written ----------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_debaters_engine(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Fails the test if the debaters' engine is created: the judge must be checked first."""
    created: list[object] = []

    def refuse(config):  # type: ignore[no-untyped-def]
        created.append(config)
        raise AssertionError("the debaters' engine started before the judge's was checked")

    monkeypatch.setattr(session, "create_engine", refuse)
    return created


def _assert_one_error(capsys: pytest.CaptureFixture[str], *needles: str) -> None:
    cap = capsys.readouterr()
    errors = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, cap.err
    assert all(n in cap.err for n in needles), cap.err
    assert "Traceback" not in cap.err and cap.out == ""


def test_unreachable_judge_endpoint(tmp_path: Path, base_model: BaseModel, capsys: pytest.CaptureFixture[str], no_debaters_engine: list[object]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    store = tmp_path / "t.sqlite"
    code = main(["--home", str(tmp_path / "home"), "debate", "Tea beats coffee", "--base", str(base_model.path), "--store", str(store),
                 "--judge-endpoint", url])
    assert code == 3
    _assert_one_error(capsys, url, "--judge-endpoint")
    assert not store.exists() and not (tmp_path / "home" / "checkpoints.sqlite").exists() and not no_debaters_engine


def test_unreachable_judge_endpoint_for_a_sweep(tmp_path: Path, base_model: BaseModel, capsys: pytest.CaptureFixture[str],
                                                no_debaters_engine: list[object]) -> None:
    store = tmp_path / "t.sqlite"
    code = main(["--home", str(tmp_path / "home"), "sweep", str(write_sweep(tmp_path)), "--base", str(base_model.path), "--store", str(store),
                 "--judge-endpoint", f"http://127.0.0.1:{_closed_port()}"])
    assert code == 3
    _assert_one_error(capsys, "judge")
    assert not store.exists()


@pytest.mark.parametrize(("flags", "needle"), [
    (["--judge-model", "big"], "--judge-model names a model on --judge-endpoint"),
    (["--judge-endpoint", "http://127.0.0.1:1", "--judge-base", "/nowhere"], "do not go together"),
])
def test_judge_flags_that_do_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], needle: str,
                                     no_debaters_engine: list[object]) -> None:
    store = tmp_path / "t.sqlite"
    code = main(["--home", str(tmp_path / "home"), "debate", "Tea beats coffee", "--store", str(store), *flags])
    assert code == 2
    _assert_one_error(capsys, needle)
    assert not store.exists()


# --- a second real `bonsai serve` as the judge (the session's shared one: conftest's `served`) ---------


def _requests_served(endpoint: str) -> float:
    """Requests the server finished (vLLM's own counter), to see who judged."""
    text = httpx.get(f"{endpoint}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:request_success_total"))


def _bonsai(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bonsai", "--home", str(home), *args], capture_output=True, text=True, timeout=900)


@pytest.mark.serve
def test_debate_and_sweep_judged_by_a_second_server(served: Server, base_model: BaseModel, quick_short_judge: str, tmp_path: Path) -> None:
    home, store = tmp_path / "home", tmp_path / "t.sqlite"
    engine = ["--engine", "hf", "--base", str(base_model.path), "--judge-endpoint", served.endpoint]
    before = _requests_served(served.endpoint)
    done = _bonsai(home, "debate", "Homework should be abolished", *engine, "--format", quick_short_judge, "--rounds", "1", "--max-tokens", "12",
                   "--seed", "3", "--store", str(store), "--jsonl")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    verdict = next(e for e in events if e["event"] == "verdict")
    after_debate = _requests_served(served.endpoint)
    # one judge, four readings (two layouts x two labellings), each a probe, and one verdict per layout:
    # all six on the judge's server, none of the debaters'
    per_debate = 6
    assert after_debate - before == per_debate
    assert verdict["confidence"] is not None and all(o["found_labels"] for o in verdict["orders"])  # vLLM returns logprobs
    with TranscriptStore(store, create=False) as s:
        debate = s.get_debate(events[0]["debate_id"])
        assert debate.status == "finished" and debate.engine == "hf" and len(s.turns(debate.debate_id)) == 4

    sweep = write_sweep(tmp_path, name="judged", motions=["Tea beats coffee"], formats=[quick_short_judge], max_tokens=8, concurrency=2)
    done = _bonsai(home, "sweep", str(sweep), *engine, "--store", str(store), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["finished"] == 2
    assert _requests_served(served.endpoint) - after_debate == 2 * per_debate
    with TranscriptStore(store, create=False) as s:
        rows = s.sweep_results("judged")
        assert len(rows) == 2 and all(v and v[-1].confidence is not None for _, v, _ in rows)


@pytest.mark.serve
def test_a_judge_model_the_server_does_not_list(served: Server, base_model: BaseModel, tmp_path: Path) -> None:
    store = tmp_path / "t.sqlite"
    done = _bonsai(tmp_path / "home", "debate", "Tea beats coffee", "--engine", "hf", "--base", str(base_model.path), "--store", str(store),
                   "--judge-endpoint", served.endpoint, "--judge-model", "no-such-model")
    assert done.returncode == 3, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no-such-model" in errors[0] and base_model.name in errors[0], done.stderr
    assert "--judge-model" in done.stderr and "Traceback" not in done.stderr
    assert not store.exists()


@pytest.mark.parametrize("command", [
    ["data", "build", "--persona", "advocate", "--strategy", "best-of-n"],
    ["loop", "--personas", "advocate", "--generations", "1"],
])
def test_unreachable_judge_endpoint_for_data_and_loop(tmp_path: Path, base_model: BaseModel, capsys: pytest.CaptureFixture[str],
                                                      command: list[str], no_debaters_engine: list[object]) -> None:
    home = tmp_path / "home"
    code = main(["--home", str(home), *command, "--base", str(base_model.path), "--judge-endpoint", f"http://127.0.0.1:{_closed_port()}"])
    assert code == 3
    _assert_one_error(capsys, "--judge-endpoint")
    written = [p for p in home.rglob("*") if p.is_file()] if home.exists() else []
    assert not [p for p in written if "loops" in p.parts or "datasets" in p.parts], written


@pytest.mark.engine
def test_judge_on_a_local_base_of_its_own(base_model: BaseModel, quick_short_judge: str, tmp_path: Path) -> None:
    """`--judge-base`: a second in-process engine (transformers here, as the debaters'), the judge's alone."""
    store = tmp_path / "t.sqlite"
    done = _bonsai(tmp_path / "home", "debate", "Tea beats coffee", "--engine", "hf", "--base", str(base_model.path), "--judge-base", str(base_model.path),
                   "--format", quick_short_judge, "--rounds", "1", "--max-tokens", "8", "--seed", "1", "--store", str(store), "--no-color")
    assert done.returncode == 0, done.stderr
    assert "starting the judge's hf engine" in done.stderr and "starting the hf engine" in done.stderr
    with TranscriptStore(store, create=False) as s:
        (debate,) = s.list_debates()
        (verdict,) = s.verdicts(debate.debate_id)
        assert debate.status == "finished" and verdict.confidence is not None and all(o["found_labels"] for o in verdict.orders)
