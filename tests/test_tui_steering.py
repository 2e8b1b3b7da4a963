"""Steering in the debate graph, below the TUI: holding between turns (LangGraph interrupt), moderator
notes, stepping, forking from a checkpoint, and `bonsai debate --resume` of a debate paused in the TUI.

The graph runs on the scripted engine here; prompts are checked with the real SmolLM2 tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakes import FakeEngine

from bonsai.debate.events import DebateEvent
from bonsai.debate.runner import DebateRunner, DebateSpec
from bonsai.errors import BonsaiError, ConfigError
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore

NOTE = "Moderator asks: what does it cost a small school?"


@pytest.fixture
def book() -> PersonaBook:
    return PersonaBook.load()


def kinds(events: list[DebateEvent]) -> list[str]:
    return [e.name for e in events if e.name != "token"]


class Hold:
    """A gate that holds before the given steps (a set the test changes between runs)."""

    def __init__(self, *steps: int) -> None:
        self.steps = set(steps)

    def __call__(self, step: int) -> bool:
        return step in self.steps


async def collect(events) -> list[DebateEvent]:  # type: ignore[no-untyped-def]
    return [ev async for ev in events]


async def test_hold_note_and_go_on(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    engine = FakeEngine()
    gate = Hold(2)
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(engine, store, tmp_path / "ck.sqlite", book, isolated_home, "fake") as runner:
            spec = DebateSpec(motion="Tea beats coffee", format="quick", rounds=1, seed=1)
            first = await collect(runner.run(spec, gate=gate))
            did = first[0].debate_id
            assert kinds(first)[-1] == "paused" and first[-1].step == 2
            assert first[-1].next_speaker == "skeptic" and first[-1].next_team == "B"
            assert store.get_debate(did).status == "interrupted"
            assert [t.turn_index for t in store.turns(did)] == [0, 1]
            calls_before = len(engine.calls)

            # a note while still held: delivered, then held again at the same step (nothing generated)
            second = await collect(runner.resume(did, gate=gate, note=NOTE))
            assert kinds(second) == ["debate_start", "note", "paused"]
            assert next(e for e in second if e.name == "note").text == NOTE
            assert len(engine.calls) == calls_before and store.get_debate(did).status == "interrupted"

            gate.steps.clear()
            third = await collect(runner.resume(did, gate=gate))
            assert kinds(third)[-1] == "debate_end" and third[-1].status == "finished"
        turns = store.turns(did)
        assert [t.turn_index for t in turns] == [0, 1, 2, 3]
        # both debaters read the note as a moderator line in their next prompt
        for t in turns[2:]:
            prompt = t.prompt["text"] if t.prompt["format"] == "text" else "\n".join(m["content"] for m in t.prompt["messages"])
            assert f"Moderator: {NOTE}" in prompt, t.speaker
        for t in turns[:2]:
            assert NOTE not in str(t.prompt)


async def test_note_is_refused_when_not_waiting(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(FakeEngine(fail_on_call=2), store, tmp_path / "ck.sqlite", book, isolated_home, "fake") as runner:
            seen: list[DebateEvent] = []
            with pytest.raises(RuntimeError, match="injected"):
                async for ev in runner.run(DebateSpec(motion="Tea beats coffee", format="quick", rounds=1), gate=Hold()):
                    seen.append(ev)
            with pytest.raises(BonsaiError, match="not waiting"):
                await collect(runner.resume(seen[0].debate_id, note="hello"))


async def test_stepping_holds_after_each_turn(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    """A gate that lets one slot through at a time, as the TUI's step key does."""
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(FakeEngine(), store, tmp_path / "ck.sqlite", book, isolated_home, "fake") as runner:
            until = {"step": 0}
            gate = lambda step: step >= until["step"]  # noqa: E731
            events = await collect(runner.run(DebateSpec(motion="Tea beats coffee", format="quick", rounds=1), gate=gate))
            did = events[0].debate_id
            assert kinds(events) == ["debate_start", "paused"] and store.turns(did) == []
            for step in range(4):
                until["step"] = step + 1
                events = await collect(runner.resume(did, gate=gate))
                assert kinds(events) == ["debate_start", "turn_start", "turn_end", "paused"]
                assert len(store.turns(did)) == step + 1
            # held before the verdict; the last step runs the judge
            assert events[-1].next_speaker == "judge"
            until["step"] = 99
            events = await collect(runner.resume(did, gate=gate))
            assert kinds(events)[-3:] == ["judging", "verdict", "debate_end"]


