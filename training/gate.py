"""The promotion gate: does a candidate adapter debate better than what it would replace?

A mini-sweep on held-out motions (the dataset's test motions: never trained on). The persona keeps its
seat and prompt; the adapters move. Against each opponent (the current version, and a fixed one: the
bare base by default) the candidate plays both sides: once in the persona's own seat with the opponent
adapter in the opposing seat, once the other way round, so side and speaking-order bias cancel. One
fixed judge (greedy) decides every debate. Outcomes are wins, ties or losses of the candidate's side;
a tie counts as half a win (as in the sweep ratings), so a judge that cannot tell the two apart gives
a win rate of 0.5, never a pass. The win rate comes with a Wilson 95% interval, and promotion needs its lower bound above the threshold:
a lucky streak on two motions is not enough.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bonsai.registry import current_version, persona_dir, read_manifest, verify_version
from bonsai.debate.events import DebateEnd, Verdict
from bonsai.debate.runner import DebateRunner, DebateSpec
from bonsai.debate.schedule import Cast
from bonsai.engine import Engine
from bonsai.errors import AdapterError, ConfigError
from bonsai.personas import PersonaBook, Role, Team
from bonsai.stats import wilson_interval
from bonsai.store.transcripts import TranscriptStore
from bonsai.registry import load_evaluation, resolve_version, save_evaluation
from training.evaluation.decision import decide

log = logging.getLogger(__name__)



class GateConfig(BaseModel):
    """How a candidate is judged. Defaults are sized for the tiny CPU model; raise them on a GPU."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.5, ge=0.0, lt=1.0, description="Promotion needs the win rate's 95% lower bound above this.")
    format: str = Field("quick", description="Debate format of the evaluation debates.")
    rounds: int = Field(1, ge=1, le=10)
    max_tokens: int | None = Field(48, ge=1, le=8192, description="Caps every debater turn.")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="Each motion is debated once per seed.")
    opponent: str = Field("base", description="The fixed opponent: base, a version of the same persona, or an adapter folder.")
    opponent_persona: str | None = Field(None, description="Who sits opposite (default: the other team's default debater).")
    judge: str = Field("judge", description="The judge persona (fixed for every evaluation).")
    max_motions: int = Field(8, ge=1, description="Held-out motions used at most.")
    concurrency: int = Field(8, ge=1, description="Debates run at once (the engine batches them).")
    criteria: list[Literal["win_rate", "win_rate_not_worse", "rubric", "preference"]] = Field(
        default_factory=lambda: ["win_rate"],
        min_length=1,
        description=(
            "What promotion needs, all of them: win_rate (the judge's 95% lower bound above the threshold), "
            "win_rate_not_worse (its upper bound reaches 0.5), rubric (the persona's rubric: the candidate's 95% lower "
            "bound above the reference's mean), preference (held-out preference accuracy: lower bound above 0.5). "
            "Any but win_rate runs `bonsai eval` against the candidate's parent."
        ),
    )

    @property
    def needs_eval(self) -> bool:
        return self.criteria != ["win_rate"]


@dataclass(frozen=True)
class Opponent:
    label: str  # "current" | "fixed"
    name: str  # version, "base" or a folder
    path: Path | None


@dataclass(frozen=True)
class Match:
    motion: str
    seed: int
    opponent: str
    candidate_seat: str  # persona name whose seat the candidate took
    candidate_team: str
    debate_id: str
    winner: str | None  # "A", "B", "tie", or None if the debate did not finish
    won: bool  # won outright
    prob_candidate: float | None
    score: float = 0.0  # 1 won, 0.5 tie, 0 lost: what the win rate counts


def match_score(winner: str | None, team: str) -> float:
    return 0.5 if winner == "tie" else float(winner == team)


def rate(matches: list[Match]) -> dict[str, Any]:
    wins = sum(m.score for m in matches)
    n = len(matches)
    low, high = wilson_interval(wins, n)
    ties = sum(m.winner == "tie" for m in matches)
    return {"wins": wins, "ties": ties, "n": n, "win_rate": wins / n if n else None, "ci_low": low, "ci_high": high}


# --- motions ------------------------------------------------------------------------------------


def read_motions_file(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"motions file {path} does not exist", "one motion per line; lines starting with # are ignored")
    motions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    motions = [m for m in motions if m and not m.startswith("#")]
    if not motions:
        raise ConfigError(f"motions file {path} holds no motion", "one motion per line; lines starting with # are ignored")
    return motions


