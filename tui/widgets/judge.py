"""The judge panel: per-criterion scores, the winner, a confidence bar, and best-of-N candidates.

Everything is said in words and block characters as well as colour, so it reads on a monochrome
terminal too.
"""

from __future__ import annotations

import dataclasses

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from bonsai.text import printable, printable_all
from tui.messages import TurnDone, Verdict

BAR_WIDTH = 20


def bar(value: float, width: int = BAR_WIDTH) -> str:
    """``value`` in [0, 1] as a bar of full and light blocks."""
    value = min(1.0, max(0.0, value))
    filled = round(value * width)
    return "█" * filled + "░" * (width - filled)


class JudgePanel(Static):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self.border_title = "Judge"
        self.judges: list[str] = []
        self.seats: dict[str, list[str]] = {}
        self.state = "idle"
        self.verdict: Verdict | None = None
        self.candidates: TurnDone | None = None

    def reset(self, seats: dict[str, list[str]] | None) -> None:
        self.seats = printable_all(seats or {})
        self.judges = list(self.seats.get("judge", []))
        self.state, self.verdict, self.candidates = "idle", None, None
        self._redraw()

    def judging(self, judges: list[str]) -> None:
        self.judges = printable_all(judges) or self.judges
        self.state = "judging"
        self._redraw()

    def show_verdict(self, verdict: Verdict) -> None:
        # the judge's rationale and criteria are model output: no escape sequences onto the terminal
        self.state, self.verdict = "verdict", dataclasses.replace(verdict, rationale=printable(verdict.rationale), scores=printable_all(verdict.scores))
        self._redraw()

    def show_candidates(self, done: TurnDone) -> None:
        self.candidates = dataclasses.replace(done, speaker=printable(done.speaker))
        self._redraw()

    def _redraw(self) -> None:
        self.update(self._render_panel())

    def _render_panel(self) -> RenderableType:
        who = ", ".join(self.judges) or "judge"
        lines: list[RenderableType] = []
        if self.state == "idle":
            lines.append(Text(f"{who}: waiting for the debate to end", style="dim"))
        elif self.state == "judging":
            lines.append(Text(f"{who}: judging (both reading orders, labels both ways)…", style="italic"))
        elif self.verdict is not None:
            lines.append(self._verdict())
        if self.candidates is not None and self.candidates.candidates:
            lines.append(self._candidates(self.candidates))
        return Group(*lines)

    def _verdict(self) -> RenderableType:
        v = self.verdict
        assert v is not None
        team = v.winner
        names = ", ".join(self.seats.get(team, []))
        left = Text()
        if team == "tie":
            # spelled out, not only coloured: the readings disagreed or P(A) was too close to call
            left.append("Tie: no side won", style="bold yellow")
        else:
            left.append(f"Winner: team {team}", style=f"bold {'cyan' if team == 'A' else 'magenta'}")
            if names:
                left.append(f" ({names})")
        left.append("\nno confidence (the judge's server returns no logprobs)" if v.confidence is None else f"\nconfidence {bar(v.confidence)} {v.confidence:.2f}")
        left.append(f"\nP(A wins)  {bar(v.prob_a)} {v.prob_a:.2f}")
        if not v.parsed:
            left.append("\n(scores did not parse: winner from token probabilities)", style="dim")
        if v.rationale:
            left.append(f"\n{v.rationale.strip()}", style="dim italic")
        scores = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
        scores.add_column("criterion")
        scores.add_column("A", justify="right")
        scores.add_column("B", justify="right")
        criteria = sorted({c for team_scores in v.scores.values() for c in team_scores})
        for c in criteria:
            scores.add_row(c, *(f"{v.scores.get(t, {}).get(c, float('nan')):.1f}" if c in v.scores.get(t, {}) else "-" for t in ("A", "B")))
        grid = Table.grid(expand=True, padding=(0, 2))
        grid.add_column(ratio=3)
        grid.add_column(ratio=2)
        grid.add_row(left, scores if criteria else Text("no scores", style="dim"))
        return grid

    def _candidates(self, done: TurnDone) -> Text:
        text = Text(f"best of {len(done.candidates)} · turn {done.turn + 1} {done.speaker}: ", style="")
        for i, c in enumerate(done.candidates):
            kept = c["index"] == done.chosen
            text.append(f"#{c['index']} {float(c['score']):.2f}{' (kept)' if kept else ''}", style="bold" if kept else "dim")
            if i < len(done.candidates) - 1:
                text.append(" · ")
        return text
