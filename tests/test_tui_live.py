"""The live screen driven through Textual's Pilot: the start form, streaming into both columns, the
judge panel, pause / step / moderator note / fork / quit, best-of-N, faults shown as notifications,
resizing and reading without colour.

The scripted engine (``GatedEngine`` lets a test hold every request until it says so) keeps these
fast; test_tui_real.py runs the same screen on the real engines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeEngine

from bonsai.debate.runner import DebateRunner
from bonsai.engine import AdapterRef, Engine, GenerationRequest
from bonsai.errors import EndpointUnreachable, EngineError
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore
from tui.app import BonsaiApp
from tui.options import FormDefaults, TuiOptions
from tui.engines import ReadyEngine
from tui.screens.fork import ForkScreen
from tui.screens.help import HelpScreen
from tui.screens.note import NoteScreen
from tui.screens.start import StartScreen
from tui.textshot import screen_text

MOTION = "Tea beats coffee"
#: a guard against hanging, not a timing assertion
DEADLINE_S = 60.0


class GatedEngine(FakeEngine):
    """The scripted engine, but each request waits until the test lets it through."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.free = False
        self.waiting = 0
        self._gate: asyncio.Semaphore | None = None

    @property
    def gate(self) -> asyncio.Semaphore:
        if self._gate is None:
            self._gate = asyncio.Semaphore(0)
        return self._gate

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self.gate.release()

    def open(self) -> None:
        self.free = True
        self.release(1000)

    async def stream(self, request: GenerationRequest):  # type: ignore[override]
        if not self.free:
            self.waiting += 1
            try:
                await self.gate.acquire()
            finally:
                self.waiting -= 1
        async for ev in super().stream(request):
            yield ev


class GoneEngine(FakeEngine):
    """An endpoint that stops answering from its n-th request until ``back`` is set."""

    def __init__(self, gone_from: int) -> None:
        super().__init__()
        self.gone_from = gone_from
        self.back = False

    async def stream(self, request: GenerationRequest):  # type: ignore[override]
        if not self.back and len(self.calls) + 1 >= self.gone_from:
            self.calls.append(request)
            raise EndpointUnreachable("the endpoint http://127.0.0.1:8000/v1 stopped answering", "start `bonsai serve` again, then resume the debate")
        async for ev in super().stream(request):
            yield ev


class NoEngine:
    """An engine source whose engine never starts."""

    def __init__(self) -> None:
        self.tries = 0

    async def acquire(self, refs: list[AdapterRef | None]) -> tuple[Engine, str]:
        self.tries += 1
        raise EngineError("the vllm engine did not start: not enough memory for the KV cache", "lower --max-model-len")

    async def close(self) -> None:
        pass


def make_app(home: Path, engine: Engine | None = None, *, engines: Any = None, **options: Any) -> BonsaiApp:
    options.setdefault("form", FormDefaults(motion=MOTION, format="quick", rounds=1, seed=2))
    source = engines or ReadyEngine(engine or FakeEngine(), "fake")
    return BonsaiApp(TuiOptions(home=home, **options), engines=source)


def record_notifications(app: BonsaiApp) -> list[str]:
    seen: list[str] = []
    original = app.notify

    def notify(message: str, *args: Any, **kwargs: Any) -> None:
        seen.append(str(message))
        original(message, *args, **kwargs)

    app.notify = notify  # type: ignore[method-assign]
    return seen


