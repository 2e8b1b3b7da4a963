"""What the runner tells the screens: one small dataclass message per debate event (as Toad does).

The runner turns the debate's typed events (see ``bonsai.debate.events``) into these and posts
them; widgets handle them with ``@on(...)`` and are never called from the backend. Replays of stored
debates post the same messages, so a replay and a live debate look alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from textual.message import Message

from bonsai.debate import events as ev


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
    #: None: the judge's server returned no logprobs
    confidence: float | None
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


class RunState(StrEnum):
    """Where the TUI's runner stands; a debate that ended is in the state of its stored status."""

    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    #: asked to pause: it does at the next turn's boundary
    PAUSING = "pausing"
    PAUSED = "paused"
    STOPPED = "stopped"
    #: showing a stored debate, not running one
    REPLAY = "replay"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


@dataclass
class RunnerState(Message):
    """The runner's own state changed (running, pausing, paused, ...), for the status line."""

    debate_id: str | None
    state: RunState


def from_event(event: ev.DebateEvent) -> Message | None:
    """The message for one debate event (None for events the screens do not show)."""
    did = event.debate_id
    match event:
        case ev.DebateStart():
            return DebateStarted(did, event.motion, event.seats, event.format, event.rounds, list(event.schedule),
                                 event.resumed, event.turns_done or 0, event.forked_from)
        case ev.TurnStart():
            return TurnStarted(did, event.turn, event.speaker, event.team, event.role, event.phase, event.adapter, event.candidates)
        case ev.Token():
            return Token(did, event.turn, event.team, event.role, event.kind, event.text, event.candidate)
        case ev.TurnEnd():
            return TurnDone(did, event.turn, event.speaker, event.team, event.role, event.phase, event.answer, event.reasoning,
                            event.output_tokens, event.latency_s, event.adapter, event.chosen or 0, list(event.candidates))
        case ev.Note():
            return NoteAdded(did, event.turn, event.text)
        case ev.Judging():
            return Judging(did, list(event.judges))
        case ev.Verdict(panel=v):
            return Verdict(did, v.winner, v.prob_a, v.confidence, v.scores, v.rationale, v.parsed, [j.judge for j in event.judges])
        case ev.Paused():
            return Paused(did, event.step, event.next_speaker, event.next_team, event.next_phase)
        case ev.DebateEnd():
            return DebateEnded(did, event.status, event.winner)
    return None
