"""Terminal escape sequences in stored or generated text never reach the terminal: `bonsai transcripts
list/show`, the debate printer, and the TUI (browser and replay) all show the words without them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from test_tui_screens import make_app, until
from test_transcripts_cli import fill

from bonsai.cli.debate_cmd import Printer
from bonsai.cli.main import main
from bonsai.debate.events import DebateStart, Token, TurnEnd, TurnStart, Verdict
from bonsai.store.records import VerdictRecord
from bonsai.store import TranscriptStore
from bonsai.store.records import TurnRecord, VerdictRecord
from bonsai.text import printable, printable_all
from tui.screens.browser import BrowserScreen
from tui.textshot import screen_text

RETITLE = "\x1b]0;pwned\x07"  # OSC 0: sets the terminal's title
CLEAR = "\x1b[2J\x1b[H"  # CSI: clears the screen, cursor home
HYPERLINK = "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\"
EIGHT_BIT = "\x9b31m"  # an 8-bit CSI
EVIL = "\x00\x07\x08\x7f\x85"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (f"a{RETITLE}b", "ab"),
        (f"x{CLEAR}y", "xy"),
        (HYPERLINK, "click"),
        (f"{EIGHT_BIT}red", "red"),
        (f"z{EVIL}z", "zz"),
        ("lines\nand\ttabs stay", "lines\nand\ttabs stay"),
        ("crlf\r\nends", "crlf\nends"),
        ("over\rwrite", "overwrite"),
        ("日本語と中文, émigré, \u200b", "日本語と中文, émigré, \u200b"),
        ("cut at the end\x1b", "cut at the end"),
        ("\x1b]0;never terminated", ""),
        ("\x1bPq#0;2;0;0;0\x1b\\after", "after"),  # DCS (sixel)
    ],
)
def test_printable(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_printable_all_reaches_nested_strings_and_dataclasses() -> None:
    turn = TurnRecord("d", 0, "opening", 1, f"sp{CLEAR}", "A", "debater", "t", f"a{RETITLE}", None, None, None, "b", 1, 1, 0.1, None, {}, None, "stop", None)
    clean = printable_all({"k\x1b[1m": [turn, (f"x{CLEAR}",)], "n": 3})
    assert clean == {"k": [TurnRecord("d", 0, "opening", 1, "sp", "A", "debater", "t", "a", None, None, None, "b", 1, 1, 0.1, None, {}, None, "stop", None), ("x",)], "n": 3}


def _poison(store_file: Path) -> None:
    """Escape sequences in every stored text a user sees: motion, seat names, answer, reasoning, candidate, rationale."""
    import sqlite3

    with sqlite3.connect(store_file) as db:
        db.execute("UPDATE debates SET motion=?, seats=? WHERE debate_id='deb-aaa111'",
                   (f"Motion{RETITLE} with{CLEAR} escapes", '{"A": ["adv\\u001b[31mocate"], "B": ["skeptic"], "judge": ["judge"], "moderator": []}'))
        db.execute("UPDATE turns SET answer=?, reasoning=?, speaker=? WHERE debate_id='deb-aaa111' AND turn_index=0",
                   (f"Answer{CLEAR} here {HYPERLINK}", f"Thought{RETITLE}", "adv\x1b[31mocate"))
        db.execute("UPDATE candidates SET answer=? WHERE debate_id='deb-aaa111'", (f"cand{EIGHT_BIT}idate",))
        db.execute("UPDATE verdicts SET rationale=? WHERE debate_id='deb-aaa111'", (f"Because{RETITLE}{EVIL}.",))


def _assert_clean(out: str) -> None:
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out and "\x00" not in out, repr(out)


def test_transcripts_list_and_show_strip_escapes(isolated_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    store_file = isolated_home / "transcripts.sqlite"
    fill(store_file)
    _poison(store_file)
    assert main(["transcripts", "list"]) == 0
    out = capsys.readouterr().out
    _assert_clean(out)
    assert "Motion with escapes" in out and "A: advocate" in out
    assert main(["transcripts", "show", "deb-aaa111"]) == 0
    out = capsys.readouterr().out
    _assert_clean(out)
    for words in ("Motion with escapes", "Answer here click", "Thought", "candidate", "Because.", "advocate"):
        assert words in out, words
    # JSON keeps the stored text exactly (escaped by json.dumps, so still safe on a terminal)
    assert main(["transcripts", "show", "deb-aaa111", "--json"]) == 0
    out = capsys.readouterr().out
    _assert_clean(out)
    assert "\\u001b]0;pwned\\u0007" in out and "\\u009b31m" in out
    assert json.loads(out)["turns"][0]["candidates"][0]["answer"] == f"cand{EIGHT_BIT}idate"
    assert main(["transcripts", "list", "--json"]) == 0
    out = capsys.readouterr().out
    _assert_clean(out)
    assert json.loads(out.splitlines()[1])["motion"] == f"Motion{RETITLE} with{CLEAR} escapes"


def test_debate_printer_strips_escapes_even_split_over_tokens() -> None:
    buf = io.StringIO()
    printer = Printer(Console(file=buf, force_terminal=False, width=100, highlight=False))
    seats = {"A": [f"adv{CLEAR}"], "B": ["skeptic"], "judge": ["judge"], "moderator": []}
    for ev in [
        DebateStart("d1", motion=f"Cars{RETITLE} out", seats=seats, format="quick", rounds=1),
        TurnStart("d1", turn=0, speaker=f"adv{CLEAR}", team="A", phase="opening", role="debater"),
        # a sequence cut across two tokens: the ESC goes with the first, the rest is plain text
        Token("d1", turn=0, speaker=f"adv{CLEAR}", team="A", phase="opening", role="debater", kind="answer", text="Hello \x1b"),
        Token("d1", turn=0, speaker=f"adv{CLEAR}", team="A", phase="opening", role="debater", kind="answer", text="]0;x\x07 world"),
        TurnEnd("d1", turn=0, speaker=f"adv{CLEAR}", team="A", role="debater", phase="opening", answer="Hello world", chosen=0),
        Verdict("d1", panel=VerdictRecord("d1", "panel", "A", 0.7, 0.7, {"A": {f"lo{CLEAR}gic": 7.0}}, f"Clear{RETITLE}.", True, [])),
    ]:
        printer(ev)
    out = buf.getvalue()
    _assert_clean(out)
    assert "Cars out" in out and "adv (team A)" in out and "Hello ]0;x world" in out and "logic 7.0" in out and "Clear." in out


async def test_tui_browser_and_replay_strip_escapes(isolated_home: Path) -> None:
    store_file = isolated_home / "transcripts.sqlite"
    fill(store_file)
    _poison(store_file)
    with TranscriptStore(store_file) as s:  # a judge verdict the replay shows (fill's is the panel's)
        v = s.verdicts("deb-aaa111")[0]
        s.record_verdict(VerdictRecord(**{**v.to_dict(), "judge": "judge"}))
    app = make_app(isolated_home)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, BrowserScreen), "the browser")
        text = screen_text(app)
        _assert_clean(text)
        assert "Motion with escapes" in text
        app.screen.query_one("#debates").focus()
        await pilot.press("ctrl+end", "enter")  # the oldest: deb-aaa111
        await until(pilot, lambda: app.screen is app.live and app.runner is not None and app.runner.state == "finished", "the replay")
        text = screen_text(app)
        _assert_clean(text)
        assert "Motion: Motion with escapes" in text and "Answer here click" in text and "Because." in text
