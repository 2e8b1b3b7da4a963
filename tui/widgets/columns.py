"""A team's column: its turns one below the other, kept scrolled to the newest line."""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widgets import Static

from bonsai.debate.schedule import SIDE_STANCE
from bonsai.text import printable
from tui.messages import TurnStarted
from tui.widgets.turn import TurnView

EMPTY_HINT = "No debate yet.\nn: new debate · t: transcripts · w: sweeps · ?: help"


class TeamColumn(VerticalScroll):
    def __init__(self, team: str) -> None:
        super().__init__(id=f"team-{team.lower()}", classes="team-column")
        self.team = team
        self.border_title = f"Team {team} ({SIDE_STANCE[team]})"

    def follow(self) -> None:
        """Stay at the newest line once the column overflows (anchoring earlier would push short
        content to the bottom); scrolling up by hand releases it, as in any anchored view."""
        if not self.is_anchored:
            self.call_after_refresh(self._anchor_if_full)

    def watch_virtual_size(self) -> None:
        self.follow()

    def _anchor_if_full(self) -> None:
        if not self.is_anchored and self.virtual_size.height > self.scrollable_content_region.height:
            self.anchor()

    async def reset(self, seats: list[str] | None) -> None:
        self.anchor(False)
        await self.remove_children()
        names = printable(", ".join(seats)) if seats else "-"
        self.border_title = f"Team {self.team} ({SIDE_STANCE[self.team]}) · {names}"
        if seats is None:
            await self.mount(Static(EMPTY_HINT, classes="empty-hint"))

    async def begin(self, started: TurnStarted, version: str | None = None) -> TurnView:
        for old in self.query(f"#turn-{started.turn}"):
            await old.remove()  # the turn runs again after a resume: its partial text goes
        view = TurnView(started, version if started.adapter else None)
        await self.mount(view)
        self.follow()
        return view

    async def add_note(self, turn: int, text: str) -> None:
        await self.mount(Static(f"⚑ moderator note: {printable(text)}", classes="note", markup=False))
        self.follow()