async def until(pilot: Any, cond: Callable[[], bool], what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not cond():
        assert loop.time() < deadline, f"gave up waiting for {what}"
        await pilot.pause(0.02)
    await pilot.pause()


async def type_text(pilot: Any, text: str) -> None:
    await pilot.press(*("space" if c == " " else c for c in text))


async def start_from_form(pilot: Any, app: BonsaiApp) -> None:
    await pilot.press("n")
    await until(pilot, lambda: isinstance(app.screen, StartScreen), "the form")
    await pilot.press("ctrl+s")
    await until(pilot, lambda: app.runner is not None and app.runner.debate_id is not None, "the debate to start")


async def test_form_starts_a_debate_that_streams_into_both_columns(isolated_home: Path) -> None:
    engine = FakeEngine(p_a=0.8, prefer_team="A")
    app = make_app(isolated_home, engine, form=FormDefaults(format="quick", rounds=1, seed=2))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, StartScreen), "the form")
        await type_text(pilot, MOTION)
        await pilot.press("enter")
        runner = app.runner
        assert runner is not None
        await until(pilot, lambda: runner.state == "finished", "the verdict")
        did = runner.debate_id
        text = screen_text(app)
        assert f"Motion: {MOTION}" in text
        assert "Team A (for) · advocate" in text and "Team B (against) · skeptic" in text
        assert "✓ opening · advocate · base model" in text and "✓ rebuttal · skeptic · base model" in text
        assert f"answer for {did}-t0-c0" in text and f"answer for {did}-t1-c0" in text
        assert "+ reasoning (3 words)" in text  # skeptic's Alpaca reasoning, folded
        assert f"thinking about {did}" not in text
        assert "Winner: team" in text and "confidence" in text and "█" in text
        assert "✓ finished" in text and "tok/s" in text
        # the columns hold what the store holds
        with TranscriptStore(isolated_home / "transcripts.sqlite", create=False) as store:
            record = store.get_debate(did)
            assert record.status == "finished" and record.motion == MOTION
            assert ("Tie: no side won" if record.winner == "tie" else f"Winner: team {record.winner}") in text
            left = app.live.column("A")
            assert [v.started.speaker for v in left.query("TurnView")] == ["advocate", "advocate"]  # type: ignore[attr-defined]
            assert [v.answer_text for v in app.live.column("B").query("TurnView")] == [t.answer for t in store.turns(did) if t.team == "B"]  # type: ignore[attr-defined]


async def test_form_refuses_bad_input_and_stays_open(isolated_home: Path) -> None:
    app = make_app(isolated_home, form=FormDefaults(format="quick"))
    seen = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, StartScreen), "the form")
        await pilot.press("ctrl+s")  # no motion
        await pilot.pause()
        assert isinstance(app.screen, StartScreen)
        assert any("the motion is empty" in m for m in seen)
        await type_text(pilot, MOTION)
        app.screen.query_one("#rounds").value = "0"  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, StartScreen) and any("rounds" in m for m in seen[1:])
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.live and app.runner is not None and app.runner.debate_id is None


async def test_pause_step_and_go_on(isolated_home: Path) -> None:
    engine = GatedEngine()
    app = make_app(isolated_home, engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await start_from_form(pilot, app)
        runner, store = app.runner, app.store
        assert runner is not None and store is not None
        did = runner.debate_id
        await until(pilot, lambda: engine.waiting == 1, "turn 1")
        await pilot.press("space")
        assert runner.state == "pausing"
        engine.release(1)
        await until(pilot, lambda: runner.state == "paused", "the pause")
        assert store.get_debate(did).status == "interrupted" and len(store.turns(did)) == 1
        assert "❚❚ paused before turn 2 (skeptic, opening)" in screen_text(app)
        assert engine.waiting == 0  # nothing runs while paused

        await pilot.press("s")  # exactly one more turn
        await until(pilot, lambda: engine.waiting == 1, "turn 2")
        engine.release(1)
        await until(pilot, lambda: runner.state == "paused" and len(store.turns(did)) == 2, "the step")
        assert "paused before turn 3 (skeptic, rebuttal)" in screen_text(app)

        await pilot.press("space")
        engine.open()
        await until(pilot, lambda: runner.state == "finished", "the end")
        assert store.get_debate(did).status == "finished" and len(store.turns(did)) == 4


async def test_moderator_note_reaches_the_next_speaker(isolated_home: Path) -> None:
    engine = GatedEngine()
    note = "Please talk about price"
    app = make_app(isolated_home, engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await start_from_form(pilot, app)
        runner = app.runner
        assert runner is not None
        await until(pilot, lambda: engine.waiting == 1, "turn 1")
        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, NoteScreen), "the note form")
        assert runner.state == "pausing"  # the debate will wait for the note
        await type_text(pilot, note)
        await pilot.press("enter")
        engine.release(1)
        await until(pilot, lambda: engine.waiting == 1 and len(engine.calls) == 1, "turn 2 after the note")
        text = screen_text(app)
        assert f"Moderator note (before turn 2): {note}" in text
        assert text.count(f"⚑ moderator note: {note}") == 2  # shown in both columns
        engine.open()
        await until(pilot, lambda: runner.state == "finished", "the end")
    second = engine.calls[1]
    assert f"Moderator: {note}" in str(second.prompt)
    assert note not in str(engine.calls[0].prompt)


