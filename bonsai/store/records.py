"""What the transcript store holds, as plain dataclasses (the debate graph produces them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class DebateStatus(StrEnum):
    """Where a stored debate stands. A ``str``, so it is the store's text column as it is."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    #: stopped between turns (Ctrl-C, a pause, a budget): resumable from its checkpoint
    INTERRUPTED = "interrupted"


class SweepStatus(StrEnum):
    """Where a stored sweep stands."""

    RUNNING = "running"
    FINISHED = "finished"
    #: ended with debates unfinished (a budget, failures): resumable
    INCOMPLETE = "incomplete"
    INTERRUPTED = "interrupted"


@dataclass
class DebateRecord:
    debate_id: str
    motion: str
    format: str
    rounds: int
    base_model: str
    engine: str
    #: persona name per seat, e.g. {"A": ["advocate"], "B": ["skeptic"], "judge": ["judge"], "moderator": ["moderator"]}
    seats: dict[str, list[str]]
    seed: int | None
    candidates: int
    created_at: float
    status: str = DebateStatus.RUNNING
    winner: str | None = None  # "A" | "B" | "tie" | None (no verdict yet)
    finished_at: float | None = None
    sweep: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TurnRecord:
    debate_id: str
    turn_index: int
    phase: str
    round: int
    speaker: str  # persona name
    team: str  # "A" | "B" | "none" (moderator lines)
    role: str  # debater | moderator
    text: str  # raw model output
    answer: str
    reasoning: str | None
    adapter_name: str | None
    adapter_hash: str | None
    base_model: str
    prompt_tokens: int
    output_tokens: int
    latency_s: float
    first_token_s: float | None
    sampling: dict[str, Any]
    seed: int | None
    finish_reason: str
    #: the prompt exactly as sent (messages as JSON, or Alpaca text): training rebuilds pairs from it
    prompt: Any = None
    created_at: float = 0.0
    #: every token generated for this turn: all best-of-N candidates and the judge probes that scored
    #: them (``output_tokens`` is the kept text's own). None: stored before bonsai counted it
    generated_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CandidateRecord:
    debate_id: str
    turn_index: int
    candidate_index: int
    text: str
    answer: str
    reasoning: str | None
    score: float  # judge's P(speaker's side wins | debate so far + this candidate)
    chosen: bool
    output_tokens: int
    finish_reason: str
    seed: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerdictRecord:
    debate_id: str
    judge: str  # persona name, or "panel" for the combined verdict
    winner: str  # "A" | "B" | "tie" (the readings disagree, or prob_a lies within tie_band of 0.5)
    prob_a: float  # P(team A wins), averaged over every reading (layouts x labellings)
    confidence: float | None  # max(prob_a, 1 - prob_a); None: the judge's server returned no logprobs
    scores: dict[str, dict[str, float]]  # team -> criterion -> score
    rationale: str
    parsed: bool  # whether the judge's JSON parsed (else winner comes from the logprobs alone)
    #: per reading: "layout" (spoken, or mirrored: each phase's speakers reversed; absent before ties
    #: existed, when every reading was spoken), "order" (labelling: "AB" team A called "A"; "BA" swapped),
    #: label probabilities, raw text and parse errors
    orders: list[dict[str, Any]]
    created_at: float = 0.0
    #: the band that decided a tie: |prob_a - 0.5| < tie_band; None for verdicts from before ties existed
    tie_band: float | None = None
    #: tokens this judge generated for the verdict (every reading and probe); 0 for the "panel" row,
    #: which only combines the judges' verdicts
    output_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SweepRecord:
    name: str
    grid_hash: str
    config: dict[str, Any]  # the resolved sweep (config + motions), as stored
    total: int
    status: str  # a SweepStatus
    created_at: float
    updated_at: float
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
