"""Speeches an adapter gives in the persona's seat on held-out motions, for measurable checks.

Each sample is a short debate without a judge: the schedule of the format is walked slot by slot, the
persona's slots answered by the adapter under test, the opposing seat by the opponent persona on the
bare base (greedy, so both adapters face the same opponent). Opponent speeches that come before the
persona's first turn do not depend on the adapter and are generated once per motion, so the candidate
and the reference answer exactly the same first prompt with the same sampling seeds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bonsai.debate.formats import load_format
from bonsai.debate.graph import turn_summary
from bonsai.debate.prompts import debater_prompt, stop_strings
from bonsai.reasoning import parse
from bonsai.debate.schedule import Cast, Slot, build_schedule
from bonsai.engine import AdapterRef, Engine, GenerationRequest, Sampling
from bonsai.errors import ConfigError, PromptTooLong
from bonsai.personas import Persona, PersonaBook, Role, Team
from training.pairs.base import pair_seed


@dataclass(frozen=True)
class Speech:
    """One of the persona's turns: the raw text (reasoning included) and what it answered."""

    motion: str
    sample: int
    turn: int
    text: str
    output_tokens: int
    finish_reason: str
    #: the opponent's latest answer before this turn, if any (the on-motion check reads it)
    opponent_last: str | None


@dataclass(frozen=True)
class SpeechPlan:
    persona: Persona
    opponent: Persona
    slots: tuple[Slot, ...]
    #: how many of the persona's own slots each sample answers
    turns: int


def plan_speeches(book: PersonaBook, persona: str, *, format_name: str = "quick", turns: int = 1, opponent: str | None = None) -> SpeechPlan:
    p = book.get(persona)
    if p.role != Role.DEBATER:
        raise ConfigError(f"{persona!r} is a {p.role.value}, and only debaters give speeches to evaluate", "evaluate a persona with role: debater")
    other_team = Team.B if p.team == Team.A else Team.A
    q = book.get(opponent) if opponent else Cast.from_names(book, [p.name]).team(other_team.value)[0]
    if q.role != Role.DEBATER or q.team != other_team:
        raise ConfigError(f"opponent persona {q.name!r} is not a team {other_team.value} debater", f"pick a debater of team {other_team.value}")
    cast = Cast.from_names(book, [p.name, q.name])
    slots = [s for s in build_schedule(load_format(format_name), max(1, turns), cast) if s.kind == "debater"]
    own = [i for i, s in enumerate(slots) if s.speaker == p.name]
    if len(own) < turns:
        raise ConfigError(f"the {format_name} format gives {p.name} only {len(own)} turns, fewer than --turns {turns}", "lower --turns or pick a longer format")
    return SpeechPlan(p, q, tuple(slots[: own[turns - 1] + 1]), turns)


def _sampling(persona: Persona, slot: Slot, *, seed: int | None, greedy: bool, max_tokens: int | None) -> Sampling:
    s = persona.sampling
    budget = min(x for x in (s.max_tokens, slot.max_tokens, max_tokens) if x is not None)
    return Sampling(
        temperature=0.0 if greedy else s.temperature, top_p=1.0 if greedy else s.top_p, max_tokens=budget, seed=seed,
        stop=stop_strings(persona), repetition_penalty=s.repetition_penalty,
    )


async def sample_speeches(
    engine: Engine,
    plan: SpeechPlan,
    motions: Sequence[str],
    adapter: AdapterRef | None,
    *,
    samples: int,
    seed: int = 0,
    max_tokens: int | None = None,
    concurrency: int = 16,
    shared: dict[tuple[str, int], dict[str, Any]] | None = None,
) -> list[Speech]:
    """``samples`` chains per motion answered by ``adapter`` (None: the bare base).

    ``shared`` caches the opponent's adapter-independent opening turns across calls, so a candidate and
    its reference see the same ones; pass the same dict to both calls.
    """
    if adapter is not None:
        await engine.add_adapter(adapter)
    gate = asyncio.Semaphore(max(1, concurrency))
    shared = {} if shared is None else shared
    first_own = next(i for i, s in enumerate(plan.slots) if s.speaker == plan.persona.name)

    async def generate(persona: Persona, slot: Slot, history: list[dict[str, Any]], motion: str, request_seed: int | None, greedy: bool, ref: AdapterRef | None, rid: str):
        prompt = debater_prompt(persona, motion, history, slot)
        sampling = _sampling(persona, slot, seed=request_seed, greedy=greedy, max_tokens=max_tokens)
        async with gate:
            return await engine.generate(GenerationRequest(rid, prompt, sampling, ref))

    async def opponent_turn(slot: Slot, history: list[dict[str, Any]], motion: str, rid: str) -> dict[str, Any]:
        done = await generate(plan.opponent, slot, history, motion, 0, True, None, rid)
        return turn_summary(slot, done.text, parse(done.text, plan.opponent.reasoning).answer)

    async def shared_opening(mi: int, motion: str) -> list[dict[str, Any]]:
        history: list[dict[str, Any]] = []
        for si in range(first_own):
            key = (motion, si)
            if key not in shared:
                shared[key] = await opponent_turn(plan.slots[si], history, motion, f"eval-opp-{mi}-{si}")
            history.append(shared[key])
        return history

    async def chain(mi: int, motion: str, k: int, opening: list[dict[str, Any]]) -> list[Speech]:
        history = list(opening)
        out: list[Speech] = []
        for si in range(first_own, len(plan.slots)):
            slot = plan.slots[si]
            if slot.speaker != plan.persona.name:
                history.append(await opponent_turn(slot, history, motion, f"eval-opp-{mi}-{k}-{si}"))
                continue
            last = next((h["answer"] for h in reversed(history) if h["team"] != plan.persona.team.value), None)
            done = await generate(plan.persona, slot, history, motion, pair_seed(seed, "eval", motion, k, si), False, adapter, f"eval-{mi}-{k}-{si}-{adapter.name if adapter else 'base'}")
            out.append(Speech(motion, k, len(out), done.text, done.output_tokens, done.finish_reason, last))
            history.append(turn_summary(slot, done.text, parse(done.text, plan.persona.reasoning).answer))
        return out

    async def one_motion(mi: int, motion: str) -> list[Speech]:
        try:
            opening = await shared_opening(mi, motion)
            chains = await asyncio.gather(*(chain(mi, motion, k, opening) for k in range(samples)))
        except PromptTooLong as exc:
            raise ConfigError(f"the motion {motion[:60]!r} does not fit the engine's context: {exc.message}", "use shorter motions or raise --max-model-len") from None
        return [s for c in chains for s in c]

    per_motion = await asyncio.gather(*(one_motion(i, m) for i, m in enumerate(motions)))
    return [s for group in per_motion for s in group]
