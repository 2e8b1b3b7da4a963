"""The judge on the real stack (issue 11, part 8): the same model on both sides must not hand side A the
win. The old judge (speaking order only, no ties) gave side A 24 of 24 such debates on this model
(docs/benchmarks.md); a Wilson interval over n debates that side A all won excludes 50% from n = 4 on,
so this test fails on a judge that still reads position or seat."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bonsai.debate.runner import DebateRunner, DebateSpec
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore
from bonsai.stats import wilson_interval

pytestmark = [pytest.mark.slow, pytest.mark.engine]

MOTIONS = ("Cities should ban private cars from their centres", "Homework does more harm than good", "Voting should be compulsory")


async def test_same_model_on_both_sides_gives_side_a_half(vllm_engine, base_model, quick_short_judge: str, tmp_path: Path, isolated_home: Path) -> None:
    specs = [
        DebateSpec(motion=m, personas=["advocate", "skeptic", "judge"], format=quick_short_judge, rounds=1, seed=seed, max_tokens=24,
                   adapters={"advocate": None, "skeptic": None})
        for m in MOTIONS
        for seed in (0, 1)
    ]
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(vllm_engine, store, tmp_path / "ck.sqlite", PersonaBook.load(), isolated_home, base_model.name) as runner:

            async def one(spec: DebateSpec) -> str:
                events = [ev async for ev in runner.run(spec)]
                assert events[-1].status == "finished", events[-1]
                return events[0].debate_id

            ids = await asyncio.gather(*(one(s) for s in specs))
        verdicts = [store.verdicts(i)[-1] for i in ids]
        winners = [store.get_debate(i).winner for i in ids]
    for v in verdicts:
        # four readings, each probe found the labels, and both reading orders are there
        assert len(v.orders) == 4 and all(o["found_labels"] for o in v.orders)
        assert sorted((o["layout"], o["order"]) for o in v.orders) == [("mirrored", "AB"), ("mirrored", "BA"), ("spoken", "AB"), ("spoken", "BA")]
        assert v.tie_band == 0.05 and v.winner in ("A", "B", "tie")
    assert winners == [v.winner for v in verdicts]
    points = sum(1.0 if w == "A" else 0.5 if w == "tie" else 0.0 for w in winners)
    low, high = wilson_interval(points, len(winners))
    assert low < 0.5 < high, f"side A scored {points}/{len(winners)} ({winners}): interval {low:.2f}-{high:.2f} excludes 50%"