def held_out_motions(home: Path, persona: str, candidate: str, *, dataset: Path | None = None, motions_file: Path | None = None) -> list[str]:
    """--motions FILE, else the test motions of --dataset, else of the dataset the candidate was trained on."""
    if motions_file is not None:
        return read_motions_file(motions_file)
    from training.card import read_card

    if dataset is None:
        manifest = read_manifest(persona_dir(home, persona) / candidate)
        recorded = manifest.dataset if manifest else None
        if not recorded:
            raise ConfigError(f"{persona}@{candidate} records no dataset, so there are no held-out motions", "pass --motions FILE (one motion per line)")
        dataset = Path(recorded)
    motions = read_card(Path(dataset)).split.test_motions
    if not motions:
        raise ConfigError(
            f"the dataset at {dataset} holds no test motions to evaluate on",
            "pass --motions FILE, or rebuild the dataset with a larger --test-fraction",
        )
    return list(motions)


# --- the sweep ----------------------------------------------------------------------------------


def _opponent(home: Path, persona: str, spec: str) -> Opponent:
    if spec == "base":
        return Opponent("fixed", "base", None)
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return Opponent("fixed", str(folder.resolve()), folder.resolve())
    version = resolve_version(home, persona, spec)
    path = persona_dir(home, persona) / version
    verify_version(path)
    return Opponent("fixed", version, path)


def opponents(home: Path, persona: str, config: GateConfig) -> list[Opponent]:
    cur = current_version(home, persona)
    current = Opponent("current", cur or "base", persona_dir(home, persona) / cur if cur else None)
    if current.path is not None:
        verify_version(current.path)
    fixed = _opponent(home, persona, config.opponent)
    return [current] if fixed.path == current.path else [current, fixed]


def seat_personas(book: PersonaBook, persona: str, config: GateConfig) -> tuple[str, str, Cast]:
    """The persona's seat, the opposing seat, and the full cast (judge and moderator included)."""
    p = book.get(persona)
    if p.role != Role.DEBATER:
        raise ConfigError(f"{persona!r} is a {p.role.value}, and only debaters are evaluated", "evaluate a persona with role: debater")
    other_team = Team.B if p.team == Team.A else Team.A
    if config.opponent_persona:
        q = book.get(config.opponent_persona)
        if q.role != Role.DEBATER or q.team != other_team:
            raise ConfigError(f"opponent persona {q.name!r} is not a team {other_team.value} debater", f"pick a debater of team {other_team.value}")
    else:
        q = Cast.from_names(book, [p.name]).team(other_team.value)[0]
    judge = book.get(config.judge)
    if judge.role != Role.JUDGE:
        raise ConfigError(f"{judge.name!r} is not a judge", "pass a persona with role: judge")
    cast = Cast.from_names(book, [p.name, q.name, judge.name])
    return p.name, q.name, cast


