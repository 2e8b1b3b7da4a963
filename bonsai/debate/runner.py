"""Run and resume debates: validate everything first, then drive the compiled graph and relay its
custom stream.

Nothing is written before the whole debate has been validated (personas, format, adapters against
the base, the motion against the context window), so a bad input leaves no half-made debate behind.
Each node writes its turn to the store when it completes and the checkpointer saves the state after
every node (``durability="sync"``), so an interrupted debate resumes at the turn that was in flight. A
sweep's runner queues the saves instead (``queue_checkpoints``, ``checkpoint_queue.py``): the next turn
goes to the engine at once, and a killed process can lose the last turn or two of each debate in flight.
A front end can also hold a run between turns (``gate``: pause, step, moderator notes through a
LangGraph interrupt) and fork a new debate from any earlier turn's checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.types import Command

from bonsai.registry import resolve_persona_adapter
from bonsai.debate import events as ev
from bonsai.debate.checkpoint_queue import QueuedSqliteSaver
from bonsai.debate.checkpoints import prune_finished, strict_serializer
from bonsai.debate.formats import DebateFormat, load_format
from bonsai.debate.graph import DebateContext, build_graph, turn_summary
from bonsai.debate.prompts import debater_prompt
from bonsai.debate.schedule import Cast, Slot, build_schedule
from bonsai.debate.spec import DebateSpec
from bonsai.engine import AdapterRef, Engine
from bonsai.registry.identity import AdapterInspector, inspect_adapter
from bonsai.errors import BonsaiError, ConfigError, DebateNotFound, PromptTooLong
from bonsai.personas import PersonaBook
from bonsai.store import db as store_db
from bonsai.store.db import unavailable
from bonsai.store.records import DebateRecord, DebateStatus
from bonsai.store.transcripts import TranscriptStore

log = logging.getLogger(__name__)

#: Asked before each slot with the step about to run; True holds the debate there (see DebateContext.gate).
Gate = Callable[[int], bool]


@dataclass
class PreparedDebate:
    spec: DebateSpec
    fmt: DebateFormat
    cast: Cast
    schedule: list[Slot]
    adapter_paths: dict[str, Path | None]


def plan_debate(spec: DebateSpec, book: PersonaBook, home: Path) -> PreparedDebate:
    """Seat the cast and resolve adapter folders (no engine needed: used to size the engine too)."""
    fmt = load_format(spec.format)
    cast = Cast.from_names(book, spec.personas)
    if spec.adapters is not None:
        paths = {name: (Path(p) if p else None) for name, p in spec.adapters.items()}
        missing = [p.name for p in cast.everyone() if p.name not in paths]
        for name in missing:
            paths[name] = resolve_persona_adapter(book.get(name), home)
    else:
        paths = {p.name: resolve_persona_adapter(p, home) for p in cast.everyone()}
    return PreparedDebate(spec, fmt, cast, build_schedule(fmt, spec.rounds, cast), paths)


def adapter_refs(prepared: PreparedDebate, inspector: AdapterInspector | None = None) -> dict[str, AdapterRef | None]:
    inspect = inspector.inspect if inspector is not None else inspect_adapter
    return {name: (inspect(path) if path else None) for name, path in prepared.adapter_paths.items()}


class DebateRunner:
    """Owns the compiled graph and its checkpointer for the lifetime of an engine session."""

    def __init__(
        self, engine: Engine, store: TranscriptStore, checkpoints: Path, book: PersonaBook, home: Path, base_model: str,
        inspector: AdapterInspector | None = None, judge_engine: Engine | None = None, *, queue_checkpoints: bool = False,
    ) -> None:
        """``inspector``: the one the command already used for its checks, so no adapter is hashed twice.
        ``judge_engine``: the judge's own engine (another model, another server); None: the debaters' engine.
        ``queue_checkpoints``: save each turn's checkpoint behind the next turn instead of before it (sweeps:
        many debates share the one checkpoint connection; see ``checkpoint_queue.py`` for what changes)."""
        self.engine = engine
        self.store = store
        self.checkpoints = checkpoints
        self.book = book
        self.home = home
        self.base_model = base_model
        self._stack = contextlib.AsyncExitStack()
        self._graph: Any = None
        self._inspector = inspector or AdapterInspector()
        self.judge_engine = judge_engine
        self.queue_checkpoints = queue_checkpoints
        # queued: LangGraph hands each checkpoint over while the next node runs, and the queue keeps it in order
        self._durability = "async" if queue_checkpoints else "sync"

    async def __aenter__(self) -> DebateRunner:
        self.checkpoints.parent.mkdir(parents=True, exist_ok=True)
        # the store's busy timeout, which the "locked" message quotes (sqlite3's default is 5 s)
        conn = await self._stack.enter_async_context(aiosqlite.connect(str(self.checkpoints), timeout=store_db.BUSY_TIMEOUT_MS / 1000))
        # WAL (set by the saver) with synchronous=NORMAL: a commit survives the process being killed, and
        # only an OS crash can lose the last ones. The default (FULL) syncs the disk on every checkpoint,
        # and with hundreds of debates sharing this one connection those syncs became the bottleneck.
        await conn.execute("PRAGMA synchronous=NORMAL")
        # a tampered checkpoint is refused, never run
        if self.queue_checkpoints:
            saver = QueuedSqliteSaver(conn, serde=strict_serializer())
            self._stack.push_async_callback(saver.close_queue)  # before the connection closes (the stack unwinds in reverse)
        else:
            saver = AsyncSqliteSaver(conn, serde=strict_serializer())
        self._graph = build_graph().compile(checkpointer=saver)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def graph(self) -> Any:
        assert self._graph is not None, "use `async with DebateRunner(...)`"
        return self._graph

    async def _context(self, prepared: PreparedDebate, gate: Gate | None = None, *, stream_tokens: bool = True) -> DebateContext:
        refs = {name: (await self._inspector.ainspect(path) if path else None) for name, path in prepared.adapter_paths.items()}
        for ref in refs.values():
            if ref is not None:
                await self.engine.add_adapter(ref)
        return DebateContext(
            engine=self.engine,
            store=self.store,
            cast=prepared.cast,
            fmt=prepared.fmt,
            schedule=prepared.schedule,
            adapters=refs,
            base_model=self.base_model,
            candidates=prepared.spec.candidates,
            seed=prepared.spec.seed,
            max_tokens=prepared.spec.max_tokens,
            gate=gate,
            stream_tokens=stream_tokens,
            judge_engine=self.judge_engine,
        )

    async def _check_motion_fits(self, ctx: DebateContext, motion: str) -> None:
        """The first debater's prompt through the engine's own length check, before anything is written."""
        first = next(s for s in ctx.schedule if s.kind == "debater")
        persona = ctx.personas[first.speaker]
        need = ctx.max_tokens or first.max_tokens or persona.sampling.max_tokens
        try:
            await self.engine.check_room(debater_prompt(persona, motion, [], first), need)
        except PromptTooLong as exc:
            raise PromptTooLong(f"the motion is too long: {exc.message}", "shorten the motion (a sentence or two is plenty)") from None

    async def check(self, spec: DebateSpec) -> None:
        """Everything ``start`` validates (personas, format, adapters loaded in the engine, the motion's
        fit in the context), writing nothing: a sweep checks each distinct debate set-up before the first runs."""
        prepared = plan_debate(spec, self.book, self.home)
        ctx = await self._context(prepared)
        await self._check_motion_fits(ctx, spec.motion)

    async def start(
        self, spec: DebateSpec, *, debate_id: str | None = None, gate: Gate | None = None, extra: dict[str, Any] | None = None,
        stream_tokens: bool = True, prepared: PreparedDebate | None = None,
    ) -> tuple[str, DebateContext]:
        """Validate and record a new debate; returns its id and context (nothing is written if invalid).

        ``extra`` is stored with the debate's settings (a sweep records which competitor sat where).
        ``prepared``: the plan the caller already made of ``spec`` (for its own checks), so it is not made twice."""
        prepared = prepared if prepared is not None else plan_debate(spec, self.book, self.home)
        ctx = await self._context(prepared, gate, stream_tokens=stream_tokens)
        await self._check_motion_fits(ctx, spec.motion)
        debate_id = debate_id or uuid.uuid4().hex[:12]
        pinned = spec.model_copy(update={"adapters": {k: (str(v) if v else None) for k, v in prepared.adapter_paths.items()}})
        self.store.create_debate(
            DebateRecord(
                debate_id=debate_id,
                motion=spec.motion,
                format=prepared.fmt.name,
                rounds=spec.rounds,
                base_model=self.base_model,
                engine=self.engine.info.kind,
                seats=prepared.cast.seats(),
                seed=spec.seed,
                candidates=spec.candidates,
                created_at=time.time(),
                sweep=spec.sweep,
                config={**(extra or {}), "spec": pinned.model_dump(mode="json"), "adapters": {k: (v.name if v else None) for k, v in ctx.adapters.items()}},
            )
        )
        return debate_id, ctx

    async def run(
        self, spec: DebateSpec, *, debate_id: str | None = None, gate: Gate | None = None, extra: dict[str, Any] | None = None,
        stream_tokens: bool = True, prepared: PreparedDebate | None = None,
    ) -> AsyncIterator[ev.DebateEvent]:
        """``stream_tokens=False``: no ``token`` events (turns still end with their full text)."""
        debate_id, ctx = await self.start(spec, debate_id=debate_id, gate=gate, extra=extra, stream_tokens=stream_tokens, prepared=prepared)
        start = _start_event(debate_id, spec, ctx)
        # aclosing: a consumer that stops reading closes the graph run now, so its status is recorded
        async with contextlib.aclosing(self._drive(start, _initial_state(debate_id, spec.motion, ctx), ctx)) as events:
            async for event in events:
                yield event

    async def resume(
        self, debate_id: str, *, gate: Gate | None = None, note: str | None = None, stream_tokens: bool = True
    ) -> AsyncIterator[ev.DebateEvent]:
        """Go on from the last checkpoint. A debate held between turns (see ``gate``) goes on from where it
        waits, taking ``note`` as a moderator note; ``note`` is refused for a debate that is not waiting."""
        record = self.store.get_debate(debate_id)
        if record.status == DebateStatus.FINISHED:
            raise BonsaiError(f"debate {debate_id} has already finished (winner {record.winner})", f"see it with `bonsai transcripts show {debate_id}`")
        spec_data = record.config.get("spec")
        if not spec_data:
            raise ConfigError(f"debate {debate_id} has no stored settings to resume from")
        spec = DebateSpec.model_validate(spec_data)
        prepared = plan_debate(spec, self.book, self.home)
        ctx = await self._context(prepared, gate, stream_tokens=stream_tokens)
        config = {"configurable": {"thread_id": debate_id}}
        try:
            snapshot = await self.graph.aget_state(config)
        except sqlite3.Error as exc:
            raise unavailable(self.checkpoints, exc, what="checkpoint file") or exc from exc
        waiting = bool(snapshot.interrupts)
        if note is not None and not waiting:
            raise BonsaiError(f"debate {debate_id} is not waiting between turns, so it cannot take a note", "pause it first")
        initial: dict[str, Any] | Command | None
        if waiting:
            # Held at the steer node (paused in the TUI): answer its interrupt, with the note if any.
            initial = Command(resume={"note": note})
        elif not snapshot.values:
            # Crashed before the first checkpoint: start the graph from the beginning under the same id.
            initial = _initial_state(debate_id, spec.motion, ctx)
        else:
            initial = None
        self.store.set_status(debate_id, DebateStatus.RUNNING)
        done = len([t for t in snapshot.values.get("turns", []) if not t.get("note")]) if snapshot.values else 0
        start = _start_event(debate_id, spec, ctx, resumed=True, turns_done=done)
        # aclosing: a consumer that stops reading closes the graph run now, so its status is recorded
        async with contextlib.aclosing(self._drive(start, initial, ctx)) as events:
            async for event in events:
                yield event

    async def fork(
        self, debate_id: str, at_turn: int, *, new_id: str | None = None, gate: Gate | None = None
    ) -> AsyncIterator[ev.DebateEvent]:
        """A new debate that shares ``debate_id``'s first ``at_turn`` turns and goes on from there.

        Its state comes from the source's checkpoint taken just before turn ``at_turn`` (notes given
        before earlier turns included); the store's turns and candidates before that turn are copied
        under the new id, so the fork is a complete debate of its own (resumable, exportable).
        """
        source = self.store.get_debate(debate_id)
        spec_data = source.config.get("spec")
        if not spec_data:
            raise ConfigError(f"debate {debate_id} has no stored settings to fork from")
        spec = DebateSpec.model_validate({**spec_data, "sweep": None})
        prepared = plan_debate(spec, self.book, self.home)
        if not 0 <= at_turn <= len(prepared.schedule):
            raise ConfigError(f"debate {debate_id} has turns 0 to {len(prepared.schedule) - 1}; cannot fork at turn {at_turn}", "pick one of its turns")
        values = await self._state_before(debate_id, at_turn, prepared)
        ctx = await self._context(prepared, gate)
        new_id = new_id or uuid.uuid4().hex[:12]
        self.store.create_debate(
            dataclasses.replace(
                source,
                debate_id=new_id,
                engine=self.engine.info.kind,
                base_model=self.base_model,
                created_at=time.time(),
                status=DebateStatus.RUNNING,
                winner=None,
                finished_at=None,
                sweep=None,
                config={**source.config, "spec": spec.model_dump(mode="json"), "forked_from": {"debate_id": debate_id, "turn": at_turn}},
            )
        )
        for turn in self.store.turns(debate_id):
            if turn.turn_index < at_turn:
                self.store.record_turn(dataclasses.replace(turn, debate_id=new_id))
        self.store.record_candidates(
            dataclasses.replace(c, debate_id=new_id) for c in self.store.candidates(debate_id) if c.turn_index < at_turn
        )
        initial = {**values, "debate_id": new_id, "verdict": None}
        start = _start_event(new_id, spec, ctx, turns_done=at_turn, forked_from={"debate_id": debate_id, "turn": at_turn})
        # aclosing: a consumer that stops reading closes the graph run now, so its status is recorded
        async with contextlib.aclosing(self._drive(start, initial, ctx)) as events:
            async for event in events:
                yield event

    async def _state_before(self, debate_id: str, at_turn: int, prepared: PreparedDebate) -> dict[str, Any]:
        """The graph state just before ``at_turn`` ran: the oldest checkpoint at that step (before any note
        given there); without checkpoints (another machine's store), rebuilt from the stored turns."""
        config = {"configurable": {"thread_id": debate_id}}
        found: dict[str, Any] | None = None
        async for snap in self.graph.aget_state_history(config):
            if snap.values and snap.values.get("step") == at_turn:
                found = snap.values  # history is newest first: keep going to the oldest
        if found is not None:
            return {k: found[k] for k in ("motion", "step", "plan", "turns", "notes") if k in found}
        stored = [t for t in self.store.turns(debate_id) if t.turn_index < at_turn]
        if [t.turn_index for t in stored] != list(range(at_turn)):
            raise ConfigError(f"debate {debate_id} has not reached turn {at_turn} yet", "fork from a turn it has finished")
        log.warning("no checkpoint for debate %s; forking from its stored turns (moderator notes are not in the store)", debate_id)
        return {
            "motion": prepared.spec.motion,
            "step": at_turn,
            "plan": [s.kind for s in prepared.schedule],
            "turns": [turn_summary(prepared.schedule[t.turn_index], t.text, t.answer) for t in stored],
            "notes": [],
        }

    async def _drive(self, start: ev.DebateStart, initial: dict[str, Any] | Command | None, ctx: DebateContext) -> AsyncIterator[ev.DebateEvent]:
        """The start event, then the graph's own events, then how the run ended (paused or the end)."""
        yield start
        debate_id = start.debate_id
        config = {"configurable": {"thread_id": debate_id}}
        try:
            # the custom stream carries the nodes' event objects as they were written (no serialisation)
            async for chunk in self.graph.astream(initial, config, context=ctx, stream_mode="custom", durability=self._durability):
                yield chunk
        except BaseException as exc:
            status = DebateStatus.INTERRUPTED if isinstance(exc, (KeyboardInterrupt, GeneratorExit)) or type(exc).__name__ == "CancelledError" else DebateStatus.FAILED
            with contextlib.suppress(Exception):
                # a debate whose verdict is stored stays finished, whatever failed after it (its last checkpoint)
                if self.store.get_debate(debate_id).status != "finished":
                    self.store.set_status(debate_id, status)
            if isinstance(exc, sqlite3.Error):
                # the checkpointer's own connection (aiosqlite): the same one bonsai error as the store's
                raise unavailable(self.checkpoints, exc, what="checkpoint file") or exc from exc
            raise
        try:
            snapshot = await self.graph.aget_state(config)
        except sqlite3.Error as exc:
            raise unavailable(self.checkpoints, exc, what="checkpoint file") or exc from exc
        if snapshot.interrupts:
            # Held by the gate between turns: saved, and resumable like any interrupted debate.
            step = snapshot.values.get("step", 0)
            nxt = ctx.schedule[step] if step < len(ctx.schedule) else None
            self.store.set_status(debate_id, DebateStatus.INTERRUPTED)
            yield ev.Paused(debate_id, step, nxt.speaker if nxt else "judge", nxt.team if nxt else "none", nxt.title if nxt else "verdict")
            return
        record = self.store.get_debate(debate_id)
        if record.status == DebateStatus.FINISHED and not snapshot.values.get("notes"):  # keep only its last state (see checkpoints.py)
            try:
                await prune_finished(self.graph.checkpointer, debate_id)
            except sqlite3.Error as exc:  # the debate is done and stored; `bonsai transcripts vacuum` prunes it later
                log.warning("debate %s finished, but its checkpoints were not pruned: %s", debate_id, exc)
        yield ev.DebateEnd(debate_id, record.status, record.winner)


def _initial_state(debate_id: str, motion: str, ctx: DebateContext) -> dict[str, Any]:
    """The graph state a debate starts from (a fresh one, or one that crashed before its first checkpoint)."""
    return {"debate_id": debate_id, "motion": motion, "step": 0, "plan": [s.kind for s in ctx.schedule], "turns": [], "notes": [], "verdict": None}


def _start_event(
    debate_id: str, spec: DebateSpec, ctx: DebateContext, *, resumed: bool = False, turns_done: int | None = None,
    forked_from: dict[str, Any] | None = None,
) -> ev.DebateStart:
    return ev.DebateStart(debate_id, spec.motion, ctx.cast.seats(), ctx.fmt.name, spec.rounds, [s.__dict__ for s in ctx.schedule],
                          resumed, turns_done, forked_from)


async def latest_unfinished(store: TranscriptStore) -> str:
    debates = [d for d in store.list_debates(newest_first=True) if d.status != DebateStatus.FINISHED]
    if not debates:
        raise DebateNotFound("there is no unfinished debate to resume", "list debates with `bonsai transcripts list`")
    return debates[0].debate_id
