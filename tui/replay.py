"""Stored debates shown as they ran: their events from the store, posted as the live run posts them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.message import Message

from bonsai.debate import events as ev
from bonsai.debate.events import events_from_store
from bonsai.debate.runner import DebateSpec, plan_debate
from bonsai.errors import BonsaiError, ConfigError
from bonsai.personas import PersonaBook
from bonsai.store.records import DebateRecord
from bonsai.store.transcripts import TranscriptStore
from tui.messages import DebateStarted, Throughput, Token, from_event


def adapter_versions(record: DebateRecord) -> dict[str, str]:
    """Persona -> the version its adapter was pinned at (the folder name: ``adapters/<persona>/<version>``)."""
    pinned = (record.config.get("spec") or {}).get("adapters") or {}
    return {persona: Path(path).name for persona, path in pinned.items() if path}


def stored_spec(record: DebateRecord) -> DebateSpec:
    data = record.config.get("spec")
    if not data:
        raise ConfigError(f"debate {record.debate_id} has no stored settings to go on from")
    return DebateSpec.model_validate(data)


class Replayer:
    """Posts a stored debate's messages to ``post``; with a ``delay`` the answers come word by word."""

    def __init__(self, store: TranscriptStore, book: PersonaBook, home: Path, post: Callable[[Message], None], delay: float = 0.0) -> None:
        self.store = store
        self.book = book
        self.home = home
        self.post = post
        self.delay = delay

    def _schedule(self, record: DebateRecord) -> list[dict[str, Any]]:
        try:
            return [s.__dict__ for s in plan_debate(stored_spec(record), self.book, self.home).schedule]
        except BonsaiError:
            return []  # a persona or format that is gone: the turns still show, without the plan

    async def record(self, record: DebateRecord, *, final: bool) -> None:
        """The whole debate; ``final``: it will not go on here (its end is shown as an end)."""
        await self._replay(events_from_store(self.store, record.debate_id, schedule=self._schedule(record), final=final), record)

    async def turns(self, debate_id: str, *, below: int | None = None) -> None:
        """The turns only (a fork shows its parent's turns below the one it branched at)."""
        await self._replay(events_from_store(self.store, debate_id, below=below, final=False)[1:], None)

    async def _replay(self, events: list[ev.DebateEvent], record: DebateRecord | None) -> None:
        """Post a stored debate's events as the live run would (the start marked as a replay)."""
        for event in events:
            message = from_event(event)
            if isinstance(message, DebateStarted) and record is not None:
                message.replay, message.adapters = True, adapter_versions(record)
            if isinstance(event, ev.Token) and event.kind == "answer" and self.delay:
                for piece in self._chunks(event.text):
                    self.post(Token(event.debate_id, event.turn, event.team, event.role, "answer", piece))
                    await asyncio.sleep(self.delay)
                continue
            if message is not None:
                self.post(message)
            if isinstance(event, ev.TurnEnd):
                if event.role == "debater" and event.latency_s > 0 and event.output_tokens > 0:
                    self.post(Throughput(event.debate_id, event.output_tokens / event.latency_s, final=True))
                await asyncio.sleep(0)

    def _chunks(self, text: str) -> list[str]:
        if not self.delay:
            return [text]
        words = text.split(" ")
        return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
