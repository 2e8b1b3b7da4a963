"""What the runner tells the screens: one small dataclass message per debate event (as Toad does).

The runner turns the debate graph's event dicts (see ``bonsai.debate.events``) into these and posts
them; widgets handle them with ``@on(...)`` and are never called from the backend. Replays of stored
debates post the same messages, so a replay and a live debate look alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from textual.message import Message


@dataclass
class DebateStarted(Message):
    debate_id: str
    motion: str
    seats: dict[str, list[str]]
    format: str
    rounds: int
    schedule: list[dict[str, Any]] = field(default_factory=list)
    #: the same debate goes on (after a pause or a restart): keep what is on screen
    resumed: bool = False
    turns_done: int = 0
    forked_from: dict[str, Any] | None = None
    #: a stored debate shown again, not a live one
    replay: bool = False
    #: persona -> the adapter version it speaks with (the registry version folder, e.g. "v3")
    adapters: dict[str, str] = field(default_factory=dict)


@dataclass
class TurnStarted(Message):
    debate_id: str
    turn: int
    speaker: str
    team: str  # "A" | "B" | "none"
    role: str  # "debater" | "moderator"
    phase: str
    adapter: str | None = None
    candidates: int = 1


@dataclass
class Token(Message):
    debate_id: str
    turn: int
    team: str
    role: str
    kind: Literal["reasoning", "answer"]
    text: str
    candidate: int = 0


@dataclass
class TurnDone(Message):
    debate_id: str
    turn: int
    speaker: str
    team: str
    role: str
    phase: str
    answer: str
    reasoning: str | None = None
    output_tokens: int = 0
    latency_s: float = 0.0
    adapter: str | None = None
    chosen: int = 0
    #: best-of-N: [{"index", "score", "answer"}]; empty for a single sample
    candidates: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class NoteAdded(Message):
    """A moderator note the debaters will see before turn ``turn``."""

    debate_id: str
    turn: int
    text: str


@dataclass
class Judging(Message):
    debate_id: str
    judges: list[str]


@dataclass
class Verdict(Message):
    debate_id: str
    winner: str
    prob_a: float
    confidence: float
    scores: dict[str, dict[str, float]]
    rationale: str = ""
    parsed: bool = True
    judges: list[str] = field(default_factory=list)


@dataclass
class Paused(Message):
    """The debate waits before turn ``step`` (checkpointed; safe to quit)."""

    debate_id: str
    step: int
    next_speaker: str
    next_team: str
    next_phase: str


@dataclass
class DebateEnded(Message):
    debate_id: str
    status: str
    winner: str | None


@dataclass
class Throughput(Message):
    """Tokens per second: a running estimate while a turn streams, the engine's count when it ends."""

    debate_id: str
    tokens_per_s: float
    final: bool = False


@dataclass
class EngineStatus(Message):
    state: Literal["starting", "ready", "failed"]
    detail: str = ""


@dataclass
class Failed(Message):
    """Something went wrong; the app keeps running and shows it."""

    message: str
    hint: str | None = None
    debate_id: str | None = None


@dataclass
class RunnerState(Message):
    """The runner's own state changed (running, pausing, paused, ...), for the status line."""

    debate_id: str | None
    state: str


def from_event(ev: dict[str, Any]) -> Message | None:
    """The message for one graph event (None for events the screens do not show)."""
    kind = ev.get("event")
    did = ev.get("debate_id", "")
    if kind == "debate_start":
        return DebateStarted(did, ev["motion"], ev["seats"], ev["format"], ev["rounds"], ev.get("schedule", []),
                             bool(ev.get("resumed")), int(ev.get("turns_done", 0)), ev.get("forked_from"))
    if kind == "turn_start":
        return TurnStarted(did, ev["turn"], ev["speaker"], ev["team"], ev["role"], ev["phase"], ev.get("adapter"), int(ev.get("candidates", 1)))
    if kind == "token":
        return Token(did, ev["turn"], ev["team"], ev.get("role", "debater"), ev["kind"], ev["text"], int(ev.get("candidate", 0)))
    if kind == "turn_end":
        return TurnDone(did, ev["turn"], ev["speaker"], ev["team"], ev["role"], ev["phase"], ev["answer"], ev.get("reasoning"),
                        int(ev.get("output_tokens", 0)), float(ev.get("latency_s", 0.0)), ev.get("adapter"), int(ev.get("chosen", 0) or 0),
                        list(ev.get("candidates") or []))
    if kind == "note":
        return NoteAdded(did, ev["turn"], ev["text"])
    if kind == "judging":
        return Judging(did, list(ev.get("judges", [])))
    if kind == "verdict":
        return Verdict(did, ev["winner"], float(ev["prob_a"]), float(ev["confidence"]), ev.get("scores", {}), ev.get("rationale", ""),
                       bool(ev.get("parsed", True)), [j.get("judge", "") for j in ev.get("judges", [])])
    if kind == "paused":
        return Paused(did, ev["step"], ev["next_speaker"], ev["next_team"], ev["next_phase"])
    if kind == "debate_end":
        return DebateEnded(did, ev["status"], ev.get("winner"))
    return None
