"""One finished debate as the ratings see it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    """One finished debate, as the store knows it."""

    debate_id: str
    motion: str
    a: str  # competitor label on side A
    b: str  # competitor label on side B
    winner: str  # "A", "B" or "tie"
    prob_a: float | None  # judge's P(A wins), averaged over both labellings
    confidence: float | None  # max(prob_a, 1-prob_a)
    judge: str
    format: str
    seed: int | None
    candidates: int
    tokens: int  # output tokens spent on the debate

    def __post_init__(self) -> None:
        # Checked here so a typo such as "a" or "draw" fails loudly instead of counting as a B win.
        if self.winner not in ("A", "B", "tie"):
            raise ValueError(f"debate {self.debate_id}: winner must be 'A', 'B' or 'tie', not {self.winner!r}")

    @property
    def tie(self) -> bool:
        return self.winner == "tie"

    @property
    def points_a(self) -> float:
        """What side A scored: 1 for a win, 0.5 for a tie, 0 for a loss."""
        return 1.0 if self.winner == "A" else 0.5 if self.winner == "tie" else 0.0

    def points(self, label: str) -> float:
        """What competitor ``label`` scored in this debate (it must have played it; self-play: side A's seat)."""
        return self.points_a if label == self.a else 1.0 - self.points_a

    @property
    def winner_label(self) -> str | None:
        """The winning competitor; None for a tie."""
        return None if self.tie else self.a if self.winner == "A" else self.b

    @property
    def loser_label(self) -> str | None:
        return None if self.tie else self.b if self.winner == "A" else self.a

    @property
    def self_play(self) -> bool:
        return self.a == self.b

