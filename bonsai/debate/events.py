"""The events a debate streams (through LangGraph's custom stream): plain JSON-able dicts, so the CLI
can print them as JSON lines and the TUI can turn them into messages. Every event carries the debate
id; token events also carry the turn, speaker, team, kind (reasoning or answer) and candidate."""

from __future__ import annotations

from typing import Any, Literal

EventType = Literal["debate_start", "turn_start", "token", "turn_end", "note", "paused", "judging", "verdict", "debate_end", "error"]


def event(kind: EventType, debate_id: str, **fields: Any) -> dict[str, Any]:
    return {"event": kind, "debate_id": debate_id, **fields}
