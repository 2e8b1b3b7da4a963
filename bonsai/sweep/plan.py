"""From a validated sweep file to the exact list of debates, each with a stable id.

A competitor is an adapter: ``persona@version`` names the weights, and ``@base`` the bare base model. Seats
are personas (their prompts and sides); in the swapped assignment the two competitors' adapters trade
seats while the seats keep their prompts, the way the promotion gate evaluates, so side and speaking-order
bias cancel out of the ratings.

A debate's id is a hash of everything that decides it (sweep name, motion, competitors, seats,
assignment, seed, judge, format, rounds, candidates, max_tokens). Re-planning the same sweep gives the
same ids, which is what makes ``--resume`` run every debate exactly once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from bonsai.registry import CURRENT, persona_dir, resolve_persona_adapter, resolve_version, verify_version
from bonsai.debate.formats import load_format
from bonsai.debate.runner import DebateSpec
from bonsai.debate.schedule import Cast
from bonsai.errors import AdapterError, BonsaiError, ConfigError
from bonsai.personas import PersonaBook, Role, Team
from bonsai.sweep.config import ResolvedSweep

BASE = "base"


@dataclass(frozen=True)
class Competitor:
    label: str  # persona@version, the name ratings are reported under
    persona: str
    adapter: Path | None


class SweepJob(BaseModel):
    """One debate of the sweep: JSON-able, so it can travel to a Ray worker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    debate_id: str
    a: str  # label of the competitor on side A
    b: str
    assignment: int  # 0: as given, 1: swapped
    spec: DebateSpec

    def labels(self) -> dict[str, object]:
        """What the store keeps with the debate, so ratings need neither the sweep file nor the registry."""
        return {"a": self.a, "b": self.b, "assignment": self.assignment}


@dataclass
class SweepPlan:
    sweep: ResolvedSweep
    competitors: dict[str, Competitor]
    jobs: list[SweepJob]
    #: each pairing reference ("advocate", "skeptic@current", ...) -> the competitor it meant when the sweep
    #: started; stored, so a resumed sweep keeps its ids even after a promotion changed "current"
    resolved: dict[str, Competitor] = field(default_factory=dict)

    def resolved_json(self) -> dict[str, dict[str, str | None]]:
        return {ref: {"label": c.label, "persona": c.persona, "adapter": str(c.adapter) if c.adapter else None} for ref, c in self.resolved.items()}

    @property
    def name(self) -> str:
        return self.sweep.config.name


def resolve_competitor(ref: str, book: PersonaBook, home: Path, *, where: str) -> Competitor:
    """``persona`` (its own adapter setting), ``persona@base``, ``persona@current`` or ``persona@VERSION`` (or a prefix)."""
    name, _, version = ref.partition("@")
    try:
        persona = book.get(name)
    except BonsaiError:
        raise ConfigError(f"{where}: unknown persona {name!r}", f"known debaters: {', '.join(p.name for p in book.by_role(Role.DEBATER))}") from None
    if persona.role != Role.DEBATER:
        raise ConfigError(f"{where}: {name!r} is a {persona.role.value}, not a debater", "pairings name debaters; judges go under `judges:`")
    if not version:
        path = resolve_persona_adapter(persona, home)
        if path is None:
            return Competitor(f"{name}@{BASE}", name, None)
        # a registry version is named by its folder; so is a folder set by hand in the persona file
        return Competitor(f"{name}@{path.name}", name, path.resolve())
    if version == BASE:
        return Competitor(f"{name}@{BASE}", name, None)
    try:
        resolved = resolve_version(home, name, CURRENT if version == CURRENT else version)
        path = persona_dir(home, name) / resolved
        verify_version(path)
    except AdapterError as exc:
        raise AdapterError(f"{where}: {exc.message}", exc.hint) from None
    return Competitor(f"{name}@{resolved}", name, path.resolve())


def _seats(pairing_seats: tuple[str, str] | None, a: Competitor, b: Competitor, book: PersonaBook, *, where: str) -> tuple[str, str]:
    if pairing_seats is not None:
        for side, seat in zip(("A", "B"), pairing_seats, strict=True):
            try:
                p = book.get(seat)
            except BonsaiError:
                raise ConfigError(f"{where}.seats: unknown persona {seat!r}", "seats name a team A debater, then a team B debater") from None
            if p.role != Role.DEBATER or p.team.value != side:
                raise ConfigError(f"{where}.seats: {seat!r} is not a team {side} debater", "seats name a team A debater, then a team B debater")
        return pairing_seats

    def seat(side: Team) -> str:
        for c in (a, b):
            if book.get(c.persona).team == side:
                return c.persona
        return Cast.from_names(book, None).team(side.value)[0].name

    seat_a, seat_b = seat(Team.A), seat(Team.B)
    return seat_a, seat_b


