"""The sweep monitor: each sweep's progress and a win-rate table per persona, refreshed from the store
every few seconds, so a sweep running in another process shows up live (see ``tui.sweep_stats``)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from bonsai.store.transcripts import TranscriptStore
from tui.sweep_stats import summarize, sweep_names

REFRESH_S = 2.0


class SweepScreen(Screen[None]):
    CSS_PATH = "sweeps.tcss"
    BINDINGS = [Binding("escape", "back", "Back"), Binding("g", "reload", "Reload")]

    def __init__(self, store: TranscriptStore, *, sweep: str | None = None, refresh_s: float = REFRESH_S) -> None:
        super().__init__(id="sweeps")
        self.store = store
        self.current = sweep
        self.refresh_s = refresh_s
        self.names: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static("Sweeps", id="sweeps-title")
        with Horizontal(id="sweeps-body"):
            yield OptionList(id="sweep-list")
            with Vertical(id="sweep-detail"):
                yield Static("", id="sweep-progress-text", markup=False)
                yield ProgressBar(total=1, show_eta=False, id="sweep-progress")
                yield DataTable(id="ratings", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#ratings", DataTable)
        table.add_columns("persona", "team", "played", "won", "lost", "win rate")
        asked = self.current
        self.reload()
        if not self.names:
            self.app.notify("No sweeps in the store yet: debates started with a sweep name show up here.", title="Sweeps", severity="warning", markup=False)
        elif asked is not None and asked not in self.names:
            self.app.notify(f"No sweep called {asked!r} in the store.", title="Sweeps", severity="error", markup=False)
        if self.refresh_s > 0:
            self.set_interval(self.refresh_s, self.reload)

    def reload(self) -> None:
        debates = self.store.list_debates(newest_first=False)
        names = sweep_names(debates)
        options = self.query_one(OptionList)
        if names != self.names:
            self.names = names
            options.clear_options()
            options.add_options([Option(n, id=n) for n in names])
        if self.current not in names:
            self.current = names[0] if names else None
        if self.current is not None:
            options.highlighted = names.index(self.current)
        self._show(debates)

    def _show(self, debates: list) -> None:  # type: ignore[type-arg]
        text = self.query_one("#sweep-progress-text", Static)
        bar = self.query_one(ProgressBar)
        table = self.query_one("#ratings", DataTable)
        table.clear()
        if self.current is None:
            text.update("No sweeps yet.")
            bar.update(total=1, progress=0)
            return
        record = self.store.get_sweep(self.current)
        s = summarize(self.current, debates, planned=record.total if record else None)
        others = ", ".join(f"{n} {k}" for k, n in sorted(s.statuses.items()) if k != "finished")
        text.update(f"{s.name}: {s.finished}/{s.total} debates finished" + (f" ({others})" if others else ""))
        bar.update(total=max(1, s.total), progress=s.finished)
        for r in s.personas:
            table.add_row(r.persona, r.team, str(r.played), f"{r.wins:g}", f"{r.losses:g}", f"{r.win_rate:.0%}")

    @on(OptionList.OptionHighlighted)
    def _pick(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id is not None and event.option.id != self.current:
            self.current = event.option.id
            self._show(self.store.list_debates(newest_first=False))

    def action_reload(self) -> None:
        self.reload()

    def action_back(self) -> None:
        self.app.pop_screen()