async def test_cli_resume_finishes_a_debate_paused_in_the_tui(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    store_file, ck = tmp_path / "t.sqlite", tmp_path / "ck.sqlite"
    with TranscriptStore(store_file) as store:
        async with DebateRunner(FakeEngine(), store, ck, book, isolated_home, "fake") as runner:
            events = await collect(runner.run(DebateSpec(motion="Tea beats coffee", format="quick", rounds=1), gate=Hold(1)))
        did = events[0].debate_id
    # a new process, no gate: what `bonsai debate --resume` does
    with TranscriptStore(store_file) as store:
        # a judge that really prefers team A (the fair judge calls a mere label bias a tie)
        async with DebateRunner(FakeEngine(prefer_team="A"), store, ck, book, isolated_home, "fake") as runner:
            events = await collect(runner.resume(did))
        assert events[0].turns_done == 1
        assert events[-1].to_json() == {"event": "debate_end", "debate_id": did, "status": "finished", "winner": "A"}
        assert [t.turn_index for t in store.turns(did)] == [0, 1, 2, 3]


async def test_fork_from_a_checkpoint(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    engine = FakeEngine()
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(engine, store, tmp_path / "ck.sqlite", book, isolated_home, "fake") as runner:
            spec = DebateSpec(motion="Tea beats coffee", format="quick", rounds=2, seed=4, candidates=2, sweep="s1")
            gate = Hold(1, 3)
            did = (await collect(runner.run(spec, gate=gate)))[0].debate_id
            await collect(runner.resume(did, gate=gate, note="first note"))  # before turn 1, then held again
            gate.steps = {3}
            await collect(runner.resume(did, gate=gate))  # runs turns 1, 2; held before 3
            gate.steps = set()
            await collect(runner.resume(did, gate=gate, note="second note"))  # before turn 3, then to the end
            source_turns = store.turns(did)
            assert len(source_turns) == 6 and store.get_debate(did).status == "finished"

            events = await collect(runner.fork(did, 3, gate=Hold()))
        new = events[0].debate_id
        assert new != did and events[0].forked_from == {"debate_id": did, "turn": 3} and events[0].turns_done == 3
        assert kinds(events)[-1] == "debate_end"
        # the fork redid turns 3.. only
        assert [e.turn for e in events if e.name == "turn_start"] == [3, 4, 5]
        forked = store.turns(new)
        assert [t.turn_index for t in forked] == list(range(6))
        for a, b in zip(source_turns[:3], forked[:3], strict=True):
            assert (a.speaker, a.text, a.prompt) == (b.speaker, b.text, b.prompt)
        # the note given before turn 1 is part of the fork's past; the one given before turn 3 is not
        assert "first note" in str(forked[3].prompt) and "second note" not in str(forked[3].prompt)
        assert "second note" in str(source_turns[3].prompt)
        assert len(store.candidates(new)) == 2 * 6  # copied for turns 0-2, sampled anew for 3-5
        record = store.get_debate(new)
        assert record.status == "finished" and record.sweep is None
        assert record.config["forked_from"] == {"debate_id": did, "turn": 3}
        assert store.get_debate(did).status == "finished" and len(store.turns(did)) == 6


async def test_fork_without_checkpoints_rebuilds_from_the_store(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(FakeEngine(), store, tmp_path / "ck.sqlite", book, isolated_home, "fake") as runner:
            did = (await collect(runner.run(DebateSpec(motion="Tea beats coffee", format="quick", rounds=1))))[0].debate_id
        async with DebateRunner(FakeEngine(), store, tmp_path / "other-ck.sqlite", book, isolated_home, "fake") as runner:
            events = await collect(runner.fork(did, 2))
            with pytest.raises(ConfigError, match="cannot fork at turn 9"):
                await collect(runner.fork(did, 9))
        new = events[0].debate_id
        assert kinds(events)[-1] == "debate_end"
        assert [t.answer for t in store.turns(new)[:2]] == [t.answer for t in store.turns(did)[:2]]


def _render(tokenizer: Any, prompt: dict[str, Any]) -> str:
    if prompt["format"] == "text":
        return prompt["text"]
    return tokenizer.apply_chat_template(prompt["messages"], tokenize=False, add_generation_prompt=True)


async def test_prompts_with_notes_only_append(tmp_path: Path, book: PersonaBook, isolated_home: Path, base_model) -> None:  # type: ignore[no-untyped-def]
    """Notes land between turns, so each debater's next prompt still starts with its previous prompt
    and output, as text and as token ids (vLLM's per-adapter prefix cache depends on it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_model.path))
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(FakeEngine(), store, tmp_path / "ck.sqlite", book, isolated_home, "fake") as runner:
            spec = DebateSpec(motion="Tea beats coffee", personas=["advocate", "ronri", "skeptic", "bianlun"], rounds=2)
            gate = Hold(2, 5, 9)
            did = (await collect(runner.run(spec, gate=gate)))[0].debate_id
            for i, step in enumerate(sorted(gate.steps)):
                gate.steps.discard(step)
                await collect(runner.resume(did, gate=gate, note=f"note number {i}"))
        turns = [t for t in store.turns(did) if t.role == "debater"]
    assert all(f"note number {i}" in str([t.prompt for t in turns]) for i in range(3))
    for name in ("advocate", "ronri", "skeptic", "bianlun"):
        mine = [t for t in turns if t.speaker == name]
        assert len(mine) >= 2
        for prev, nxt in zip(mine, mine[1:]):
            before, after = _render(tokenizer, prev.prompt), _render(tokenizer, nxt.prompt)
            assert after.startswith(before + prev.text), name
            ids_before = tokenizer(before, add_special_tokens=False)["input_ids"]
            assert tokenizer(after, add_special_tokens=False)["input_ids"][: len(ids_before)] == ids_before
