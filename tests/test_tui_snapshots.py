"""SVG snapshots of the main screens, compared with the files under tests/__snapshots__/.

The same check as pytest-textual-snapshot's ``snap_compare`` (an SVG from ``App.export_screenshot``),
written out here because that plugin pins syrupy 4.8, which refuses pytest 9. Every input is fixed:
terminal size, debate ids, timestamps (shown in UTC), no timings, no blinking cursor, no toasts.
After an intended change of the UI, refresh them with ``BONSAI_UPDATE_SNAPSHOTS=1 pytest tests/test_tui_snapshots.py``
and look at the new files before committing them.
"""

from __future__ import annotations

import difflib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeEngine
from test_tui_screens import seed_store
from textual.message import Message
from textual.widgets import Input

from tui.app import BonsaiApp
from tui.messages import (
    DebateEnded,
    DebateStarted,
    EngineStatus,
    Judging,
    NoteAdded,
    RunnerState,
    Throughput,
    Token,
    TurnDone,
    TurnStarted,
    Verdict,
)
from tui.options import FormDefaults, TuiOptions
from tui.engines import ReadyEngine
from tui.screens.browser import BrowserScreen
from tui.screens.help import HelpScreen
from tui.screens.start import StartScreen
from tui.screens.sweeps import SweepScreen
from tui.textshot import screen_text

SNAPSHOTS = Path(__file__).parent / "__snapshots__" / "test_tui_snapshots"
UPDATE = os.environ.get("BONSAI_UPDATE_SNAPSHOTS") == "1"
DID = "5a1e0bda7e01"
MOTION = "This house believes that cities should ban private cars from their centres"
SEATS = {"A": ["advocate"], "B": ["skeptic"], "judge": ["judge"], "moderator": ["moderator"]}


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def slot(i: int, kind: str, title: str, speaker: str, team: str) -> dict[str, Any]:
    return {"index": i, "kind": kind, "phase": title.split()[0], "title": title, "round": 1, "speaker": speaker, "team": team,
            "instruction": "", "max_tokens": None}


SCHEDULE = [
    slot(0, "moderator", "opening", "moderator", "none"),
    slot(1, "debater", "opening", "advocate", "A"),
    slot(2, "debater", "opening", "skeptic", "B"),
    slot(3, "moderator", "closing", "moderator", "none"),
    slot(4, "debater", "closing", "advocate", "A"),
    slot(5, "debater", "closing", "skeptic", "B"),
]


def first_half() -> list[Message]:
    mod = "Opening. Speaking in order: advocate (team A), skeptic (team B). Give your opening statement on the motion."
    a1 = "Cars **choke** our centres. Banning them brings:\n\n- cleaner air\n- safer streets\n- room for trees"
    b1 = "The ban hurts those who *cannot* walk or cycle, and shops lose customers."
    return [
        DebateStarted(DID, MOTION, SEATS, "standard", 1, SCHEDULE),
        EngineStatus("ready", "vllm"),
        RunnerState(DID, "running"),
        TurnStarted(DID, 0, "moderator", "none", "moderator", "opening"),
        Token(DID, 0, "none", "moderator", "answer", mod),
        TurnDone(DID, 0, "moderator", "none", "moderator", "opening", mod),
        TurnStarted(DID, 1, "advocate", "A", "debater", "opening", "advocate-v2"),
        Token(DID, 1, "A", "debater", "answer", a1[:30]),
        Token(DID, 1, "A", "debater", "answer", a1[30:]),
        TurnDone(DID, 1, "advocate", "A", "debater", "opening", a1, None, 31, 4.0, "advocate-v2"),
        TurnStarted(DID, 2, "skeptic", "B", "debater", "opening", None, 3),
        Token(DID, 2, "B", "debater", "reasoning", "They assume everyone can walk."),
        Token(DID, 2, "B", "debater", "answer", b1),
        Token(DID, 2, "B", "debater", "answer", "a candidate that is not shown", candidate=1),
        TurnDone(DID, 2, "skeptic", "B", "debater", "opening", b1, "They assume everyone can walk.", 57, 6.0, None, 1,
                 [{"index": 0, "score": 0.41, "answer": "x"}, {"index": 1, "score": 0.58, "answer": b1}, {"index": 2, "score": 0.37, "answer": "y"}]),
        NoteAdded(DID, 3, "Please address deliveries to shops."),
        TurnStarted(DID, 3, "moderator", "none", "moderator", "closing"),
        TurnDone(DID, 3, "moderator", "none", "moderator", "closing", "Closing. Speaking in order: advocate (team A), skeptic (team B)."),
        TurnStarted(DID, 4, "advocate", "A", "debater", "closing", "advocate-v2"),
        Token(DID, 4, "A", "debater", "answer", "Deliveries can come at night, as in"),
        Throughput(DID, 7.5),
    ]


