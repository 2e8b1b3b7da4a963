"""Typed debate events: their JSON form is the `--jsonl` wire format, and a stored debate rebuilds them.

The same events run on the real engines in test_debate_real.py and test_engine_openai.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeEngine

from bonsai.debate import events as ev
from bonsai.debate.runner import DebateRunner, DebateSpec
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore

#: the keys (in order) every event printed before the events were typed: scripts read these
WIRE_KEYS = {
    "debate_start": ["event", "debate_id", "motion", "seats", "format", "rounds", "schedule", "resumed"],
    "turn_start": ["event", "debate_id", "turn", "speaker", "team", "phase", "role", "candidates", "adapter"],
    "token": ["event", "debate_id", "turn", "speaker", "team", "phase", "role", "kind", "text", "candidate"],
    "turn_end": ["event", "debate_id", "turn", "speaker", "team", "role", "phase", "answer", "reasoning", "output_tokens", "latency_s",
                 "adapter", "chosen", "candidates"],
    "judging": ["event", "debate_id", "judges"],
    "verdict": ["event", "debate_id", "judge", "winner", "prob_a", "confidence", "scores", "rationale", "parsed", "orders", "created_at", "tie_band", "output_tokens",
                "judges"],
    "debate_end": ["event", "debate_id", "status", "winner"],
}


async def _debate(tmp_path: Path, home: Path, spec: DebateSpec) -> tuple[TranscriptStore, list[ev.DebateEvent]]:
    store = TranscriptStore(tmp_path / "t.sqlite")
    async with DebateRunner(FakeEngine(p_a=0.7), store, tmp_path / "ck.sqlite", PersonaBook.load(), home, "fake") as runner:
        events = [e async for e in runner.run(spec)]
    return store, events


async def test_json_form_keeps_the_wire_format(tmp_path: Path, isolated_home: Path) -> None:
    store, events = await _debate(tmp_path, isolated_home, DebateSpec(motion="Tea beats coffee", format="quick", rounds=1, candidates=2, seed=1))
    with store:
        for e in events:
            data = e.to_json()
            keys = list(data)
            if e.name == "turn_start" and e.role == "moderator":
                assert keys == WIRE_KEYS["turn_start"][:-1]  # a moderator turn never named an adapter
            elif e.name == "turn_end" and e.role == "moderator":
                assert keys == [k for k in WIRE_KEYS["turn_end"] if k != "chosen"]
            else:
                assert keys == WIRE_KEYS[e.name], e.name
            assert data["event"] == e.name and data["debate_id"] == events[0].debate_id
        verdict = next(e for e in events if isinstance(e, ev.Verdict))
        assert verdict.to_json()["judges"][0]["judge"] == "judge" and verdict.winner == store.get_debate(verdict.debate_id).winner


async def test_rebuilt_from_the_store_as_streamed(tmp_path: Path, isolated_home: Path) -> None:
    spec = DebateSpec(motion="Tea beats coffee", personas=["advocate", "ronri", "skeptic", "bianlun"], format="quick", rounds=1, candidates=2, seed=1)
    store, live = await _debate(tmp_path, isolated_home, spec)
    with store:
        did = live[0].debate_id
        stored = ev.events_from_store(store, did, schedule=live[0].schedule)

        def shape(events: list[ev.DebateEvent]) -> list[tuple[str, ...]]:
            return [(e.name, str(getattr(e, "turn", ""))) for e in events if not isinstance(e, ev.Token)]

        assert shape(stored) == shape(live)
        start = stored[0]
        assert isinstance(start, ev.DebateStart) and start.turns_done == len(store.turns(did))
        assert (start.motion, start.seats, start.format, start.rounds, start.schedule) == (
            live[0].motion, live[0].seats, live[0].format, live[0].rounds, live[0].schedule)
        keep = ("turn", "speaker", "team", "role", "phase", "answer", "reasoning", "adapter", "chosen", "candidates")
        live_ends = [e for e in live if isinstance(e, ev.TurnEnd)]
        stored_ends = [e for e in stored if isinstance(e, ev.TurnEnd)]
        assert [{k: getattr(e, k) for k in keep} for e in stored_ends] == [{k: getattr(e, k) for k in keep} for e in live_ends]
        assert any(len(e.candidates) == 2 for e in stored_ends)
        # the text of each turn comes back as tokens: reasoning apart, then the answer
        ronri = next(e for e in stored_ends if e.speaker == "ronri")
        tokens = [e for e in stored if isinstance(e, ev.Token) and e.turn == ronri.turn]
        assert [(t.kind, t.text) for t in tokens] == [("reasoning", ronri.reasoning), ("answer", ronri.answer)]
        live_verdict = next(e for e in live if isinstance(e, ev.Verdict))
        stored_verdict = next(e for e in stored if isinstance(e, ev.Verdict))
        assert stored_verdict.to_json() == live_verdict.to_json()
        assert stored[-1] == ev.DebateEnd(did, "finished", live[-1].winner)
        # a fork's inherited turns: only those before the cut, no verdict
        first = ev.events_from_store(store, did, below=2, final=False)
        assert {e.turn for e in first if isinstance(e, ev.TurnEnd)} == {0, 1} and not any(isinstance(e, ev.Verdict) for e in first)


def test_events_are_frozen() -> None:
    end = ev.DebateEnd("d1", "finished", "A")
    with pytest.raises(AttributeError):
        end.status = "failed"  # type: ignore[misc]
