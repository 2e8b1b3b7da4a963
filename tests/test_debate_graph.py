"""Graph logic on a scripted engine: routing, storage, best-of-N bookkeeping, resume after a failure.

The same flows run on the real vLLM engine in test_debate_real.py.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from fakes import FakeEngine

from bonsai.debate.runner import DebateRunner, DebateSpec
from bonsai.debate.events import DebateEvent
from bonsai.errors import PromptTooLong
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore


async def run_all(runner: DebateRunner, spec: DebateSpec) -> list[DebateEvent]:
    return [ev async for ev in runner.run(spec)]


@pytest.fixture
def book() -> PersonaBook:
    return PersonaBook.load()


async def test_full_debate_lands_in_store(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    engine = FakeEngine(p_a=0.7)
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(engine, store, tmp_path / "ck.sqlite", book, isolated_home, "fake") as runner:
            spec = DebateSpec(motion="Tea beats coffee", personas=["advocate", "ronri", "skeptic", "bianlun"], rounds=2, seed=1)
            events = await run_all(runner, spec)
        debate_id = events[0].debate_id
        kinds = [e.name for e in events]
        assert kinds[0] == "debate_start" and kinds[-1] == "debate_end"
        assert "verdict" in kinds
        rec = store.get_debate(debate_id)
        # a judge that only prefers the label "A" has no preference between the sides: a tie
        assert rec.status == "finished" and rec.winner == "tie"
        turns = store.turns(debate_id)
        # standard format, 2 rounds: 4 phases x (moderator + 2 debaters)
        assert len(turns) == 12
        assert [t.turn_index for t in turns] == list(range(12))
        debaters = [t for t in turns if t.role == "debater"]
        # team members alternate within a team
        assert [t.speaker for t in debaters if t.team == "A"] == ["advocate", "ronri"] * 2
        # reasoning is split off; opponents only see answers
        ronri = next(t for t in debaters if t.speaker == "ronri")
        assert ronri.reasoning and ronri.reasoning.startswith("why") and ronri.answer.startswith("answer for")
        skeptic = next(t for t in debaters if t.speaker == "skeptic")
        assert skeptic.prompt["format"] == "text" and "### Instruction:" in skeptic.prompt["text"]
        for req in engine.calls:  # nobody is shown another speaker's reasoning
            shown = [m.content for m in req.prompt.messages if m.role == "user"] if hasattr(req.prompt, "messages") else [req.prompt.text]
            assert not any(f"why {debate_id}" in s for s in shown), (req.request_id, shown)
        verdicts = store.verdicts(debate_id)
        assert len(verdicts) == 1 and verdicts[0].parsed
        assert verdicts[0].prob_a == pytest.approx(0.5)  # label bias cancels: P(label A)=0.7 in both orders
        assert verdicts[0].winner == "tie" and verdicts[0].tie_band == pytest.approx(0.05)
        token_events = [e for e in events if e.name == "token"]
        assert {e.kind for e in token_events} == {"reasoning", "answer"}
        assert all({"debate_id", "turn", "speaker", "team", "kind"} <= e.to_json().keys() for e in token_events)


async def test_a_real_preference_wins_and_ties_flow_to_the_store(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    """A judge that prefers team B whatever its label or reading position: B wins, in the record and the
    event; the same preference inside the format's tie band is a tie."""
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(FakeEngine(p_a=0.8, prefer_team="B"), store, tmp_path / "ck.sqlite", book, isolated_home, "fake") as runner:
            events = await run_all(runner, DebateSpec(motion="Tea beats coffee", format="quick", rounds=1, seed=1))
        verdict = next(e for e in events if e.name == "verdict").to_json()
        assert verdict["winner"] == "B" and verdict["prob_a"] == pytest.approx(0.2) and verdict["tie_band"] == pytest.approx(0.05)
        assert len(verdict["orders"]) == 4 and {(o["layout"], o["order"]) for o in verdict["orders"]} == {
            (layout, order) for layout in ("spoken", "mirrored") for order in ("AB", "BA")
        }
        assert store.get_debate(events[0].debate_id).winner == "B"
        async with DebateRunner(FakeEngine(p_a=0.53, prefer_team="B"), store, tmp_path / "ck.sqlite", book, isolated_home, "fake") as runner:
            events = await run_all(runner, DebateSpec(motion="Tea beats coffee", format="quick", rounds=1, seed=2))
        assert [e.winner for e in events if e.name in ("verdict", "debate_end")] == ["tie", "tie"]
        assert store.get_debate(events[0].debate_id).winner == "tie"


