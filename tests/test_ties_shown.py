"""A tie verdict reaches every reader: the debate printer, `bonsai transcripts`, the TUI judge panel and
sweep monitor. Fast: no engine (the real-engine check is tests/test_judge_fairness.py)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from bonsai.cli.debate_cmd import Printer
from bonsai.cli.main import main
from bonsai.debate.events import Verdict
from bonsai.paths import store_path
from bonsai.store.records import DebateRecord, VerdictRecord
from bonsai.store.transcripts import TranscriptStore


def verdict_event(winner: str, prob_a: float, tie_band: float | None = 0.05) -> Verdict:
    panel = VerdictRecord("d", "panel", winner, prob_a, max(prob_a, 1 - prob_a), {"A": {"logic": 5.0}}, "close", True, [], tie_band=tie_band)
    return Verdict("d", panel=panel)


def printed(ev: Verdict) -> str:
    buf = io.StringIO()
    Printer(Console(file=buf, width=120, no_color=True))(ev)
    return buf.getvalue()


def test_debate_printer_says_tie_and_why() -> None:
    out = printed(verdict_event("tie", 0.51))
    assert "Tie: no side won" in out and "within the tie band (0.5 ± 0.05)" in out and "Winner" not in out
    out = printed(verdict_event("tie", 0.7))
    assert "Tie" in out and "different sides" in out
    assert "Winner: team B" in printed(verdict_event("B", 0.2))


def test_transcripts_show_and_list_a_tie(isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with TranscriptStore(store_path(isolated_home)) as s:
        s.create_debate(DebateRecord("deb-tie", "Tea beats coffee", "quick", 1, "b", "vllm", {"A": ["advocate"], "B": ["skeptic"]}, 1, 1, 1.0))
        s.create_debate(DebateRecord("deb-won", "Tea beats coffee", "quick", 1, "b", "vllm", {"A": ["advocate"], "B": ["skeptic"]}, 1, 1, 2.0))
        s.record_verdict(VerdictRecord("deb-tie", "judge", "tie", 0.52, 0.52, {}, "", True, [], 1.0, tie_band=0.05))
        s.set_status("deb-tie", "finished", winner="tie")
        s.set_status("deb-won", "finished", winner="A")
    assert main(["transcripts", "show", "deb-tie"]) == 0
    out = capsys.readouterr().out
    assert "winner tie" in out and "P(A wins) 0.520" in out and "within the tie band" in out
    assert main(["transcripts", "list", "--winner", "tie", "--json"]) == 0
    assert '"deb-tie"' in capsys.readouterr().out


def test_tui_judge_panel_and_sweep_monitor_show_a_tie() -> None:
    from tui.messages import Verdict
    from tui.sweep_stats import summarize
    from tui.widgets.judge import JudgePanel

    panel = JudgePanel()
    panel.reset({"A": ["advocate"], "B": ["skeptic"], "judge": ["judge"]})
    panel.state, panel.verdict = "verdict", Verdict("d", "tie", 0.51, 0.51, {"A": {"logic": 5.0}, "B": {"logic": 5.0}})
    buf = io.StringIO()
    Console(file=buf, width=100, no_color=True).print(panel._render_panel())
    text = buf.getvalue()
    assert "Tie: no side won" in text and "team" not in text.split("\n")[0]

    def rec(did: str, winner: str) -> DebateRecord:
        return DebateRecord(did, "m", "quick", 1, "b", "vllm", {"A": ["p"], "B": ["r"]}, None, 1, 0.0, "finished", winner, None, "x")

    s = summarize("x", [rec("1", "A"), rec("2", "tie"), rec("3", "tie")])
    assert [(r.persona, r.played, r.wins, r.losses) for r in s.personas] == [("p", 3, 2.0, 1.0), ("r", 3, 1.0, 2.0)]
