"""The TUI's backend: drives the debate graph and posts messages; never touches a widget.

One :class:`LiveRunner` per app. It owns the engine (started on first use, as `bonsai debate` does),
the :class:`~bonsai.debate.runner.DebateRunner` and the one debate task in flight, and answers the
graph's gate between turns: held by the user (pause), for a note being typed, or until the end of a
single step. A held debate is checkpointed and marked interrupted, so quitting at any moment loses
nothing: it resumes here or with `bonsai debate --resume`.

Where the engine comes from is ``tui.engines``; the gate is ``tui.control``; stored debates are shown
by ``tui.replay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

from textual.message import Message
from textual.message_pump import MessagePump

from bonsai.debate import events as ev
from bonsai.debate.runner import DebateRunner, DebateSpec, PreparedDebate, adapter_refs, plan_debate
from bonsai.registry.identity import AdapterInspector
from bonsai.errors import BonsaiError
from bonsai.locks import debate_lock, sweep_lock
from bonsai.paths import checkpoints_path
from bonsai.personas import PersonaBook
from bonsai.store.records import DebateStatus
from bonsai.store.transcripts import TranscriptStore
from tui.control import Control
from tui.engines import EngineSource
from tui.messages import (
    DebateStarted,
    EngineStatus,
    Failed,
    RunnerState,
    RunState,
    Throughput,
    from_event,
)
from tui.replay import Replayer, adapter_versions, stored_spec

log = logging.getLogger(__name__)

#: how often a running tokens/s estimate is posted while a turn streams
THROUGHPUT_EVERY_S = 0.5


class LiveRunner:
    """Runs, steers and replays debates for the screens, posting messages to ``target``."""

    def __init__(
        self,
        target: MessagePump,
        *,
        store: TranscriptStore,
        book: PersonaBook,
        home: Path,
        engines: EngineSource,
        checkpoints: Path | None = None,
        replay_delay: float = 0.0,
    ) -> None:
        self.target = target
        self.store = store
        self.book = book
        self.home = home
        self.engines = engines
        self.checkpoints = checkpoints or checkpoints_path(home)
        self.control = Control()
        self._replayer = Replayer(store, book, home, self._post, replay_delay)
        self.debate_id: str | None = None
        self.state = RunState.IDLE
        self.paused_at: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._debates: DebateRunner | None = None
        self._stack = contextlib.AsyncExitStack()
        #: the locks of a resumed debate (and its sweep), as `bonsai debate --resume` takes them: held
        #: through its pauses, until another debate is chosen or the app closes
        self._locks = contextlib.ExitStack()
        self._turn_t0 = 0.0
        self._turn_tokens = 0
        self._last_rate = 0.0

    # -- what the screens ask for -----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, spec: DebateSpec) -> None:
        await self.stop()
        self.control.reset()
        self._launch(self._start(spec))

    async def resume(self, debate_id: str) -> None:
        """Show a stored, unfinished debate and go on with it live."""
        await self.stop()
        self.control.reset()
        self._launch(self._resume(debate_id))

    async def fork(self, debate_id: str, turn: int) -> None:
        """A new debate from ``debate_id``'s checkpoint before ``turn``; it starts paused, ready for a note."""
        await self.stop()
        self.control.reset()
        self.control.holds.add("user")
        self._launch(self._fork(debate_id, turn))

    async def replay(self, debate_id: str) -> None:
        await self.stop()
        self.control.reset()
        self._launch(self._replay_all(debate_id))

    def toggle_pause(self) -> None:
        if self.state == RunState.PAUSED:
            self.proceed()
        elif self.state in (RunState.RUNNING, RunState.PAUSING, RunState.STARTING):
            if "user" in self.control.holds:
                self.control.holds.discard("user")
                self._set_state(RunState.RUNNING)
            else:
                self.control.holds.add("user")
                self._set_state(RunState.PAUSING)

    def proceed(self) -> None:
        """Go on from a pause."""
        self.control.holds.discard("user")
        self.control.until = None
        if self.state == RunState.PAUSED and not self.busy:
            self._launch(self._continue())
        elif self.state == RunState.PAUSING and not self.control.holds:
            self._set_state(RunState.RUNNING)

    def step(self) -> None:
        """Run exactly one more turn, then hold again (while running: hold after the current turn)."""
        if self.state == RunState.PAUSED and not self.busy and self.paused_at is not None:
            self.control.holds.discard("user")
            self.control.until = self.paused_at + 1
            self._launch(self._continue())
        elif self.state in (RunState.RUNNING, RunState.STARTING):
            self.control.holds.add("user")
            self._set_state(RunState.PAUSING)

    def hold_for_note(self) -> bool:
        """Hold the debate at the next turn while a note is typed; False if there is no debate to steer."""
        if self.state not in (RunState.RUNNING, RunState.PAUSING, RunState.PAUSED, RunState.STARTING):
            return False
        self.control.holds.add("note")
        if self.state in (RunState.RUNNING, RunState.STARTING):
            self._set_state(RunState.PAUSING)
        return True

    async def note(self, text: str | None) -> None:
        """Deliver a moderator note (None: the note was cancelled) and go on unless the user paused."""
        self.control.holds.discard("note")
        if text and text.strip():
            self.control.note = text.strip()
        if self.state == RunState.PAUSED and not self.busy:
            if self.control.note is not None or not self.control.gate(self.paused_at or 0):
                self._launch(self._continue())
        elif self.state == RunState.PAUSING and not self.control.holds and self.control.until is None:
            self._set_state(RunState.RUNNING)  # the note (if any) is delivered at the next turn's boundary

    async def stop(self) -> None:
        """Cancel the debate in flight; the graph marks it interrupted and its checkpoint keeps it."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self.state in (RunState.STARTING, RunState.RUNNING, RunState.PAUSING):
                self._set_state(RunState.STOPPED)
        self._locks.close()

    async def close(self) -> None:
        await self.stop()
        await self._stack.aclose()
        self._debates = None
        await self.engines.close()

    # -- the task -----------------------------------------------------------------------------------

    def _post(self, message: Message) -> None:
        self.target.post_message(message)

    def _set_state(self, state: RunState) -> None:
        self.state = state
        self._post(RunnerState(self.debate_id, state))

    def _launch(self, work: Coroutine[Any, Any, None]) -> None:
        self._task = asyncio.create_task(self._guard(work))

    async def _guard(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except BonsaiError as exc:
            self._fail(exc.message, exc.hint)
        except Exception as exc:  # the engine, the network: show it, keep the app alive
            log.exception("debate %s failed", self.debate_id)
            self._fail(f"{type(exc).__name__}: {exc}", None)

    def _fail(self, message: str, hint: str | None) -> None:
        log.warning("debate %s: %s (%s)", self.debate_id, message, hint)
        if hint is None and self.debate_id is not None:
            hint = f"debate {self.debate_id} is saved up to its last finished turn: resume it from the transcripts (t, then r)"
        self._post(Failed(message, hint, self.debate_id))
        self._set_state(RunState.FAILED if self.debate_id else RunState.IDLE)

    async def _debate_runner(self, spec: DebateSpec, prepared: PreparedDebate | None = None) -> DebateRunner:
        """The session's runner; the first debate's adapters size the engine (its plan, if made already)."""
        if self._debates is None:
            inspector = AdapterInspector()
            refs = list(adapter_refs(prepared or plan_debate(spec, self.book, self.home), inspector).values())
            self._post(EngineStatus("starting"))
            try:
                engine, base_name = await self.engines.acquire(refs)
            except BaseException as exc:
                self._post(EngineStatus("failed", getattr(exc, "message", str(exc))))
                raise
            self._post(EngineStatus("ready", engine.info.kind))
            self._debates = await self._stack.enter_async_context(
                DebateRunner(engine, self.store, self.checkpoints, self.book, self.home, base_name, inspector)
            )
        return self._debates

    async def _start(self, spec: DebateSpec) -> None:
        self.debate_id = None
        self._set_state(RunState.STARTING)
        prepared = plan_debate(spec, self.book, self.home)  # once: it sizes the engine and starts the debate
        debates = await self._debate_runner(spec, prepared)
        await self._pump(debates.run(spec, gate=self.control.gate, prepared=prepared))

    async def _resume(self, debate_id: str) -> None:
        record = self.store.get_debate(self.store.resolve_id(debate_id))
        if record.status == DebateStatus.FINISHED:
            raise BonsaiError(f"debate {record.debate_id} has already finished (winner {record.winner})", "open it to replay it, or fork it (f)")
        spec = stored_spec(record)
        # before anything starts: a debate another process is resuming (or its sweep running) is refused
        with contextlib.ExitStack() as held:  # on refusal, whatever was taken is let go
            if record.sweep:
                held.enter_context(sweep_lock(self.home, record.sweep))
            held.enter_context(debate_lock(self.home, record.debate_id))
            self._locks = held.pop_all()
        self.debate_id = record.debate_id
        self._set_state(RunState.STARTING)
        await self._replayer.record(record, final=False)
        debates = await self._debate_runner(spec)
        await self._pump(debates.resume(record.debate_id, gate=self.control.gate))

    async def _fork(self, debate_id: str, turn: int) -> None:
        record = self.store.get_debate(self.store.resolve_id(debate_id))
        spec = stored_spec(record)
        self._set_state(RunState.STARTING)
        debates = await self._debate_runner(spec)
        await self._pump(debates.fork(record.debate_id, turn, gate=self.control.gate))

    async def _continue(self) -> None:
        assert self._debates is not None and self.debate_id is not None
        note = self.control.take_note()
        self._set_state(RunState.RUNNING if not self.control.holds else RunState.PAUSING)
        await self._pump(self._debates.resume(self.debate_id, gate=self.control.gate, note=note))

    async def _pump(self, events: AsyncIterator[ev.DebateEvent]) -> None:
        """Relay one run of the graph; a hold that was lifted (or a note that came) meanwhile goes on at once."""
        current: AsyncIterator[ev.DebateEvent] | None = events
        while current is not None:
            nxt: AsyncIterator[ev.DebateEvent] | None = None
            async for event in current:
                if isinstance(event, ev.DebateStart):
                    self.debate_id = event.debate_id
                    started = from_event(event)
                    assert isinstance(started, DebateStarted)
                    started.adapters = adapter_versions(self.store.get_debate(self.debate_id))
                    self._post(started)
                    if event.forked_from:
                        await self._replayer.turns(self.debate_id, below=event.turns_done)
                    self.paused_at = None
                    self._set_state(RunState.PAUSING if self.control.holds or self.control.until is not None else RunState.RUNNING)
                    continue
                if isinstance(event, ev.Paused):
                    self.paused_at = event.step
                    if self.control.until is not None and event.step >= self.control.until:
                        self.control.until = None  # a step ends as a pause
                        self.control.holds.add("user")
                    if self.control.note is not None or not self.control.gate(event.step):
                        note = self.control.take_note()
                        assert self._debates is not None
                        nxt = self._debates.resume(event.debate_id, gate=self.control.gate, note=note)
                        continue
                    self._post(from_event(event))  # type: ignore[arg-type]
                    self._set_state(RunState.PAUSED)
                    continue
                self._account(event)
                message = from_event(event)
                if message is not None:
                    self._post(message)
                if isinstance(event, ev.DebateEnd):
                    self._set_state(RunState(event.status))
            current = nxt

    def _account(self, event: ev.DebateEvent) -> None:
        """Tokens per second: token events over wall time while streaming, the engine's count at the end."""
        now = time.monotonic()
        if isinstance(event, ev.TurnStart):
            self._turn_t0, self._turn_tokens, self._last_rate = now, 0, now
        elif isinstance(event, ev.Token):
            self._turn_tokens += 1
            if now - self._last_rate >= THROUGHPUT_EVERY_S and now > self._turn_t0:
                self._last_rate = now
                self._post(Throughput(event.debate_id, self._turn_tokens / (now - self._turn_t0)))
        elif isinstance(event, ev.TurnEnd) and event.role == "debater":
            if event.latency_s > 0 and event.output_tokens > 0:
                self._post(Throughput(event.debate_id, event.output_tokens / event.latency_s, final=True))

    # -- replays from the store --------------------------------------------------------------------

    async def _replay_all(self, debate_id: str) -> None:
        record = self.store.get_debate(self.store.resolve_id(debate_id))
        self.debate_id = record.debate_id
        self._set_state(RunState.REPLAY)
        await self._replayer.record(record, final=True)
        # "running" here means another process (a sweep) is still at it: this is only a look at it
        self._set_state(RunState(record.status) if record.status != DebateStatus.RUNNING else RunState.REPLAY)
