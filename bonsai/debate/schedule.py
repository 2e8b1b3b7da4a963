"""Who speaks when: the cast of a debate and its flattened schedule of speaking slots.

The schedule is a pure function of the format, the rounds and the cast, so a resumed debate
recomputes exactly the same slots and the graph's state only needs a cursor into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bonsai.debate.formats import DebateFormat
from bonsai.errors import ConfigError
from bonsai.personas import Persona, PersonaBook, Role, Team

SIDE_STANCE = {"A": "for", "B": "against"}


@dataclass(frozen=True)
class Cast:
    team_a: tuple[Persona, ...]
    team_b: tuple[Persona, ...]
    judges: tuple[Persona, ...]
    moderator: Persona | None

    def team(self, side: str) -> tuple[Persona, ...]:
        return self.team_a if side == "A" else self.team_b

    def seats(self) -> dict[str, list[str]]:
        return {
            "A": [p.name for p in self.team_a],
            "B": [p.name for p in self.team_b],
            "judge": [p.name for p in self.judges],
            "moderator": [self.moderator.name] if self.moderator else [],
        }

    def everyone(self) -> list[Persona]:
        people = [*self.team_a, *self.team_b, *self.judges]
        if self.moderator:
            people.append(self.moderator)
        return people

    @staticmethod
    def from_names(book: PersonaBook, names: list[str] | None) -> Cast:
        """Seat the named personas by their team and role; fill empty seats with the book's defaults.

        With no names: the first debater of each team (alphabetically), the persona called ``judge`` (or
        the first judge) and ``moderator`` (or the first moderator).
        """
        chosen = [book.get(n) for n in (names or [])]
        if len({p.name for p in chosen}) != len(chosen):
            raise ConfigError("a persona is named twice in --personas", "name each persona once")
        for p in chosen:
            if p.role in (Role.TRANSLATOR, Role.TEACHER):
                raise ConfigError(f"{p.name!r} is a {p.role.value} and cannot take a seat in a debate", "pick debaters, judges and a moderator")
        team_a = tuple(p for p in chosen if p.role == Role.DEBATER and p.team == Team.A)
        team_b = tuple(p for p in chosen if p.role == Role.DEBATER and p.team == Team.B)
        judges = tuple(p for p in chosen if p.role == Role.JUDGE)
        mods = [p for p in chosen if p.role == Role.MODERATOR]
        if len(mods) > 1:
            raise ConfigError("more than one moderator named in --personas", "name at most one moderator")

        def default(role: Role, team: Team | None, preferred: str) -> Persona | None:
            pool = sorted(book.by_role(role, team), key=lambda p: (p.name != preferred, p.name))
            return pool[0] if pool else None

        if not team_a:
            d = default(Role.DEBATER, Team.A, "advocate")
            team_a = (d,) if d else ()
        if not team_b:
            d = default(Role.DEBATER, Team.B, "skeptic")
            team_b = (d,) if d else ()
        if not judges:
            d = default(Role.JUDGE, None, "judge")
            judges = (d,) if d else ()
        moderator = mods[0] if mods else default(Role.MODERATOR, None, "moderator")
        if not team_a or not team_b:
            raise ConfigError("a debate needs at least one debater on team A and one on team B", "add one to --personas or to the personas folder")
        if not judges:
            raise ConfigError("a debate needs a judge", "add a persona with role: judge")
        return Cast(team_a, team_b, judges, moderator)


@dataclass(frozen=True)
class Slot:
    index: int
    kind: Literal["moderator", "debater"]
    phase: str
    title: str
    round: int
    speaker: str
    team: str  # "A" | "B" | "none"
    instruction: str
    max_tokens: int | None


def build_schedule(fmt: DebateFormat, rounds: int, cast: Cast) -> list[Slot]:
    slots: list[Slot] = []
    spoken = {"A": 0, "B": 0}
    for planned in fmt.schedule(rounds):
        spec = planned.spec
        if fmt.moderator != "off" and cast.moderator is not None:
            slots.append(
                Slot(len(slots), "moderator", spec.name, planned.title, planned.round, cast.moderator.name, "none", spec.instruction, None)
            )
        for side in spec.speakers:
            team = cast.team(side)
            speaker = team[spoken[side] % len(team)]
            spoken[side] += 1
            slots.append(
                Slot(len(slots), "debater", spec.name, planned.title, planned.round, speaker.name, side, spec.instruction, spec.max_tokens)
            )
    return slots
