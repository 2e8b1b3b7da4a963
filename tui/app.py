"""`bonsai tui`: watch, steer and replay debates.

The app owns the transcript store and the :class:`~tui.runner.LiveRunner`; the live screen is the
base of the screen stack and receives the runner's messages even while another screen is on top.
Faults the user can meet (no engine, an endpoint gone, an empty store, an unknown id) become
notifications: the app keeps running.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from bonsai.errors import BonsaiError
from bonsai.paths import store_path
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore
from tui.messages import RunState
from tui.options import TuiOptions
from tui.engines import ConfiguredEngine, EngineSource
from tui.runner import LiveRunner
from tui.screens.live import LiveScreen

log = logging.getLogger(__name__)

#: runner states in which quitting leaves a debate to resume later
UNFINISHED = frozenset({RunState.STARTING, RunState.RUNNING, RunState.PAUSING, RunState.PAUSED, RunState.STOPPED})


class BonsaiApp(App[str | None]):
    """Returns (from ``run()``) the id of a debate left unfinished at quit, so the CLI can say how to resume it."""

    TITLE = "bonsai"
    BINDINGS = [
        Binding("n", "new_debate", "New"),
        Binding("t", "transcripts", "Transcripts"),
        Binding("w", "sweeps", "Sweeps"),
        Binding("question_mark", "help", "Help"),
        Binding("f1", "help", "Help", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, options: TuiOptions, *, engines: EngineSource | None = None, book: PersonaBook | None = None) -> None:
        super().__init__()
        self.options = options
        self.engines = engines or ConfiguredEngine(options.engine, options.home)
        self._book = book
        self.book = PersonaBook([])
        self.store: TranscriptStore | None = None
        self.runner: LiveRunner | None = None
        self.live = LiveScreen()
        self._closed = False

    def on_mount(self) -> None:
        self.push_screen(self.live)  # pushed, not the default screen, so that its .tcss is loaded
        try:
            self.book = self._book or PersonaBook.load(self.options.personas_dir)
        except BonsaiError as exc:
            self.notify(f"{exc.message}\n{exc.hint or ''}".strip(), title="Personas", severity="error", timeout=15, markup=False)
        path = self.options.store or store_path(self.options.home)
        try:
            self.store = TranscriptStore(path)
        except BonsaiError as exc:
            self.notify(f"{exc.message}\n{exc.hint or ''}".strip(), title="Transcript store", severity="error", timeout=15, markup=False)
            return
        self.runner = LiveRunner(
            self.live, store=self.store, book=self.book, home=self.options.home, engines=self.engines, replay_delay=self.options.replay_delay
        )
        if self.options.replay:
            self.open_debate(self.options.replay)
        elif self.options.resume:
            self.resume_debate(self.options.resume)
        elif self.options.sweep:
            self.action_sweeps(self.options.sweep)

    # -- navigation -----------------------------------------------------------------------------------

    def show_live(self) -> None:
        while self.screen is not self.live and len(self.screen_stack) > 2:
            self.pop_screen()

    def _known(self, debate_id: str) -> str | None:
        """The full id of a stored debate, or None after telling the user it is not there."""
        if self.store is None:
            self.notify("No transcript store is open.", severity="error", markup=False)
            return None
        try:
            return self.store.resolve_id(debate_id)
        except BonsaiError as exc:
            self.notify(f"{exc.message}\n{exc.hint or ''}".strip(), title="Unknown debate", severity="error", timeout=10, markup=False)
            return None

    def _leave_current(self, next_id: str | None = None) -> None:
        """Say where the debate in flight goes when another one takes the live view (it is saved)."""
        runner = self.runner
        if runner is not None and runner.debate_id and runner.debate_id != next_id and runner.state in UNFINISHED:
            self.notify(f"Debate {runner.debate_id} is saved; resume it from the transcripts (t, then r).", title="Debate", markup=False)

    def open_debate(self, debate_id: str) -> None:
        """Replay a stored debate in the live view."""
        full = self._known(debate_id)
        if full is None or self.runner is None:
            return
        self._leave_current(full)
        self.show_live()
        self.run_worker(self.runner.replay(full), group="runner", exclusive=False)

    def resume_debate(self, debate_id: str) -> None:
        full = self._known(debate_id)
        if full is None or self.runner is None:
            return
        self._leave_current(full)
        self.show_live()
        self.run_worker(self.runner.resume(full), group="runner")

    def choose_fork(self, debate_id: str) -> None:
        full = self._known(debate_id)
        if full is None or self.runner is None or self.store is None:
            return
        turns = self.store.turns(full)
        if not turns:
            self.notify(f"Debate {full} has no finished turn to fork from yet.", severity="warning", markup=False)
            return
        from tui.screens.fork import ForkScreen

        runner = self.runner

        def picked(turn: int | None) -> None:
            if turn is not None:
                self._leave_current()
                self.show_live()
                self.run_worker(runner.fork(full, turn), group="runner")

        self.push_screen(ForkScreen(full, turns), picked)

    # -- actions ------------------------------------------------------------------------------------

    def action_new_debate(self) -> None:
        if self.runner is None:
            self.notify("No transcript store is open, so no debate can run.", severity="error", markup=False)
            return
        from tui.screens.start import StartScreen

        runner = self.runner

        def start(spec: object) -> None:
            if spec is not None:
                self._leave_current()
                self.show_live()
                self.run_worker(runner.start(spec), group="runner")  # type: ignore[arg-type]

        self.push_screen(StartScreen(self.book, self.options.form), start)

    def action_transcripts(self) -> None:
        if self.store is None:
            self.notify("No transcript store is open.", severity="error", markup=False)
            return
        from tui.screens.browser import BrowserScreen

        if not isinstance(self.screen, BrowserScreen):
            self.show_live()
            self.push_screen(BrowserScreen(self.store))

    def action_sweeps(self, sweep: str | None = None) -> None:
        if self.store is None:
            self.notify("No transcript store is open.", severity="error", markup=False)
            return
        from tui.screens.sweeps import SweepScreen

        if not isinstance(self.screen, SweepScreen):
            self.show_live()
            self.push_screen(SweepScreen(self.store, sweep=sweep))

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        runner = self.runner
        unfinished = runner.debate_id if runner is not None and runner.state in UNFINISHED else None
        await self.shutdown()
        self.exit(unfinished)

    async def shutdown(self) -> None:
        """Stop the debate in flight (it is saved by its checkpoint), close the engine and the store."""
        if self._closed:
            return
        self._closed = True
        if self.runner is not None:
            try:
                await self.runner.close()
            except Exception:
                log.exception("closing the runner")
        if self.store is not None:
            self.store.close()

    async def on_unmount(self) -> None:
        await self.shutdown()

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("New debate", "Open the form to start a debate", self.action_new_debate)
        yield SystemCommand("Transcripts", "Browse, replay, resume and fork stored debates", self.action_transcripts)
        yield SystemCommand("Sweep monitor", "Progress and win rates of the sweeps in the store", self.action_sweeps)
        yield SystemCommand("Pause / go on", "Hold the debate after the current turn, or go on", self.live.action_pause)
        yield SystemCommand("Step one turn", "Run one more turn, then wait", self.live.action_step)
        yield SystemCommand("Moderator note", "Both teams read it before the next turn", self.live.action_note)
        yield SystemCommand("Fork from a turn", "A new debate that redoes a turn and all after it", self.live.action_fork)
        yield SystemCommand("Keys", "Show every key binding", self.action_help)
