"""The events a debate streams (through LangGraph's custom stream), as frozen dataclasses.

Every consumer (the CLI printer, the TUI, sweeps, the training loop and gate) matches on these types,
never on key strings. ``to_json()`` gives the JSON-able dict the CLI prints with ``--jsonl``; its keys
and their order are the wire format of that output, so they only grow. :func:`events_from_store`
rebuilds a stored debate's events (without per-token streaming), so a replay looks like a live run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from bonsai.debate.usage import turn_tokens
from bonsai.store.records import VerdictRecord

if TYPE_CHECKING:
    from bonsai.store.transcripts import TranscriptStore


@dataclass(frozen=True)
class _Event:
    #: the ``"event"`` key of the JSON form
    name: ClassVar[str]
    #: fields left out of the JSON form while they are None (they did not exist in that case before)
    _optional: ClassVar[tuple[str, ...]] = ()

    debate_id: str

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.name}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self._optional:
                continue
            out[f.name] = value
        return out


@dataclass(frozen=True)
class DebateStart(_Event):
    name: ClassVar[str] = "debate_start"
    _optional: ClassVar[tuple[str, ...]] = ("turns_done", "forked_from")

    motion: str
    seats: dict[str, list[str]]
    format: str
    rounds: int
    schedule: list[dict[str, Any]] = field(default_factory=list)
    resumed: bool = False
    #: turns already done when it (re)started: None for a fresh debate
    turns_done: int | None = None
    forked_from: dict[str, Any] | None = None


@dataclass(frozen=True)
class TurnStart(_Event):
    name: ClassVar[str] = "turn_start"

    turn: int
    speaker: str
    team: str  # "A" | "B" | "none"
    phase: str
    role: str  # "debater" | "moderator"
    candidates: int = 1
    adapter: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        if self.role == "moderator":
            del out["adapter"]  # moderator turns never named one
        return out


@dataclass(frozen=True)
class Token(_Event):
    name: ClassVar[str] = "token"

    turn: int
    speaker: str
    team: str
    phase: str
    role: str
    kind: Literal["reasoning", "answer"]
    text: str
    candidate: int = 0


@dataclass(frozen=True)
class TurnEnd(_Event):
    name: ClassVar[str] = "turn_end"
    _optional: ClassVar[tuple[str, ...]] = ("chosen",)

    turn: int
    speaker: str
    team: str
    role: str
    phase: str
    answer: str
    reasoning: str | None = None
    #: every token generated for the turn: all candidates and their scoring probes (see debate/usage.py)
    output_tokens: int = 0
    latency_s: float = 0.0
    adapter: str | None = None
    #: best-of-N: the kept candidate (None for moderator turns)
    chosen: int | None = None
    #: best-of-N: [{"index", "score", "answer"}]; empty for a single sample
    candidates: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Note(_Event):
    """A moderator note the debaters see before turn ``turn``."""

    name: ClassVar[str] = "note"

    turn: int
    text: str


@dataclass(frozen=True)
class Paused(_Event):
    """Held before step ``step`` (checkpointed, resumable)."""

    name: ClassVar[str] = "paused"

    step: int
    next_speaker: str
    next_team: str
    next_phase: str


@dataclass(frozen=True)
class Judging(_Event):
    name: ClassVar[str] = "judging"

    judges: list[str]


@dataclass(frozen=True)
class Verdict(_Event):
    """The panel's verdict as stored, and each judge's. Carries the records themselves, so a field the
    judge adds to its verdict reaches every consumer (and the JSON) without being copied here."""

    name: ClassVar[str] = "verdict"

    panel: VerdictRecord
    judges: list[VerdictRecord] = field(default_factory=list)

    @property
    def winner(self) -> str:
        return self.panel.winner

    @property
    def prob_a(self) -> float:
        return self.panel.prob_a

    @property
    def confidence(self) -> float | None:
        return self.panel.confidence

    @property
    def output_tokens(self) -> int:
        """Tokens every judge generated for this verdict (readings and probes)."""
        return sum(v.output_tokens for v in self.judges) if self.judges else self.panel.output_tokens

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.name,
            "debate_id": self.debate_id,
            **{k: v for k, v in self.panel.to_dict().items() if k != "debate_id"},
            "output_tokens": self.output_tokens,
            "judges": [v.to_dict() for v in self.judges],
        }


@dataclass(frozen=True)
class DebateEnd(_Event):
    name: ClassVar[str] = "debate_end"

    status: str  # finished | interrupted | failed | running
    winner: str | None = None


DebateEvent = DebateStart | TurnStart | Token | TurnEnd | Note | Paused | Judging | Verdict | DebateEnd


def generated_tokens(event: DebateEvent) -> int:
    """The tokens an event reports as generated (a turn's, or the judges' for a verdict): the one count
    budgets and progress add up, whichever way the debate ran."""
    if isinstance(event, (TurnEnd, Verdict)):
        return event.output_tokens
    return 0


def events_from_store(
    store: TranscriptStore, debate_id: str, *, schedule: Sequence[dict[str, Any]] = (), below: int | None = None, final: bool = True
) -> list[DebateEvent]:
    """A stored debate's events as a live run would have streamed them, each turn's text as one token.

    ``below``: only the turns before this index (a fork's inherited turns). ``final``: include the
    verdict and the end (a debate that will go on live stops after its turns). Moderator notes are
    not in the store, so they are not replayed."""
    record = store.get_debate(debate_id)
    turns = store.turns(debate_id)
    out: list[DebateEvent] = [
        DebateStart(record.debate_id, record.motion, record.seats, record.format, record.rounds, list(schedule),
                    False, len(turns), record.config.get("forked_from"))
    ]
    by_turn: dict[int, list[dict[str, Any]]] = {}
    chosen: dict[int, int] = {}
    for c in store.candidates(debate_id):
        by_turn.setdefault(c.turn_index, []).append({"index": c.candidate_index, "score": c.score, "answer": c.answer})
        if c.chosen:
            chosen[c.turn_index] = c.candidate_index
    for t in turns:
        if below is not None and t.turn_index >= below:
            break
        cands = by_turn.get(t.turn_index, [])
        out.append(TurnStart(debate_id, t.turn_index, t.speaker, t.team, t.phase, t.role, max(1, len(cands)), t.adapter_name))
        if t.reasoning:
            out.append(Token(debate_id, t.turn_index, t.speaker, t.team, t.phase, t.role, "reasoning", t.reasoning))
        out.append(Token(debate_id, t.turn_index, t.speaker, t.team, t.phase, t.role, "answer", t.answer))
        out.append(TurnEnd(debate_id, t.turn_index, t.speaker, t.team, t.role, t.phase, t.answer, t.reasoning, turn_tokens(t),
                           t.latency_s, t.adapter_name, chosen.get(t.turn_index, 0) if t.role == "debater" else None, cands))
    if not final:
        return out
    verdicts = store.verdicts(debate_id)
    if verdicts:
        panel = verdicts[-1]
        judges = [v for v in verdicts if v.judge != "panel"] or [panel]
        out.append(Judging(debate_id, [v.judge for v in judges]))
        out.append(Verdict(debate_id, panel, judges))
    out.append(DebateEnd(debate_id, record.status, record.winner))
    return out
