"""The live debate screen: the motion, team A's and team B's columns, the moderator line, the judge.

It shows whatever debate the runner reports on (live, resumed, forked or replayed); every change
comes from a message, and its keys only ask the runner for something.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Static

from bonsai.text import printable
from tui.messages import (
    DebateEnded,
    DebateStarted,
    EngineStatus,
    Failed,
    Judging,
    NoteAdded,
    Paused,
    RunnerState,
    RunState,
    Throughput,
    Token,
    TurnDone,
    TurnStarted,
    Verdict,
)
from tui.widgets.columns import TeamColumn
from tui.widgets.judge import JudgePanel
from tui.widgets.status import StatusLine
from tui.widgets.turn import TurnView

if TYPE_CHECKING:
    from tui.host import BonsaiHost


class LiveScreen(Screen[None]):
    CSS_PATH = "live.tcss"
    BINDINGS = [
        Binding("space", "pause", "Pause/Go"),
        Binding("s", "step", "Step"),
        Binding("m", "note", "Note"),
        Binding("f", "fork", "Fork"),
    ]

    def __init__(self) -> None:
        super().__init__(id="live")
        self.debate_id: str | None = None
        self.schedule: list[dict[str, Any]] = []
        self.turns: dict[int, TurnView] = {}
        self.adapters: dict[str, str] = {}
        self.moderator_text = ""

    @property
    def bonsai(self) -> BonsaiHost:
        return cast("BonsaiHost", self.app)

    def compose(self) -> ComposeResult:
        yield Static("Motion: -", id="motion", markup=False)
        yield StatusLine(id="status")
        yield Static("Moderator: -", id="moderator", markup=False)
        with Horizontal(id="columns"):
            yield TeamColumn("A")
            yield TeamColumn("B")
        yield JudgePanel(id="judge")
        yield Footer()

    async def on_mount(self) -> None:
        for col in self.query(TeamColumn):
            await col.reset(None)
        self.query_one(JudgePanel).reset(None)

    # -- parts ---------------------------------------------------------------------------------------

    @property
    def status(self) -> StatusLine:
        return self.query_one(StatusLine)

    @property
    def judge(self) -> JudgePanel:
        return self.query_one(JudgePanel)

    def column(self, team: str) -> TeamColumn:
        return self.query_one(f"#team-{team.lower()}", TeamColumn)

    def _moderator(self, text: str) -> None:
        self.moderator_text = text
        self.query_one("#moderator", Static).update(text)

    # -- messages from the runner -----------------------------------------------------------------

    @on(DebateStarted)
    async def _started(self, msg: DebateStarted) -> None:
        if msg.resumed and msg.debate_id == self.debate_id:
            self.status.set(debate_id=msg.debate_id)
            return
        self.debate_id = msg.debate_id
        self.schedule = msg.schedule
        self.adapters = msg.adapters
        self.turns = {}
        self.query_one("#motion", Static).update(f"Motion: {printable(msg.motion)}")
        fork = f" (forked from {msg.forked_from['debate_id']} at turn {msg.forked_from['turn'] + 1})" if msg.forked_from else ""
        self._moderator(f"Moderator: {msg.format} format, {msg.rounds} round{'s' if msg.rounds != 1 else ''}{fork}")
        for team in ("A", "B"):
            await self.column(team).reset(msg.seats.get(team, []))
        self.judge.reset(msg.seats)
        self.status.set(debate_id=msg.debate_id, phase="", turn=None, total=len(self.schedule) or None, rate=None)

    @on(TurnStarted)
    async def _turn_started(self, msg: TurnStarted) -> None:
        if msg.debate_id != self.debate_id:
            return
        self.status.set(phase=msg.phase, turn=msg.turn)
        if msg.role == "moderator" or msg.team not in ("A", "B"):
            self._moderator(f"Moderator · {msg.phase}: ")
            return
        self.turns[msg.turn] = await self.column(msg.team).begin(msg, self.adapters.get(msg.speaker))

    @on(Token)
    async def _token(self, msg: Token) -> None:
        if msg.debate_id != self.debate_id or msg.candidate != 0:
            return  # best-of-N: candidate 0 streams, the kept one replaces it at the end
        if msg.role == "moderator" or msg.team not in ("A", "B"):
            self._moderator(self.moderator_text + msg.text)
            return
        view = self.turns.get(msg.turn)
        if view is not None:
            await view.add(msg.kind, msg.text)
            self.column(msg.team).follow()

    @on(TurnDone)
    async def _turn_done(self, msg: TurnDone) -> None:
        if msg.debate_id != self.debate_id:
            return
        if msg.role == "moderator" or msg.team not in ("A", "B"):
            self._moderator(printable(f"Moderator · {msg.phase}: {msg.answer}"))
            return
        view = self.turns.get(msg.turn)
        if view is not None:
            await view.finish(msg)
            self.column(msg.team).follow()
        if len(msg.candidates) > 1:
            self.judge.show_candidates(msg)

    @on(NoteAdded)
    async def _note(self, msg: NoteAdded) -> None:
        if msg.debate_id != self.debate_id:
            return
        self._moderator(f"Moderator note (before turn {msg.turn + 1}): {msg.text}")
        for team in ("A", "B"):
            await self.column(team).add_note(msg.turn, msg.text)

    @on(Judging)
    def _judging(self, msg: Judging) -> None:
        if msg.debate_id == self.debate_id:
            self.status.set(phase="verdict", turn=None)
            self.judge.judging(msg.judges)

    @on(Verdict)
    def _verdict(self, msg: Verdict) -> None:
        if msg.debate_id == self.debate_id:
            self.judge.show_verdict(msg)

    @on(Paused)
    def _paused(self, msg: Paused) -> None:
        if msg.debate_id != self.debate_id:
            return
        who = "the verdict" if msg.next_speaker == "judge" else f"turn {msg.step + 1} ({msg.next_speaker}, {msg.next_phase})"
        self.status.set(waiting_for=who)

    @on(DebateEnded)
    def _ended(self, msg: DebateEnded) -> None:
        if msg.debate_id == self.debate_id:
            self.status.set(phase="", turn=None)

    @on(Throughput)
    def _throughput(self, msg: Throughput) -> None:
        if msg.debate_id == self.debate_id:
            self.status.set(rate=msg.tokens_per_s)

    @on(RunnerState)
    def _runner_state(self, msg: RunnerState) -> None:
        if msg.debate_id is not None and msg.debate_id != self.debate_id and msg.state not in (RunState.STARTING,):
            return
        self.status.set(state=msg.state)

    @on(EngineStatus)
    def _engine(self, msg: EngineStatus) -> None:
        label = {"starting": "starting the engine…", "ready": f"engine {msg.detail}", "failed": "engine failed"}[msg.state]
        self.status.set(engine=label)

    @on(Failed)
    def _failed(self, msg: Failed) -> None:
        text = msg.message + (f"\n{msg.hint}" if msg.hint else "")
        self.app.notify(text, title="Debate", severity="error", timeout=12, markup=False)

    # -- keys ---------------------------------------------------------------------------------------

    def _runner_or_warn(self) -> Any:
        runner = self.bonsai.runner
        if runner is None:
            self.app.notify("No transcript store is open, so no debate can run.", severity="warning", markup=False)
        return runner

    def action_pause(self) -> None:
        runner = self._runner_or_warn()
        if runner is None:
            return
        if runner.state not in (RunState.RUNNING, RunState.PAUSING, RunState.PAUSED, RunState.STARTING):
            self.app.notify("No debate is running: press n to start one, or resume one from the transcripts (t).", severity="warning", markup=False)
            return
        runner.toggle_pause()

    def action_step(self) -> None:
        runner = self._runner_or_warn()
        if runner is None:
            return
        if runner.state not in (RunState.RUNNING, RunState.PAUSING, RunState.PAUSED, RunState.STARTING):
            self.app.notify("No debate to step through: press n to start one.", severity="warning", markup=False)
            return
        runner.step()

    def action_note(self) -> None:
        runner = self._runner_or_warn()
        if runner is None:
            return
        if not runner.hold_for_note():
            self.app.notify("Notes go to a running or paused debate: press n to start one.", severity="warning", markup=False)
            return
        from tui.screens.note import NoteScreen

        async def deliver(text: str | None) -> None:
            await runner.note(text)

        self.app.push_screen(NoteScreen(), deliver)

    def action_fork(self) -> None:
        if self.debate_id is None:
            self.app.notify("Open or run a debate first, then fork it from one of its turns.", severity="warning", markup=False)
            return
        self.bonsai.choose_fork(self.debate_id)
