"""The graph's state: small on purpose. The motion, a cursor into the schedule, the kinds of the
remaining slots (so routing needs nothing but the state), the turns said so far (answers and raw
text only, appended through a reducer), and the verdict. Everything heavy lives in the store."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict


class DebateState(TypedDict, total=False):
    debate_id: str
    motion: str
    step: int
    plan: list[str]  # slot kinds in order: "moderator" | "debater"
    turns: Annotated[list[dict[str, Any]], operator.add]
    notes: Annotated[list[str], operator.add]  # moderator notes injected from outside (TUI)
    verdict: dict[str, Any] | None
