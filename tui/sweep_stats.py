"""Sweep progress and per-persona win rates, read from the transcript store.

Sweeps (issue 4) do not exist yet as objects of their own: a sweep is the set of debates whose
``sweep`` column carries its name, so progress is finished / all of them, and the ratings table is
each debater persona's record over the finished ones.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from bonsai.store.records import DebateRecord


@dataclass
class PersonaRecord:
    persona: str
    team: str
    played: int = 0
    wins: int = 0

    @property
    def losses(self) -> int:
        return self.played - self.wins

    @property
    def win_rate(self) -> float:
        return self.wins / self.played if self.played else 0.0


@dataclass
class SweepSummary:
    name: str
    total: int
    statuses: Counter[str] = field(default_factory=Counter)
    personas: list[PersonaRecord] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.statuses.get("finished", 0)


def sweep_names(debates: list[DebateRecord]) -> list[str]:
    return sorted({d.sweep for d in debates if d.sweep})


def summarize(name: str, debates: list[DebateRecord]) -> SweepSummary:
    mine = [d for d in debates if d.sweep == name]
    summary = SweepSummary(name, len(mine), Counter(d.status for d in mine))
    records: dict[tuple[str, str], PersonaRecord] = {}
    for d in mine:
        if d.status != "finished" or d.winner not in ("A", "B"):
            continue
        for team in ("A", "B"):
            for persona in d.seats.get(team, []):
                rec = records.setdefault((persona, team), PersonaRecord(persona, team))
                rec.played += 1
                rec.wins += d.winner == team
    summary.personas = sorted(records.values(), key=lambda r: (-r.win_rate, -r.played, r.persona, r.team))
    return summary
