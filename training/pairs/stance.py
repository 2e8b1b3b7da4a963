"""``stance``: the persona's own answer against what the other side would have said in its place.

For each stored turn the exact same prompt (the persona's system prompt, side and history included)
goes to the opposing team's adapter, or to the bare base where that persona has none. The persona's
answer is chosen, the opponent's rejected: this is what teaches each team to argue its own side even
though both adapters share one base. The opponent is the debater seated on the other team in that
debate (teammates are matched by seat order), served with its current registry version per
:func:`bonsai.registry.resolve_persona_adapter`.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from bonsai.registry import resolve_persona_adapter
from bonsai.engine import AdapterRef, GenerationRequest
from bonsai.registry.identity import inspect_adapter
from bonsai.errors import PersonaNotFound
from training.pairs.base import Pair, PairContext, Strategy, StrategyParams, TurnSource, generate_all, pair_seed, turn_sampling

log = logging.getLogger(__name__)

OTHER_TEAM = {"A": "B", "B": "A"}


class StanceParams(StrategyParams):
    opponent: Literal["side", "base"] = Field(
        "side", description="'side': the opposing debater's adapter (the bare base where it has none); 'base': always the bare base."
    )
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Sampling temperature for the rejected answer (default: the turn's own).")


def opposing_persona(src: TurnSource) -> str | None:
    """The debater on the other team who faced this turn's speaker (matched by seat order)."""
    team = src.turn.team
    if team not in OTHER_TEAM:
        return None
    mine = src.debate.seats.get(team) or []
    theirs = src.debate.seats.get(OTHER_TEAM[team]) or []
    if not theirs:
        return None
    index = mine.index(src.turn.speaker) if src.turn.speaker in mine else 0
    return theirs[index % len(theirs)]


class Stance(Strategy):
    name = "stance"
    Params = StanceParams
    params: StanceParams

    def _adapter(self, ctx: PairContext, opponent: str, cache: dict[str, AdapterRef | None]) -> AdapterRef | None:
        if self.params.opponent == "base":
            return None
        if opponent not in cache:
            try:
                persona = ctx.book.get(opponent)
            except PersonaNotFound:
                log.warning("opponent %s is not in the persona book: its answers come from the bare base", opponent)
                cache[opponent] = None
            else:
                path = resolve_persona_adapter(persona, ctx.home)
                cache[opponent] = inspect_adapter(path) if path is not None else None
        return cache[opponent]

    async def build(self, ctx: PairContext) -> list[Pair]:
        cache: dict[str, AdapterRef | None] = {}
        plan: list[tuple[TurnSource, str, AdapterRef | None]] = []
        for src in ctx.sources:
            opponent = opposing_persona(src)
            if opponent is None:
                ctx.drop("no_opponent")
                continue
            plan.append((src, opponent, self._adapter(ctx, opponent, cache)))
        if not plan:
            return []
        refs = list({ref.name: ref for _, _, ref in plan if ref is not None}.values())
        engine = await ctx.engines.main(refs, why="the stance strategy")
        requests = [
            GenerationRequest(
                f"stance-{src.key}",
                src.prompt,
                turn_sampling(src.turn, seed=pair_seed(ctx.seed, self.name, src.key), max_tokens=ctx.max_tokens, temperature=self.params.temperature),
                ref,
            )
            for src, _, ref in plan
        ]
        log.info("stance: generating %d opposing answers", len(requests))
        results = await generate_all(engine, requests, concurrency=ctx.concurrency)
        pairs = []
        for (src, opponent, ref), request, result in zip(plan, requests, results, strict=True):
            if result is None:
                ctx.drop("generation_prompt_too_long")
                continue
            pairs.append(
                Pair(
                    source=src,
                    strategy=self.name,
                    chosen=src.turn.text,
                    rejected=result.text,
                    meta={
                        "opponent": opponent,
                        "opponent_adapter": ref.name if ref else None,
                        "opponent_adapter_hash": ref.content_hash if ref else None,
                        "seed": request.sampling.seed,
                        "finish_reason": result.finish_reason,
                    },
                )
            )
        return pairs


STRATEGY = Stance