async def test_best_of_n_stores_every_candidate(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    engine = FakeEngine()
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(engine, store, tmp_path / "ck.sqlite", book, isolated_home, "fake") as runner:
            events = await run_all(runner, DebateSpec(motion="Cats over dogs", format="quick", rounds=1, candidates=3, seed=3))
        debate_id = events[0].debate_id
        cands = store.candidates(debate_id)
        turns = [t for t in store.turns(debate_id) if t.role == "debater"]
        assert len(cands) == 3 * len(turns)
        for t in turns:
            mine = [c for c in cands if c.turn_index == t.turn_index]
            assert sum(c.chosen for c in mine) == 1
            assert all(0.0 <= c.score <= 1.0 for c in mine)
            assert next(c for c in mine if c.chosen).answer == t.answer
        assert len({c.seed for c in cands}) == len(cands)  # distinct seeds per candidate


async def test_resume_after_engine_failure_finishes_exactly_once(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    store_path, ck = tmp_path / "t.sqlite", tmp_path / "ck.sqlite"
    spec = DebateSpec(motion="Remote work is better", format="quick", rounds=2, seed=5)
    with TranscriptStore(store_path) as store:
        async with DebateRunner(FakeEngine(fail_on_call=4), store, ck, book, isolated_home, "fake") as runner:
            seen: list[DebateEvent] = []
            with pytest.raises(RuntimeError, match="injected"):
                async for ev in runner.run(spec):
                    seen.append(ev)
        debate_id = seen[0].debate_id
        assert store.get_debate(debate_id).status == "failed"
        assert len(store.turns(debate_id)) == 3
    with TranscriptStore(store_path) as store:
        async with DebateRunner(FakeEngine(), store, ck, book, isolated_home, "fake") as runner:
            events = [ev async for ev in runner.resume(debate_id)]
        assert events[0].resumed and events[0].turns_done == 3
        turns = store.turns(debate_id)
        assert [t.turn_index for t in turns] == list(range(6))
        assert store.get_debate(debate_id).status == "finished"
        assert len(store.verdicts(debate_id)) == 1


async def test_motion_too_long_writes_nothing(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    engine = FakeEngine(max_model_len=300)
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(engine, store, tmp_path / "ck.sqlite", book, isolated_home, "fake") as runner:
            with pytest.raises(PromptTooLong, match="too long"):
                await run_all(runner, DebateSpec(motion="word " * 199, format="quick", rounds=1))
        assert store.list_debates() == []


def test_empty_motion_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        DebateSpec(motion="   ")


async def test_consumer_that_stops_reading_leaves_a_resumable_debate(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    store_path, ck = tmp_path / "t.sqlite", tmp_path / "ck.sqlite"
    with TranscriptStore(store_path) as store:
        async with DebateRunner(FakeEngine(), store, ck, book, isolated_home, "fake") as runner:
            gen = runner.run(DebateSpec(motion="Trains beat planes", format="quick", rounds=1, seed=2))
            first = await gen.__anext__()
            while (await gen.__anext__()).name != "turn_end":
                pass
            await gen.aclose()
            debate_id = first.debate_id
            assert store.get_debate(debate_id).status == "interrupted"
        # resumed by a fresh runner, as `bonsai debate --resume` does (see the closing note on same-runner resume)
        async with DebateRunner(FakeEngine(), store, ck, book, isolated_home, "fake") as runner:
            events = [ev async for ev in runner.resume(debate_id)]
        assert events[-1].status == "finished"
        assert [t.turn_index for t in store.turns(debate_id)] == [0, 1, 2, 3]


async def test_stream_closed_right_after_a_turn_resumes_to_the_end(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    """A consumer that stops reading at a turn_end (inside the node, its turn already stored) leaves a
    checkpoint with nothing scheduled; a fresh runner must still finish the debate, each turn once."""
    spec = DebateSpec(motion="Tea beats coffee", format="quick", rounds=1, seed=3)
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(FakeEngine(), store, tmp_path / "ck.sqlite", book, isolated_home, "fake") as runner:
            async with contextlib.aclosing(runner.run(spec, stream_tokens=False)) as events:
                async for ev in events:
                    if ev.name == "turn_end":
                        debate_id = ev.debate_id
                        break
        async with DebateRunner(FakeEngine(), store, tmp_path / "ck.sqlite", book, isolated_home, "fake") as runner:
            events = [ev async for ev in runner.resume(debate_id, stream_tokens=False)]
        assert events[-1].name == "debate_end" and events[-1].status == "finished"
        turns = store.turns(debate_id)
        assert [t.turn_index for t in turns] == list(range(len(turns))) and len(turns) == 4
        assert not [e for e in events if e.name == "token"]