async def test_note_cancelled_lets_the_debate_go_on(isolated_home: Path) -> None:
    engine = GatedEngine()
    app = make_app(isolated_home, engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await start_from_form(pilot, app)
        runner = app.runner
        assert runner is not None
        await until(pilot, lambda: engine.waiting == 1, "turn 1")
        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, NoteScreen), "the note form")
        await pilot.press("escape")
        await until(pilot, lambda: runner.state == "running", "running again")
        engine.open()
        await until(pilot, lambda: runner.state == "finished", "the end")
        assert "moderator note" not in screen_text(app)


async def test_fork_from_an_earlier_turn(isolated_home: Path) -> None:
    app = make_app(isolated_home, FakeEngine())
    async with app.run_test(size=(110, 34)) as pilot:
        await start_from_form(pilot, app)
        runner, store = app.runner, app.store
        assert runner is not None and store is not None
        await until(pilot, lambda: runner.state == "finished", "the first debate")
        source = runner.debate_id
        await pilot.press("f")
        await until(pilot, lambda: isinstance(app.screen, ForkScreen), "the fork dialog")
        assert "turn 4 · rebuttal · advocate (team A)" in screen_text(app)
        await pilot.press("up", "enter")  # the highlighted last turn, then one up: turn 3
        await until(pilot, lambda: runner.debate_id != source and runner.state == "paused", "the fork, waiting")
        fork = runner.debate_id
        text = screen_text(app)
        assert f"forked from {source} at turn 3" in text and "paused before turn 3 (skeptic, rebuttal)" in text
        assert f"answer for {source}-t0-c0" in text  # the shared past is on screen
        await pilot.press("space")
        await until(pilot, lambda: runner.state == "finished", "the fork to finish")
        assert f"answer for {fork}-t2-c0" in screen_text(app)
        assert store.get_debate(fork).config["forked_from"] == {"debate_id": source, "turn": 2}
        assert [t.answer for t in store.turns(fork)[:2]] == [t.answer for t in store.turns(source)[:2]]


async def test_quit_mid_turn_keeps_the_debate(isolated_home: Path) -> None:
    engine = GatedEngine()
    app = make_app(isolated_home, engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await start_from_form(pilot, app)
        assert app.runner is not None
        did = app.runner.debate_id
        engine.release(1)
        await until(pilot, lambda: engine.waiting == 1 and len(engine.calls) == 1, "turn 2 in flight")
        await pilot.press("q")
    assert app.return_value == did
    with TranscriptStore(isolated_home / "transcripts.sqlite") as store:
        assert store.get_debate(did).status == "interrupted"
        assert [t.turn_index for t in store.turns(did)] == [0]
        # it goes on where it stopped, in another process or in the CLI
        async with DebateRunner(FakeEngine(), store, isolated_home / "checkpoints.sqlite", PersonaBook.load(), isolated_home, "fake") as runner:
            events = [ev async for ev in runner.resume(did)]
        assert events[-1].status == "finished"
        assert [t.turn_index for t in store.turns(did)] == [0, 1, 2, 3]


async def test_best_of_n_candidates_in_the_judge_panel(isolated_home: Path) -> None:
    app = make_app(isolated_home, FakeEngine(), form=FormDefaults(motion=MOTION, format="quick", rounds=1, candidates=3, seed=1))
    async with app.run_test(size=(120, 40)) as pilot:
        await start_from_form(pilot, app)
        runner, store = app.runner, app.store
        assert runner is not None and store is not None
        await until(pilot, lambda: runner.state in ("finished", "failed"), "the end")
        text = screen_text(app)
        last = [c for c in store.candidates(runner.debate_id) if c.turn_index == 3]
        kept = next(c for c in last if c.chosen)
        assert "best of 3 · turn 4 advocate:" in text
        assert f"#{kept.candidate_index} {kept.score:.2f} (kept)" in text
        assert f"best of 3, kept #{kept.candidate_index}" in text


async def test_engine_that_does_not_start_is_a_notification(isolated_home: Path) -> None:
    source = NoEngine()
    app = make_app(isolated_home, engines=source)
    seen = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, StartScreen), "the form")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: any("did not start" in m for m in seen), "the notification")
        assert any("lower --max-model-len" in m for m in seen)
        assert app.runner is not None and app.runner.state == "idle"
        assert "engine failed" in screen_text(app)
        await pilot.press("question_mark")  # the app still answers
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        await pilot.press("escape")
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, StartScreen), "the form")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: source.tries == 2, "a second try")


