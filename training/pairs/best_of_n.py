"""``best-of-n``: from a turn's stored candidates, the judge's favourite against its least favourite.

The debate already sampled N candidates for the same prompt and had the judge score each one, so the
pair costs no generation at all. Candidates whose scores are too close teach noise, not preference:
``min_gap`` drops them.
"""

from __future__ import annotations

import math

from pydantic import Field

from training.pairs.base import Pair, PairContext, Strategy, StrategyParams


class BestOfNParams(StrategyParams):
    min_gap: float = Field(0.05, ge=0.0, le=1.0, description="Smallest judge-score gap between chosen and rejected.")


class BestOfN(Strategy):
    name = "best-of-n"
    Params = BestOfNParams
    params: BestOfNParams

    async def build(self, ctx: PairContext) -> list[Pair]:
        pairs = []
        for src in ctx.sources:
            scored = [c for c in src.candidates if c.score is not None and math.isfinite(c.score)]
            if len(scored) < 2:
                ctx.drop("too_few_candidates")
                continue
            # ties go to the lower candidate index, so the same store always gives the same pair
            best = min(scored, key=lambda c: (-c.score, c.candidate_index))
            worst = min(scored, key=lambda c: (c.score, c.candidate_index))
            gap = best.score - worst.score
            if gap < self.params.min_gap:
                ctx.drop("score_gap_below_min")
                continue
            pairs.append(
                Pair(
                    source=src,
                    strategy=self.name,
                    chosen=best.text,
                    rejected=worst.text,
                    meta={
                        "chosen_candidate": best.candidate_index,
                        "rejected_candidate": worst.candidate_index,
                        "chosen_score": best.score,
                        "rejected_score": worst.score,
                        "gap": gap,
                        "candidates": len(scored),
                    },
                )
            )
        return pairs


STRATEGY = BestOfN
