"""Run and resume debates: validate everything first, then drive the compiled graph and relay its
custom stream.

Nothing is written before the whole debate has been validated (personas, format, adapters against
the base, the motion against the context window), so a bad input leaves no half-made debate behind.
Each node writes its turn to the store when it completes and the checkpointer saves the state after
every node (``durability="sync"``), so an interrupted debate resumes at the turn that was in flight.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bonsai.adapter_registry import resolve_persona_adapter
from bonsai.debate.formats import DebateFormat, load_format
from bonsai.debate.graph import DebateContext, build_graph
from bonsai.debate.prompts import debater_prompt
from bonsai.debate.schedule import Cast, Slot, build_schedule
from bonsai.engine import AdapterRef, Engine
from bonsai.engine.adapters import inspect_adapter
from bonsai.errors import BonsaiError, ConfigError, DebateNotFound, PromptTooLong
from bonsai.personas import PersonaBook
from bonsai.store.records import DebateRecord
from bonsai.store.transcripts import TranscriptStore

log = logging.getLogger(__name__)


class DebateSpec(BaseModel):
    """What a user asks for. Validated at the edge (CLI, sweep file, TUI form)."""

    model_config = ConfigDict(extra="forbid")

    motion: str = Field(description="The motion team A argues for and team B against.")
    personas: list[str] | None = Field(None, description="Persona names to seat; empty seats get defaults.")
    format: str = Field("standard", description="A built-in format name or a YAML path.")
    rounds: int = Field(2, ge=1, le=50)
    candidates: int = Field(1, ge=1, le=32, description="Best-of-N: candidates sampled per debater turn.")
    seed: int | None = None
    max_tokens: int | None = Field(None, ge=1, le=8192, description="Overrides every debater turn's max_tokens.")
    sweep: str | None = None
    adapters: dict[str, str | None] | None = Field(None, description="Persona -> adapter folder, pinned at start (resume uses these).")

    @field_validator("motion")
    @classmethod
    def _motion_not_empty(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("the motion is empty")
        return v


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


def adapter_refs(prepared: PreparedDebate) -> dict[str, AdapterRef | None]:
    return {name: (inspect_adapter(path) if path else None) for name, path in prepared.adapter_paths.items()}


class DebateRunner:
    """Owns the compiled graph and its checkpointer for the lifetime of an engine session."""

    def __init__(self, engine: Engine, store: TranscriptStore, checkpoints: Path, book: PersonaBook, home: Path, base_model: str) -> None:
        self.engine = engine
        self.store = store
        self.checkpoints = checkpoints
        self.book = book
        self.home = home
        self.base_model = base_model
        self._stack = contextlib.AsyncExitStack()
        self._graph: Any = None

    async def __aenter__(self) -> DebateRunner:
        self.checkpoints.parent.mkdir(parents=True, exist_ok=True)
        saver = await self._stack.enter_async_context(AsyncSqliteSaver.from_conn_string(str(self.checkpoints)))
        self._graph = build_graph().compile(checkpointer=saver)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def graph(self) -> Any:
        assert self._graph is not None, "use `async with DebateRunner(...)`"
        return self._graph

    async def _context(self, prepared: PreparedDebate) -> DebateContext:
        refs = adapter_refs(prepared)
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
        )

    def _check_motion_fits(self, ctx: DebateContext, motion: str) -> None:
        first = next(s for s in ctx.schedule if s.kind == "debater")
        persona = ctx.personas[first.speaker]
        prompt = debater_prompt(persona, motion, [], first)
        used = self.engine.count_tokens(prompt)
        need = ctx.max_tokens or first.max_tokens or persona.sampling.max_tokens
        limit = self.engine.info.max_model_len
        if used + need > limit:
            raise PromptTooLong(
                f"the motion is too long: the first prompt takes {used} tokens, leaving no room for a {need}-token answer in the {limit}-token context",
                "shorten the motion (a sentence or two is plenty)",
            )

    async def start(self, spec: DebateSpec, *, debate_id: str | None = None) -> tuple[str, DebateContext]:
        """Validate and record a new debate; returns its id and context (nothing is written if invalid)."""
        prepared = plan_debate(spec, self.book, self.home)
        ctx = await self._context(prepared)
        self._check_motion_fits(ctx, spec.motion)
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
                config={"spec": pinned.model_dump(mode="json"), "adapters": {k: (v.name if v else None) for k, v in ctx.adapters.items()}},
            )
        )
        return debate_id, ctx

    async def run(self, spec: DebateSpec, *, debate_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        debate_id, ctx = await self.start(spec, debate_id=debate_id)
        initial = {
            "debate_id": debate_id,
            "motion": spec.motion,
            "step": 0,
            "plan": [s.kind for s in ctx.schedule],
            "turns": [],
            "notes": [],
            "verdict": None,
        }
        yield {"event": "debate_start", "debate_id": debate_id, "motion": spec.motion, "seats": ctx.cast.seats(),
               "format": ctx.fmt.name, "rounds": spec.rounds, "schedule": [s.__dict__ for s in ctx.schedule], "resumed": False}
        async for ev in self._drive(debate_id, initial, ctx):
            yield ev

    async def resume(self, debate_id: str) -> AsyncIterator[dict[str, Any]]:
        record = self.store.get_debate(debate_id)
        if record.status == "finished":
            raise BonsaiError(f"debate {debate_id} has already finished (winner {record.winner})", f"see it with `bonsai transcripts show {debate_id}`")
        spec_data = record.config.get("spec")
        if not spec_data:
            raise ConfigError(f"debate {debate_id} has no stored settings to resume from")
        spec = DebateSpec.model_validate(spec_data)
        prepared = plan_debate(spec, self.book, self.home)
        ctx = await self._context(prepared)
        config = {"configurable": {"thread_id": debate_id}}
        snapshot = await self.graph.aget_state(config)
        if not snapshot.values:
            # Crashed before the first checkpoint: start the graph from the beginning under the same id.
            initial: dict[str, Any] | None = {
                "debate_id": debate_id, "motion": spec.motion, "step": 0, "plan": [s.kind for s in ctx.schedule],
                "turns": [], "notes": [], "verdict": None,
            }
        else:
            initial = None
        self.store.set_status(debate_id, "running")
        done = len(snapshot.values.get("turns", [])) if snapshot.values else 0
        yield {"event": "debate_start", "debate_id": debate_id, "motion": spec.motion, "seats": ctx.cast.seats(),
               "format": ctx.fmt.name, "rounds": spec.rounds, "schedule": [s.__dict__ for s in ctx.schedule], "resumed": True,
               "turns_done": done}
        async for ev in self._drive(debate_id, initial, ctx):
            yield ev

    async def _drive(self, debate_id: str, initial: dict[str, Any] | None, ctx: DebateContext) -> AsyncIterator[dict[str, Any]]:
        config = {"configurable": {"thread_id": debate_id}}
        try:
            async for chunk in self.graph.astream(initial, config, context=ctx, stream_mode="custom", durability="sync"):
                yield chunk
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, (KeyboardInterrupt, GeneratorExit)) or type(exc).__name__ == "CancelledError" else "failed"
            with contextlib.suppress(Exception):
                self.store.set_status(debate_id, status)
            raise
        record = self.store.get_debate(debate_id)
        yield {"event": "debate_end", "debate_id": debate_id, "status": record.status, "winner": record.winner}


async def latest_unfinished(store: TranscriptStore) -> str:
    debates = [d for d in store.list_debates(newest_first=True) if d.status != "finished"]
    if not debates:
        raise DebateNotFound("there is no unfinished debate to resume", "list debates with `bonsai transcripts list`")
    return debates[0].debate_id