async def test_endpoint_gone_mid_debate_then_resumed(isolated_home: Path) -> None:
    engine = GoneEngine(gone_from=3)
    app = make_app(isolated_home, engine)
    seen = record_notifications(app)
    async with app.run_test(size=(120, 34)) as pilot:
        await start_from_form(pilot, app)
        runner, store = app.runner, app.store
        assert runner is not None and store is not None
        did = runner.debate_id
        await until(pilot, lambda: runner.state == "failed", "the failure")
        assert any("stopped answering" in m for m in seen) and any("resume the debate" in m for m in seen)
        assert store.get_debate(did).status == "failed" and len(store.turns(did)) == 2
        assert "✗ failed" in screen_text(app)
        engine.back = True
        await pilot.press("t")
        await until(pilot, lambda: app.screen.id == "browser", "the browser")
        await pilot.press("r")
        await until(pilot, lambda: runner.state == "finished", "the resumed debate")
        assert app.screen is app.live
        assert store.get_debate(did).status == "finished" and len(store.turns(did)) == 4
        assert f"answer for {did}-t0-c0" in screen_text(app)  # the earlier turns came back on screen


async def test_unknown_debate_id_is_a_notification(isolated_home: Path) -> None:
    app = make_app(isolated_home, replay="nope1234")
    seen = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: bool(seen), "the notification")
        assert "No debate 'nope1234'" in seen[0]
        await pilot.press("t")
        await until(pilot, lambda: app.screen.id == "browser", "the browser")


async def test_resizing_during_a_debate(isolated_home: Path) -> None:
    engine = GatedEngine()
    app = make_app(isolated_home, engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await start_from_form(pilot, app)
        engine.release(2)
        await until(pilot, lambda: engine.waiting == 1 and len(engine.calls) == 2, "two turns")
        for size in ((200, 60), (30, 8), (80, 24)):
            await pilot.resize_terminal(*size)
            await pilot.pause()
            assert app.size == size
            assert screen_text(app)
        text = screen_text(app)
        assert "Team A (for)" in text and "Team B (against)" in text
        await pilot.press("n")  # the form fits too
        await until(pilot, lambda: isinstance(app.screen, StartScreen), "the form")
        await pilot.resize_terminal(40, 12)
        await pilot.pause()
        assert "New debate" in screen_text(app)
        await pilot.resize_terminal(80, 24)
        await pilot.press("escape")
        engine.open()
        assert app.runner is not None
        await until(pilot, lambda: app.runner.state == "finished", "the end")  # type: ignore[union-attr]


async def test_readable_without_colour(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With NO_COLOR every state is still spelled out: teams, who speaks, pauses, the winner."""
    monkeypatch.setenv("NO_COLOR", "1")
    engine = GatedEngine(prefer_team="A")
    app = make_app(isolated_home, engine)
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.no_color
        await start_from_form(pilot, app)
        await until(pilot, lambda: engine.waiting == 1, "turn 1")
        await pilot.press("space")
        engine.release(1)
        await until(pilot, lambda: app.runner is not None and app.runner.state == "paused", "the pause")
        text = screen_text(app)
        assert "Team A (for)" in text and "Team B (against)" in text
        assert "✓ opening · advocate" in text and "❚❚ paused before turn 2" in text
        await pilot.press("space")
        engine.open()
        await until(pilot, lambda: app.runner.state == "finished", "the end")  # type: ignore[union-attr]
        text = screen_text(app)
        assert "Winner: team A (advocate)" in text or "Winner: team B (skeptic)" in text
        assert "confidence ███" in text and "░" in text or "confidence ████████████████████" in text


async def test_debate_goes_on_while_other_screens_are_open(isolated_home: Path) -> None:
    engine = GatedEngine(prefer_team="A")
    app = make_app(isolated_home, engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await start_from_form(pilot, app)
        runner = app.runner
        assert runner is not None
        await pilot.press("t")
        await until(pilot, lambda: app.screen.id == "browser", "the browser")
        engine.open()
        await until(pilot, lambda: runner.state == "finished", "the end, seen from the browser")
        await pilot.press("escape", "w")
        await until(pilot, lambda: app.screen.id == "sweeps", "the sweep monitor")
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.live, "back to the live view")
        text = screen_text(app)
        assert "✓ finished" in text and "Winner: team" in text
        assert f"answer for {runner.debate_id}-t3-c0" in text
