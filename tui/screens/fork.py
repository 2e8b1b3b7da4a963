"""Choose the turn to fork from: the new debate keeps every turn before it and goes on from there."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from bonsai.store.records import TurnRecord


def turn_label(t: TurnRecord) -> str:
    who = "moderator" if t.role == "moderator" else f"{t.speaker} (team {t.team})"
    words = " ".join(t.answer.split())
    return f"turn {t.turn_index + 1} · {t.phase} · {who}: {words[:60]}{'…' if len(words) > 60 else ''}"


class ForkScreen(ModalScreen[int | None]):
    CSS_PATH = "fork.tcss"
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, debate_id: str, turns: list[TurnRecord]) -> None:
        super().__init__()
        self.debate_id = debate_id
        self.turns = turns

    def compose(self) -> ComposeResult:
        with Vertical(id="fork-dialog"):
            yield Label(f"Fork debate {self.debate_id}: redo the chosen turn and everything after it (Enter picks, Esc cancels)")
            yield OptionList(*(Option(turn_label(t), id=str(t.turn_index)) for t in self.turns), id="fork-turns")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.focus()
        if self.turns:
            options.highlighted = len(self.turns) - 1

    @on(OptionList.OptionSelected)
    def _picked(self, event: OptionList.OptionSelected) -> None:
        assert event.option.id is not None
        self.dismiss(int(event.option.id))

    def action_cancel(self) -> None:
        self.dismiss(None)
