"""Sweep progress and per-competitor win rates, read from the transcript store.

A sweep's debates are those whose ``sweep`` column carries its name; ``bonsai sweep`` also records the
planned total (debates not started yet count too) and which competitor (``persona@version``) sat on each
side. Debates tagged by hand, without those records, are counted by persona over the debates present.
The full ratings (Bradley-Terry with intervals) are ``bonsai ratings``; this is the live glance.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from bonsai.store.records import DebateRecord, DebateStatus


@dataclass
class PersonaRecord:
    persona: str
    team: str
    played: int = 0
    wins: float = 0.0  # a tie counts half, as in `bonsai ratings`

    @property
    def losses(self) -> float:
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


def summarize(name: str, debates: list[DebateRecord], *, planned: int | None = None) -> SweepSummary:
    mine = [d for d in debates if d.sweep == name]
    summary = SweepSummary(name, max(planned or 0, len(mine)), Counter(d.status for d in mine))
    records: dict[tuple[str, str], PersonaRecord] = {}
    for d in mine:
        if d.status != DebateStatus.FINISHED or d.winner not in ("A", "B", "tie"):
            continue
        job = d.config.get("sweep_job") if isinstance(d.config, dict) else None
        for team in ("A", "B"):
            names = [str(job[team.lower()])] if isinstance(job, dict) and job.get(team.lower()) else d.seats.get(team, [])
            for persona in names:
                rec = records.setdefault((persona, team), PersonaRecord(persona, team))
                rec.played += 1
                rec.wins += 0.5 if d.winner == "tie" else float(d.winner == team)
    summary.personas = sorted(records.values(), key=lambda r: (-r.win_rate, -r.played, r.persona, r.team))
    return summary