async def evaluate_candidate(
    engine: Engine,
    *,
    home: Path,
    book: PersonaBook,
    base_model: str,
    persona: str,
    candidate: str,
    motions: list[str],
    store_path: Path,
    checkpoints: Path,
    config: GateConfig | None = None,
    on_match: Callable[[Match], None] | None = None,
    only_fixed: bool = False,
    save: bool = True,
    judge_engine: Engine | None = None,
) -> dict[str, Any]:
    """Run the sweep and save its result beside the version (``evaluations/<version>.json``).

    ``only_fixed`` plays the fixed opponent alone (``bonsai eval`` compares with one reference, which may
    be the current version's parent); ``save=False`` leaves the saved gate result alone;
    ``judge_engine``: the judge's own engine (None: it judges on ``engine``).
    """
    config = config or GateConfig()
    candidate = resolve_version(home, persona, candidate)
    cand_path = persona_dir(home, persona) / candidate
    verify_version(cand_path)
    own, other, cast = seat_personas(book, persona, config)
    against = [_opponent(home, persona, config.opponent)] if only_fixed else opponents(home, persona, config)
    if any(o.path == cand_path for o in against):
        raise AdapterError(f"{persona}@{candidate} is already the current version (or the fixed opponent)", "evaluate a newer candidate")
    motions = motions[: config.max_motions]
    teams = {p.name: p.team.value for p in cast.everyone()}
    names = [own, other, config.judge]
    plans = []
    for motion in motions:
        for seed in config.seeds:
            for opp in against:
                for seat in (own, other):
                    adapters = {p.name: None for p in cast.everyone()}
                    adapters[own] = str(cand_path) if seat == own else (str(opp.path) if opp.path else None)
                    adapters[other] = str(cand_path) if seat == other else (str(opp.path) if opp.path else None)
                    spec = DebateSpec(
                        motion=motion, personas=names, format=config.format, rounds=config.rounds, seed=seed,
                        max_tokens=config.max_tokens, adapters=adapters, sweep=f"gate:{persona}@{candidate}",
                    )
                    plans.append((motion, seed, opp, seat, spec))

    gate = asyncio.Semaphore(config.concurrency)
    matches: list[Match] = []
    t0 = time.monotonic()
    with TranscriptStore(store_path) as store:
        async with DebateRunner(engine, store, checkpoints, book, home, base_model, judge_engine=judge_engine) as runner:

            async def one(motion: str, seed: int, opp: Opponent, seat: str, spec: DebateSpec) -> Match:
                async with gate:
                    winner = prob_a = debate_id = None
                    async for event in runner.run(spec):
                        debate_id = event.debate_id
                        if isinstance(event, Verdict):
                            prob_a = event.prob_a
                        elif isinstance(event, DebateEnd):
                            winner = event.winner
                team = teams[seat]
                match = Match(
                    motion=motion, seed=seed, opponent=opp.label, candidate_seat=seat, candidate_team=team,
                    debate_id=str(debate_id), winner=winner, won=winner == team,
                    prob_candidate=None if prob_a is None else (prob_a if team == "A" else 1 - prob_a),
                    score=match_score(winner, team),
                )
                if on_match is not None:
                    on_match(match)
                return match

            matches = list(await asyncio.gather(*(one(*plan) for plan in plans)))

    overall = rate(matches)
    result = {
        "persona": persona,
        "candidate": candidate,
        "current": current_version(home, persona),
        "opponents": {o.label: o.name for o in against},
        "seats": {"persona": own, "opposite": other},
        "judge": config.judge,
        "motions": motions,
        "config": config.model_dump(mode="json"),
        **overall,
        "by_opponent": {o.label: rate([m for m in matches if m.opponent == o.label]) for o in against},
        "threshold": config.threshold,
        "passed": overall["ci_low"] > config.threshold,
        "matches": [asdict(m) for m in matches],
        "store": str(store_path),
        "seconds": round(time.monotonic() - t0, 2),
        "created_at": time.time(),
    }
    if save:
        save_evaluation(home, persona, candidate, result)
    return result


# --- the decision -------------------------------------------------------------------------------


def check_gate(home: Path, persona: str, version: str, *, threshold: float | None = None, force: bool = False) -> dict[str, Any] | None:
    """The evaluation that lets ``version`` be promoted; refuses (unless forced) with the numbers."""
    evaluation = load_evaluation(home, persona, version)
    if force:
        return evaluation
    if evaluation is None:
        raise AdapterError(
            f"{persona}@{version} has not been evaluated, so the gate cannot pass it",
            f"run `bonsai adapters evaluate {persona} --candidate {version}` first, or pass --force",
        )
    cur = current_version(home, persona)
    if evaluation.get("current") != cur:
        raise AdapterError(
            f"{persona}@{version} was evaluated against {evaluation.get('current') or 'the bare base'}, but the current version is now {cur or 'the bare base'}",
            f"evaluate it again: `bonsai adapters evaluate {persona} --candidate {version}`",
        )
    limit = evaluation["threshold"] if threshold is None else threshold
    if "criteria" in evaluation:
        passed, reasons = decide(evaluation, evaluation["criteria"], threshold=limit)
        if not passed:
            failed = "; ".join(f"{c}: {why.removeprefix('failed: ')}" for c, why in reasons.items() if why.startswith("failed"))
            raise AdapterError(f"{persona}@{version} did not pass the gate ({failed})", "train on more data, or pass --force to promote anyway")
        return evaluation
    if not evaluation["ci_low"] > limit:
        raise AdapterError(
            f"{persona}@{version} did not pass the gate: it won {evaluation['wins']:g} of {evaluation['n']} debates "
            f"{'(ties count half) ' if evaluation.get('ties') else ''}"
            f"({evaluation['win_rate']:.2f}, 95% CI {evaluation['ci_low']:.2f}-{evaluation['ci_high']:.2f}); the lower bound must be above {limit:.2f}",
            "evaluate on more held-out motions (--motions FILE) for a tighter interval, or pass --force to promote anyway",
        )
    return evaluation
