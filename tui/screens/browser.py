"""The transcript browser: stored debates, filtered by persona, sweep, winner and status.

Enter replays the highlighted debate in the live view, ``r`` resumes an unfinished one, ``f`` forks.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Select, Static

from bonsai.store.records import DebateRecord, DebateStatus
from bonsai.store.transcripts import STATUSES, TranscriptStore
from bonsai.text import printable_all

if TYPE_CHECKING:
    from tui.host import BonsaiHost

WINNERS = [("any winner", "any"), ("A won", "A"), ("B won", "B"), ("tie", "tie"), ("no winner", "none")]


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


class BrowserScreen(Screen[None]):
    CSS_PATH = "browser.tcss"
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("r", "resume", "Resume"),
        Binding("f", "fork", "Fork"),
        Binding("g", "reload", "Reload"),
    ]

    def __init__(self, store: TranscriptStore) -> None:
        super().__init__(id="browser")
        self.store = store
        self.rows: list[DebateRecord] = []

    @property
    def bonsai(self) -> BonsaiHost:
        return cast("BonsaiHost", self.app)

    def compose(self) -> ComposeResult:
        yield Static(f"Transcripts in {self.store.path}", id="browser-title", markup=False)
        with Horizontal(id="filters"):
            yield Input(placeholder="persona", id="persona")
            yield Input(placeholder="sweep", id="sweep")
            yield Select(WINNERS, value="any", allow_blank=False, id="winner")
            yield Select([("any status", "any"), *((s, s) for s in STATUSES)], value="any", allow_blank=False, id="status")
        yield DataTable(id="debates", cursor_type="row", zebra_stripes=True)
        yield Static("", id="browser-empty", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("id", "created", "status", "winner", "team A", "team B", "motion", "sweep", "format")
        self.reload()
        table.focus()
        if not self.rows and not self.store.list_debates(limit=1):
            self.app.notify(f"The transcript store {self.store.path} has no debates yet: press n to start one.", title="Transcripts", severity="warning", markup=False)

    def filters(self) -> dict[str, str | None]:
        persona = self.query_one("#persona", Input).value.strip() or None
        sweep = self.query_one("#sweep", Input).value.strip() or None
        winner = self.query_one("#winner", Select).value
        status = self.query_one("#status", Select).value
        return {"persona": persona, "sweep": sweep, "winner": str(winner), "status": str(status)}

    def reload(self) -> None:
        f = self.filters()
        debates = self.store.list_debates(
            persona=f["persona"], sweep=f["sweep"], status=None if f["status"] == "any" else f["status"],
            winner=f["winner"] if f["winner"] in ("A", "B", "tie") else None,
        )
        if f["winner"] == "none":
            debates = [d for d in debates if d.winner is None]
        self.rows = debates
        table = self.query_one(DataTable)
        table.clear()
        for d in printable_all(debates):  # stored motions and names: no escape sequences onto the terminal
            motion = d.motion if len(d.motion) <= 48 else d.motion[:47] + "…"
            table.add_row(d.debate_id, when(d.created_at), d.status, d.winner or "-", ", ".join(d.seats.get("A", [])),
                          ", ".join(d.seats.get("B", [])), motion, d.sweep or "-", f"{d.format}/{d.rounds}", key=d.debate_id)
        empty = self.query_one("#browser-empty", Static)
        if debates:
            empty.update(f"{len(debates)} debate{'s' if len(debates) != 1 else ''} · enter: replay · r: resume · f: fork")
        elif any(v not in (None, "any") for v in f.values()):
            empty.update("No debate matches these filters.")
        else:
            empty.update("No debates yet: press n to start one.")

    @on(Input.Changed)
    @on(Select.Changed)
    def _filter(self) -> None:
        self.reload()

    def selected(self) -> DebateRecord | None:
        table = self.query_one(DataTable)
        if not self.rows or table.cursor_row < 0 or table.cursor_row >= len(self.rows):
            self.app.notify("No debate selected.", severity="warning", markup=False)
            return None
        return self.rows[table.cursor_row]

    @on(DataTable.RowSelected)
    def _open(self) -> None:
        record = self.selected()
        if record is not None:
            self.bonsai.open_debate(record.debate_id)

    def action_resume(self) -> None:
        record = self.selected()
        if record is None:
            return
        if record.status == DebateStatus.FINISHED:
            self.app.notify(f"Debate {record.debate_id} has finished; enter replays it, f forks it.", severity="warning", markup=False)
            return
        self.bonsai.resume_debate(record.debate_id)

    def action_fork(self) -> None:
        record = self.selected()
        if record is not None:
            self.bonsai.choose_fork(record.debate_id)

    def action_reload(self) -> None:
        self.reload()

    def action_back(self) -> None:
        self.app.pop_screen()
