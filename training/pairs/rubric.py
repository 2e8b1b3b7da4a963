"""``rubric``: a verifiable preference, the persona's own rubric deciding which answer is better.

Among a turn's answers to one prompt (its stored best-of-N candidates; with ``samples`` K, for a turn
stored with a single answer, that answer and K new samples from the persona's current adapter), the
chosen one scores best on the persona's rubric (:mod:`bonsai.rubric`) and the rejected one worst.
Ties go to the judge's candidate score, which ``judge_weight`` can also mix into the ranking:
key = (1 - judge_weight) x rubric + judge_weight x judge, where every answer has a judge score
(sampled answers have none: then the rubric alone ranks). Pairs whose keys differ by less than
``min_gap`` are dropped.

When the best answer still fails a check (the embedded base almost never writes the reasoning tags,
so no candidate passes the format check), it is repaired (:func:`bonsai.rubric.repair`): its own
words rewritten into the persona's format, language and budget, and scored again. The repair becomes
the chosen answer only when it raises the rubric score; the pair's meta then says ``repaired: true``
with both scores. A turn with a single answer can still make a pair this way (repair over original).

Meta of every pair: each side's rubric total, checks and judge score, the ranking gap, where the
answers came from, and the repair's before/after scores.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from bonsai.registry import resolve_persona_adapter
from bonsai.engine import AdapterRef, GenerationRequest
from bonsai.registry.identity import inspect_adapter
from bonsai.errors import ConfigError
from bonsai.personas import Persona
from bonsai.rubric import Rubric, RubricContext, RubricScore, repair, rubric_for
from bonsai.rubric.repairs import Fits
from training.pairs.base import Pair, PairContext, Strategy, StrategyParams, TurnSource, generate_all, pair_seed, turn_sampling

log = logging.getLogger(__name__)


class RubricParams(StrategyParams):
    min_gap: float = Field(0.05, ge=0.0, le=1.0, description="Smallest ranking-key gap between chosen and rejected.")
    judge_weight: float = Field(0.0, ge=0.0, le=1.0, description="Share of the judge's candidate score in the ranking (0: rubric only; ties always go to the judge).")
    samples: int = Field(0, ge=0, le=64, description="For a turn stored with one answer: this many new samples of its prompt (0: stored answers only).")
    repair: bool = Field(True, description="Rewrite the best answer into the persona's format when that raises its rubric score.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Sampling temperature for samples (default: the turn's own).")
    fit_share: float = Field(
        0.75, gt=0.0, le=1.0,
        description="A repaired answer fits this share of the turn's token budget: headroom, so sampled speeches that learn its length still close their tags before the cap.",
    )


@dataclass(frozen=True)
class Answer:
    text: str
    #: the judge's score for it (stored candidates), None for samples
    judge: float | None
    #: candidate index (stored) or sample number; -1 for the turn's stored text
    index: int
    origin: str


def _payload(score: RubricScore) -> dict[str, Any]:
    return {"total": score.total, "checks": score.checks}


class RubricStrategy(Strategy):
    name = "rubric"
    Params = RubricParams
    params: RubricParams

    def check(self, persona: Persona) -> None:
        if rubric_for(persona) is None:
            raise ConfigError(
                f"persona {persona.name!r} declares no rubric, so the rubric strategy cannot rank its answers",
                f"add a `rubric:` list to {persona.name}.yaml (see bonsai/rubric/config.py and `bonsai personas show ronri`)",
            )

    async def build(self, ctx: PairContext) -> list[Pair]:
        self.check(ctx.persona)
        rubric = rubric_for(ctx.persona)
        assert rubric is not None
        answers = {src.key: self._stored(src) for src in ctx.sources}
        sampler = await self._sample(ctx, answers)
        count = ctx.engines.token_counter() if self.params.repair else None
        pairs = []
        for src in ctx.sources:
            fits = self._fits(count, max(1, int((ctx.max_tokens or ctx.persona.sampling.max_tokens) * self.params.fit_share)))
            pair = self._pair(ctx, rubric, src, answers[src.key], sampler, fits)
            if pair is not None:
                pairs.append(pair)
        return pairs

    @staticmethod
    def _stored(src: TurnSource) -> list[Answer]:
        scored = [c for c in src.candidates if c.score is not None and math.isfinite(c.score)]
        if len(scored) >= 2:
            return [Answer(c.text, c.score, c.candidate_index, "candidate") for c in scored]
        judge = scored[0].score if len(scored) == 1 else None
        return [Answer(src.turn.text, judge, -1, "turn")]

    async def _sample(self, ctx: PairContext, answers: dict[str, list[Answer]]) -> str | None:
        """Add ``samples`` new answers to every turn stored with a single one; the sampler's name, if any sampled."""
        k = self.params.samples
        todo = [src for src in ctx.sources if k and len(answers[src.key]) == 1]
        if not todo:
            return None
        path = resolve_persona_adapter(ctx.persona, ctx.home)
        ref: AdapterRef | None = inspect_adapter(path) if path is not None else None
        engine = await ctx.engines.main([ref] if ref else [], why="the rubric strategy with samples")
        requests = [
            GenerationRequest(
                f"rubric-{src.key}-s{i}",
                src.prompt,
                turn_sampling(src.turn, seed=pair_seed(ctx.seed, self.name, src.key, i), max_tokens=ctx.max_tokens, temperature=self.params.temperature),
                ref,
            )
            for src in todo
            for i in range(k)
        ]
        who = ref.name if ref else "the bare base"
        log.info("rubric: sampling %d answers for %d turns from %s", len(requests), len(todo), who)
        results = await generate_all(engine, requests, concurrency=ctx.concurrency)
        for n, result in enumerate(results):
            src, i = todo[n // k], n % k
            if result is None:
                ctx.drop("generation_prompt_too_long")
            else:
                answers[src.key].append(Answer(result.text, None, i, "sample"))
        return who

    @staticmethod
    def _fits(count: Callable[[str], int] | None, max_tokens: int) -> Fits | None:
        """A repaired answer must end within the budget the persona will speak in (the build's cap, else the
        persona's own; ``fit_share`` of it), its end-of-text token included: one longer teaches the model to
        open the tags and be cut off before it closes them. Run 5 fitted the whole 64 tokens: the chosen
        answers came out at 63, the trained speeches at 62 on average, and only a quarter closed in time."""
        if count is None:
            return None
        return lambda text: count(text) < max_tokens

    def _key(self, score: RubricScore, judge: float | None, mixed: bool) -> float:
        w = self.params.judge_weight
        return (1 - w) * score.total + w * judge if mixed and judge is not None else score.total

    def _pair(self, ctx: PairContext, rubric: Rubric, src: TurnSource, answers: list[Answer], sampler: str | None, fits: Fits | None = None) -> Pair | None:
        rctx = RubricContext(src.debate.motion, ctx.persona.language, src.opponent_last)
        scores = [rubric.score(a.text, rctx) for a in answers]
        # the judge is mixed in only where every answer has its score: a sample has none to mix
        mixed = self.params.judge_weight > 0 and all(a.judge is not None for a in answers)
        judge = lambda a: a.judge if a.judge is not None else -math.inf  # noqa: E731
        ranked = sorted(range(len(answers)), key=lambda i: (self._key(scores[i], answers[i].judge, mixed), judge(answers[i]), -answers[i].index))
        best, worst = answers[ranked[-1]], answers[ranked[0]]
        best_score, worst_score = scores[ranked[-1]], scores[ranked[0]]
        chosen, chosen_score, fixed = best.text, best_score, None
        if self.params.repair and best_score.total < 1.0:
            fixed = repair(best.text, rubric, rctx, fits)
            if fixed.improved:
                chosen, chosen_score = fixed.text, fixed.after
            else:
                fixed = None
        if best is worst:
            if fixed is None:
                ctx.drop("too_few_candidates")
                return None
            # one answer: the repair against the answer it came from
        gap = self._key(chosen_score, best.judge, mixed) - self._key(worst_score, worst.judge, mixed)
        if gap < self.params.min_gap:
            ctx.drop("rubric_gap_below_min")
            return None
        meta: dict[str, Any] = {
            "chosen_score": chosen_score.total,
            "rejected_score": worst_score.total,
            "chosen_checks": chosen_score.checks,
            "rejected_checks": worst_score.checks,
            "chosen_judge": best.judge,
            "rejected_judge": worst.judge,
            "chosen_candidate": best.index,
            "rejected_candidate": worst.index,
            "chosen_origin": best.origin,
            "rejected_origin": worst.origin,
            "gap": gap,
            "judge_weight": self.params.judge_weight if mixed else 0.0,
            "candidates": len(answers),
            "repaired": fixed is not None,
        }
        if fixed is not None:
            meta["repair"] = {"before": _payload(fixed.before), "after": _payload(fixed.after)}
        if sampler is not None and any(a.origin == "sample" for a in answers):
            meta["sampler"] = sampler
        return Pair(source=src, strategy=self.name, chosen=chosen, rejected=worst.text, meta=meta)


STRATEGY = RubricStrategy
