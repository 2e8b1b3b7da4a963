"""The other screens through Textual's Pilot: the transcript browser (filters, replay, resume, fork),
the sweep monitor (progress and win rates, refreshed live), help, the command palette, an empty store.

``seed_store`` writes a small, fixed set of debates (also used by the SVG snapshots).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fakes import FakeEngine

from bonsai.store.records import DebateRecord, TurnRecord, VerdictRecord
from bonsai.store.transcripts import TranscriptStore
from tui.app import BonsaiApp
from tui.options import FormDefaults, TuiOptions
from tui.engines import ReadyEngine
from tui.screens.browser import BrowserScreen
from tui.screens.help import HelpScreen
from tui.screens.sweeps import SweepScreen
from tui.sweep_stats import summarize
from tui.textshot import screen_text

T0 = 1_700_000_000.0
DEADLINE_S = 60.0

#: id, motion, team A, team B, status, winner, sweep
DEBATES = [
    ("aaaa00000001", "Cities should ban private cars from their centres", "advocate", "skeptic", "finished", "A", "s1"),
    ("bbbb00000002", "Homework should be abolished", "ronri", "bianlun", "finished", "B", "s1"),
    ("cccc00000003", "Tea beats coffee", "advocate", "bianlun", "interrupted", None, None),
    ("dddd00000004", "Remote work is better than office work", "ronri", "skeptic", "running", None, "s1"),
]


def turn(debate_id: str, i: int, speaker: str, team: str, phase: str, answer: str, reasoning: str | None = None) -> TurnRecord:
    return TurnRecord(
        debate_id=debate_id, turn_index=i, phase=phase, round=1, speaker=speaker, team=team, role="debater",
        text=answer, answer=answer, reasoning=reasoning, adapter_name=f"{speaker}-v1" if speaker == "advocate" else None,
        adapter_hash=None, base_model="smollm2-135m-instruct", prompt_tokens=100 + i, output_tokens=20 + i, latency_s=2.0,
        first_token_s=0.5, sampling={"temperature": 0.7}, seed=1, finish_reason="stop", prompt=None, created_at=T0 + i,
    )


def seed_store(path: Path) -> None:
    with TranscriptStore(path) as store:
        for n, (did, motion, a, b, status, winner, sweep) in enumerate(DEBATES):
            spec = {"motion": motion, "personas": [a, b, "judge"], "format": "quick", "rounds": 1, "candidates": 1,
                    "seed": 1, "max_tokens": 16, "sweep": sweep, "adapters": None}
            store.create_debate(DebateRecord(
                debate_id=did, motion=motion, format="quick", rounds=1, base_model="smollm2-135m-instruct", engine="vllm",
                seats={"A": [a], "B": [b], "judge": ["judge"], "moderator": []}, seed=1, candidates=1,
                created_at=T0 + 600 * n, status="running", sweep=sweep, config={"spec": spec},
            ))
            turns = [
                turn(did, 0, a, "A", "opening", f"**{a}** opens: {motion.lower()} is right because it is *cheaper*."),
                turn(did, 1, b, "B", "opening", f"{b} opens against: the costs are unproven.", reasoning="Find the weak assumption."),
            ]
            if status == "finished":
                turns += [
                    turn(did, 2, b, "B", "rebuttal", f"{b} rebuts: no evidence was given."),
                    turn(did, 3, a, "A", "rebuttal", f"{a} rebuts: the evidence is in every city."),
                ]
            for t in turns:
                store.record_turn(t)
            if status == "finished":
                assert winner is not None
                prob_a = 0.72 if winner == "A" else 0.31
                store.record_verdict(VerdictRecord(
                    debate_id=did, judge="judge", winner=winner, prob_a=prob_a, confidence=max(prob_a, 1 - prob_a),
                    scores={"A": {"logic": 7.0, "rebuttal": 6.0}, "B": {"logic": 5.0, "rebuttal": 6.5}},
                    rationale=f"Team {winner} argued more clearly.", parsed=True, orders=[], created_at=T0 + 600 * n + 30,
                ))
            if status != "running":
                store.set_status(did, status, winner=winner)


def make_app(home: Path, **options: Any) -> BonsaiApp:
    options.setdefault("form", FormDefaults(motion="Tea beats coffee", format="quick", rounds=1))
    return BonsaiApp(TuiOptions(home=home, **options), engines=ReadyEngine(FakeEngine(), "fake"))


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


def table_ids(app: BonsaiApp) -> list[str]:
    screen = app.screen
    assert isinstance(screen, BrowserScreen)
    return [d.debate_id for d in screen.rows]


async def test_browser_lists_filters_and_replays(isolated_home: Path) -> None:
    seed_store(isolated_home / "transcripts.sqlite")
    app = make_app(isolated_home)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, BrowserScreen), "the browser")
        assert table_ids(app) == [d[0] for d in reversed(DEBATES)]  # newest first
        assert "4 debates" in screen_text(app)

        await pilot.click("#persona")
        await pilot.press(*"ronri")
        await pilot.pause()
        assert table_ids(app) == ["dddd00000004", "bbbb00000002"]
        await pilot.press(*("backspace",) * 5)
        await pilot.click("#sweep")
        await pilot.press("s", "1")
        await pilot.pause()
        assert table_ids(app) == ["dddd00000004", "bbbb00000002", "aaaa00000001"]
        # the winner filter, through its drop-down
        await pilot.click("#winner")
        await pilot.press("down", "enter")
        await pilot.pause()
        assert table_ids(app) == ["aaaa00000001"]
        await pilot.click("#sweep")
        await pilot.press("backspace", "backspace", "x")
        await pilot.pause()
        assert table_ids(app) == [] and "No debate matches these filters." in screen_text(app)
        await pilot.press("backspace")
        await pilot.pause()

        # replay the highlighted debate in the live view
        app.screen.query_one("#debates").focus()
        await pilot.press("enter")
        await until(pilot, lambda: app.screen is app.live and app.runner is not None and app.runner.state == "finished", "the replay")
        text = screen_text(app)
        assert "Motion: Cities should ban private cars from their centres" in text
        assert "Team A (for) · advocate" in text and "Team B (against) · skeptic" in text
        assert "advocate opens" in text and "skeptic rebuts: no evidence was given." in text
        assert "✓ opening · advocate · advocate-v1 · 20 tok" in text
        assert "Winner: team A (advocate)" in text and "0.72" in text and "Team A argued more clearly." in text
        assert "↻" not in text and "✓ finished" in text


async def test_browser_resumes_an_unfinished_debate(isolated_home: Path) -> None:
    seed_store(isolated_home / "transcripts.sqlite")
    app = make_app(isolated_home)
    seen = record_notifications(app)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, BrowserScreen), "the browser")
        await pilot.press("ctrl+end")  # the oldest: a finished debate cannot be resumed
        await pilot.press("r")
        await pilot.pause()
        assert any("has finished" in m for m in seen) and isinstance(app.screen, BrowserScreen)
        await pilot.press("up", "up", "r")  # cccc00000003, interrupted
        runner = app.runner
        assert runner is not None
        await until(pilot, lambda: runner.state == "finished", "the resumed debate")
        assert runner.debate_id == "cccc00000003" and app.screen is app.live
        assert app.store is not None and app.store.get_debate("cccc00000003").status == "finished"


async def test_resume_is_refused_while_another_process_holds_the_debate(isolated_home: Path) -> None:
    """The TUI takes the same lock as `bonsai debate --resume`: refused while another holder has it, held
    while the TUI has the debate, let go when the app closes."""
    from bonsai.errors import LockHeld
    from bonsai.locks import debate_lock

    seed_store(isolated_home / "transcripts.sqlite")
    app = make_app(isolated_home)
    seen = record_notifications(app)
    other = debate_lock(isolated_home, "cccc00000003").acquire()  # as another process would (flock is per open file)
    try:
        async with app.run_test(size=(120, 30)) as pilot:
            await pilot.press("t")
            await until(pilot, lambda: isinstance(app.screen, BrowserScreen), "the browser")
            await pilot.press("ctrl+end", "up", "up", "r")  # cccc00000003, interrupted
            await until(pilot, lambda: any("in use by another bonsai process" in m for m in seen) or "in use by another" in screen_text(app), "the refusal")
            assert app.store is not None and app.store.get_debate("cccc00000003").status == "interrupted"
            other.release()
            runner = app.runner
            assert runner is not None
            await runner.resume("cccc00000003")
            await until(pilot, lambda: runner.state == "finished", "the resumed debate")
            with pytest.raises(LockHeld, match="in use by another bonsai process"):
                debate_lock(isolated_home, "cccc00000003").acquire()  # the TUI holds it now
    finally:
        other.release()
    debate_lock(isolated_home, "cccc00000003").acquire().release()  # closed app: free again


async def test_browser_forks_a_stored_debate(isolated_home: Path) -> None:
    seed_store(isolated_home / "transcripts.sqlite")
    app = make_app(isolated_home)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, BrowserScreen), "the browser")
        await pilot.press("ctrl+end", "f")  # aaaa00000001: no checkpoint here, so the store's turns are the past
        await until(pilot, lambda: app.screen.__class__.__name__ == "ForkScreen", "the fork dialog")
        await pilot.press("enter")  # the last turn: redo the final rebuttal
        runner = app.runner
        assert runner is not None
        await until(pilot, lambda: runner.state == "paused", "the fork, waiting")
        await pilot.press("space")
        await until(pilot, lambda: runner.state == "finished", "the fork to finish")
        assert app.store is not None
        fork = app.store.get_debate(runner.debate_id)  # type: ignore[arg-type]
        assert fork.config["forked_from"] == {"debate_id": "aaaa00000001", "turn": 3}
        assert "skeptic rebuts: no evidence was given." in screen_text(app)


async def test_empty_store(isolated_home: Path) -> None:
    app = make_app(isolated_home)
    seen = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, BrowserScreen), "the browser")
        assert any("has no debates yet" in m for m in seen)
        assert "No debates yet: press n to start one." in screen_text(app)
        await pilot.press("r")  # nothing selected: a warning, no crash
        await pilot.press("escape")
        await pilot.press("w")
        await until(pilot, lambda: isinstance(app.screen, SweepScreen), "the sweep monitor")
        assert any("No sweeps in the store yet" in m for m in seen)
        assert "No sweeps yet." in screen_text(app)
        await pilot.press("escape")
        await pilot.press("space")  # no debate to pause
        await pilot.press("f")
        assert sum("No debate is running" in m for m in seen) == 1 and any("fork it" in m for m in seen)
        assert app.screen is app.live


async def test_sweep_monitor_progress_and_win_rates_refresh(isolated_home: Path) -> None:
    store_file = isolated_home / "transcripts.sqlite"
    seed_store(store_file)
    app = make_app(isolated_home, sweep="s1")
    async with app.run_test(size=(110, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, SweepScreen), "the sweep monitor")
        text = screen_text(app)
        assert "s1: 2/3 debates finished (1 running)" in text
        rows = re.findall(r"(advocate|bianlun|ronri|skeptic)\s+([AB])\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+%)", text)
        assert rows == [
            ("advocate", "A", "1", "1", "0", "100%"),
            ("bianlun", "B", "1", "1", "0", "100%"),
            ("ronri", "A", "1", "0", "1", "0%"),
            ("skeptic", "B", "1", "0", "1", "0%"),
        ]
        # another process finishes the running debate: the monitor picks it up by itself
        with TranscriptStore(store_file) as other:
            other.set_status("dddd00000004", "finished", winner="B")
        await until(pilot, lambda: "s1: 3/3 debates finished" in screen_text(app), "the refresh")
        assert "skeptic" in screen_text(app)


def test_summary_counts_only_finished_debates() -> None:
    from bonsai.store.records import DebateRecord as R

    def rec(did: str, status: str, winner: str | None, sweep: str = "x") -> R:
        return R(did, "m", "quick", 1, "b", "vllm", {"A": ["p", "q"], "B": ["r"]}, None, 1, 0.0, status, winner, None, sweep)

    s = summarize("x", [rec("1", "finished", "A"), rec("2", "finished", "B"), rec("3", "failed", None), rec("4", "finished", "A", "y")])
    assert (s.total, s.finished, s.statuses["failed"]) == (3, 2, 1)
    assert [(r.persona, r.played, r.wins) for r in s.personas] == [("p", 2, 1), ("q", 2, 1), ("r", 2, 1)]


async def test_help_screen_and_command_palette(isolated_home: Path) -> None:
    seed_store(isolated_home / "transcripts.sqlite")
    app = make_app(isolated_home)
    async with app.run_test(size=(100, 30)) as pilot:
        footer = screen_text(app).splitlines()[-1]
        for key in ("space Pause/Go", "s Step", "m Note", "f Fork", "n New", "t Transcripts", "q Quit"):
            assert key in footer
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        assert "moderator note" in screen_text(app)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.live, "back")
        await pilot.press("f1")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "help by F1")
        await pilot.press("q")  # closes help, does not quit
        await until(pilot, lambda: app.screen is app.live, "back")

        await pilot.press("ctrl+p")
        await until(pilot, lambda: app.screen.__class__.__name__ == "CommandPalette", "the palette")
        await pilot.press(*"Sweep monitor")
        await until(pilot, lambda: "Progress and win rates" in screen_text(app), "the command found")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, SweepScreen), "the sweep monitor from the palette")


async def test_replay_resume_and_sweep_from_the_command_line_options(isolated_home: Path) -> None:
    seed_store(isolated_home / "transcripts.sqlite")
    app = make_app(isolated_home, replay="bbbb")  # a unique prefix is enough
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.runner is not None and app.runner.state == "finished", "the replay")
        assert "Winner: team B (bianlun)" in screen_text(app) and "tok/s" in screen_text(app)
    app = make_app(isolated_home, resume="cccc00000003")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.runner is not None and app.runner.state == "finished", "the resumed debate")
        assert app.runner is not None and app.runner.debate_id == "cccc00000003"
    app = make_app(isolated_home, sweep="nope")
    seen = record_notifications(app)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, SweepScreen), "the monitor")
        assert any("No sweep called 'nope'" in m for m in seen)
        assert "s1:" in screen_text(app)  # it shows the sweeps there are