def second_half() -> list[Message]:
    a2 = "Deliveries can come at night, as in many European cities. Clean air is worth it."
    b2 = "Night deliveries cost more, and those costs land on the poorest."
    return [
        TurnDone(DID, 4, "advocate", "A", "debater", "closing", a2, None, 28, 3.5, "advocate-v2"),
        TurnStarted(DID, 5, "skeptic", "B", "debater", "closing", None, 1),
        Token(DID, 5, "B", "debater", "answer", b2),
        TurnDone(DID, 5, "skeptic", "B", "debater", "closing", b2, None, 20, 2.5),
        Throughput(DID, 8.0, final=True),
        Judging(DID, ["judge"]),
        Verdict(DID, "A", 0.68, 0.68, {"A": {"evidence": 6.5, "logic": 7.0, "rebuttal": 6.0, "clarity": 8.0},
                                       "B": {"evidence": 5.0, "logic": 6.0, "rebuttal": 6.5, "clarity": 6.0}},
                "Team A answered the note on deliveries; team B did not show the costs.", True, ["judge"]),
        DebateEnded(DID, "finished", "A"),
        RunnerState(DID, "finished"),
    ]


def make_app(home: Path, **options: Any) -> BonsaiApp:
    options.setdefault("form", FormDefaults(motion="Tea beats coffee", format="quick", rounds=1, seed=1))
    return BonsaiApp(TuiOptions(home=home, **options), engines=ReadyEngine(FakeEngine(), "fake"))


async def settle(pilot: Any) -> None:
    for inp in pilot.app.screen.query(Input):
        inp.cursor_blink = False
    for _ in range(5):
        await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


async def post_all(pilot: Any, messages: list[Message]) -> None:
    for message in messages:
        pilot.app.live.post_message(message)
    await settle(pilot)


def compare(name: str, app: BonsaiApp, tmp_path: Path) -> None:
    svg = app.export_screenshot(title="bonsai")
    path = SNAPSHOTS / f"{name}.svg"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(svg, encoding="utf-8")
        return
    assert path.exists(), f"no snapshot {path}: run BONSAI_UPDATE_SNAPSHOTS=1 pytest {__file__} and check the new file"
    expected = path.read_text(encoding="utf-8")
    if svg != expected:
        actual = tmp_path / f"{name}.svg"
        actual.write_text(svg, encoding="utf-8")
        diff = "\n".join(list(difflib.unified_diff(expected.splitlines(), svg.splitlines(), lineterm="", n=0))[:40])
        pytest.fail(f"{name} differs from {path} (new screenshot: {actual}); the screen now reads:\n{screen_text(app)}\n{diff}")


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
async def test_live_screen_mid_debate(isolated_home: Path, tmp_path: Path, size: tuple[int, int]) -> None:
    app = make_app(isolated_home)
    async with app.run_test(size=size) as pilot:
        await post_all(pilot, first_half())
        text = screen_text(app)
        assert "▶ closing · advocate · advocate-v2" in text and "turn 5/6" in text and "7.5 tok/s" in text
        compare(f"live_mid_debate_{size[0]}x{size[1]}", app, tmp_path)


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
async def test_live_screen_verdict(isolated_home: Path, tmp_path: Path, size: tuple[int, int]) -> None:
    app = make_app(isolated_home)
    async with app.run_test(size=size) as pilot:
        await post_all(pilot, first_half() + second_half())
        text = screen_text(app)
        assert "Winner: team A (advocate)" in text and "✓ finished" in text
        compare(f"live_verdict_{size[0]}x{size[1]}", app, tmp_path)


async def test_start_form(isolated_home: Path, tmp_path: Path) -> None:
    app = make_app(isolated_home)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.screen, StartScreen)
        await settle(pilot)
        compare("start_form_80x24", app, tmp_path)


async def test_transcript_browser(isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, utc: None) -> None:
    monkeypatch.chdir(isolated_home)
    seed_store(isolated_home / "transcripts.sqlite")
    app = make_app(isolated_home, store=Path("transcripts.sqlite"))  # a relative path: the title shows no temp folder
    async with app.run_test(size=(120, 24)) as pilot:
        await pilot.press("t")
        await pilot.pause()
        assert isinstance(app.screen, BrowserScreen)
        await settle(pilot)
        assert "2023-11-14 22:13" in screen_text(app)
        compare("transcripts_120x24", app, tmp_path)


async def test_sweep_monitor(isolated_home: Path, tmp_path: Path) -> None:
    seed_store(isolated_home / "transcripts.sqlite")
    app = make_app(isolated_home, sweep="s1")
    async with app.run_test(size=(100, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, SweepScreen)
        await settle(pilot)
        compare("sweeps_100x24", app, tmp_path)


async def test_help_screen(isolated_home: Path, tmp_path: Path) -> None:
    app = make_app(isolated_home)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await settle(pilot)
        compare("help_100x30", app, tmp_path)