def debate_id(name: str, key: dict[str, object]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return f"{name}-{digest[:12]}"


def _pinned(ref: str, stored: dict[str, str | None], *, where: str) -> Competitor:
    """A competitor as resolved when the sweep started; its adapter folder must still be there, unchanged."""
    adapter = Path(stored["adapter"]) if stored.get("adapter") else None
    if adapter is not None:
        if not (adapter / "adapter_config.json").is_file():
            raise AdapterError(f"{where}: {ref} meant the adapter {adapter} when the sweep started, and it is gone", "restore the folder, or run the grid as a new sweep (another name)")
        verify_version(adapter)
    return Competitor(str(stored["label"]), str(stored["persona"]), adapter)


def plan_sweep(
    sweep: ResolvedSweep, book: PersonaBook, home: Path, *, resolved: dict[str, dict[str, str | None]] | None = None
) -> SweepPlan:
    """Every debate of the grid, in a stable order; raises on the first name that does not resolve.

    ``resolved`` is the stored resolution of a sweep being resumed (see ``SweepPlan.resolved``)."""
    cfg = sweep.config
    for i, judge in enumerate(cfg.judges):
        try:
            p = book.get(judge)
        except BonsaiError:
            raise ConfigError(f"judges[{i}]: unknown persona {judge!r}", f"known judges: {', '.join(j.name for j in book.by_role(Role.JUDGE))}") from None
        if p.role != Role.JUDGE:
            raise ConfigError(f"judges[{i}]: {judge!r} is a {p.role.value}, not a judge", "list personas with role: judge")
    for i, fmt in enumerate(cfg.formats):
        try:
            load_format(fmt)
        except BonsaiError as exc:
            raise ConfigError(f"formats[{i}]: {exc.message}", exc.hint) from None

    competitors: dict[str, Competitor] = {}
    by_ref: dict[str, Competitor] = {}

    def competitor(ref: str, where: str) -> Competitor:
        if ref not in by_ref:
            if resolved is not None and ref in resolved:
                by_ref[ref] = _pinned(ref, resolved[ref], where=where)
            else:
                by_ref[ref] = resolve_competitor(ref, book, home, where=where)
        return by_ref[ref]

    pairs = []
    for i, pairing in enumerate(cfg.pairings):
        a = competitor(pairing.a, f"pairings[{i}].a")
        b = competitor(pairing.b, f"pairings[{i}].b")
        seats = _seats(pairing.seats, a, b, book, where=f"pairings[{i}]")
        for c in (a, b):
            known = competitors.setdefault(c.label, c)
            if known.adapter != c.adapter:
                raise ConfigError(f"pairings[{i}]: {c.label} names two different adapter folders ({known.adapter}, {c.adapter})", "give each adapter its own name")
        pairs.append((a, b, seats))

    jobs: list[SweepJob] = []
    seen: set[str] = set()
    assignments = (0, 1) if cfg.sides == "both" else (0,)
    for motion in sweep.motions:
        for a, b, (seat_a, seat_b) in pairs:
            for assignment in assignments:
                side_a, side_b = (a, b) if assignment == 0 else (b, a)
                for seed in cfg.seeds:
                    for judge in cfg.judges:
                        for fmt in cfg.formats:
                            for candidates in cfg.candidates:
                                key = {
                                    "sweep": cfg.name, "motion": motion, "a": side_a.label, "b": side_b.label,
                                    "seats": [seat_a, seat_b], "seed": seed, "judge": judge, "format": fmt,
                                    "rounds": cfg.rounds, "candidates": candidates, "max_tokens": cfg.max_tokens,
                                }
                                did = debate_id(cfg.name, key)
                                if did in seen:
                                    continue  # e.g. a competitor paired with itself: the swap is the same debate
                                seen.add(did)
                                spec = DebateSpec(
                                    motion=motion, personas=[seat_a, seat_b, judge], format=fmt, rounds=cfg.rounds,
                                    candidates=candidates, seed=seed, max_tokens=cfg.max_tokens, sweep=cfg.name,
                                    adapters={
                                        seat_a: str(side_a.adapter) if side_a.adapter else None,
                                        seat_b: str(side_b.adapter) if side_b.adapter else None,
                                    },
                                )
                                jobs.append(SweepJob(debate_id=did, a=side_a.label, b=side_b.label, assignment=assignment, spec=spec))
    return SweepPlan(sweep, competitors, jobs, by_ref)


@dataclass(frozen=True)
class Estimate:
    debates: int
    tokens: int  # upper bound on generated tokens (every turn at its cap, judges included)
    seconds: float | None
    tokens_per_s: float | None
    basis: str


def estimate(plan: SweepPlan, book: PersonaBook, *, tokens_per_s: float | None, basis: str) -> Estimate:
    """Tokens from the schedule's caps (an upper bound: turns often stop early), time from a throughput."""
    from bonsai.debate.runner import plan_debate

    total = 0
    cache: dict[tuple[object, ...], int] = {}
    for job in plan.jobs:
        s = job.spec
        key = (tuple(s.personas or ()), s.format, s.rounds, s.candidates, s.max_tokens)
        if key not in cache:
            prepared = plan_debate(s.model_copy(update={"adapters": {n: None for n in s.personas or []}}), book, Path("/nonexistent"))
            turns = 0
            for slot in prepared.schedule:
                persona = book.get(slot.speaker)
                cap = slot.max_tokens or persona.sampling.max_tokens
                if slot.kind == "debater":
                    cap = s.max_tokens or cap
                    turns += cap * s.candidates
                else:
                    turns += cap
            # each judge reads the debate with the labels both ways: a JSON verdict and a one-token probe each
            turns += len(prepared.cast.judges) * 2 * (prepared.fmt.judge.max_tokens + 1)
            cache[key] = turns
        total += cache[key]
    seconds = total / tokens_per_s if tokens_per_s else None
    return Estimate(len(plan.jobs), total, seconds, tokens_per_s, basis)
