"""Held-out correctness: an adapter (or the bare base) answers logic problems greedily on any engine.

Reports the share of completions in the strict tag format, in the soft one, and answered correctly,
each with a Wilson 95% interval (the tiny sets a CPU can afford make the interval the point).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bonsai.engine import AdapterRef, ChatPrompt, Engine, GenerationRequest, Sampling
from bonsai.errors import ConfigError
from bonsai.personas import Persona
from bonsai.stats import wilson_interval
from training.logic.problems import Problem
from training.logic.prompts import messages
from training.logic.rewards import correctness, soft_format, strict_format

@dataclass(frozen=True)
class Rate:
    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.k, self.n)

    def to_json(self) -> dict[str, Any]:
        low, high = self.interval
        return {"k": self.k, "n": self.n, "rate": round(self.value, 4), "ci95": [round(low, 4), round(high, 4)]}

    def __str__(self) -> str:
        low, high = self.interval
        return f"{self.value:.3f} [{low:.3f}, {high:.3f}] ({self.k}/{self.n})"


@dataclass(frozen=True)
class LogicAccuracy:
    adapter: str
    correct: Rate
    strict_format: Rate
    soft_format: Rate
    #: correctness per kind and per language
    by_kind: dict[str, Rate] = field(default_factory=dict)
    by_lang: dict[str, Rate] = field(default_factory=dict)
    #: (problem id, completion, correct) for reading what the model wrote
    samples: tuple[tuple[str, str, bool], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter,
            "correct": self.correct.to_json(),
            "strict_format": self.strict_format.to_json(),
            "soft_format": self.soft_format.to_json(),
            "by_kind": {k: r.to_json() for k, r in self.by_kind.items()},
            "by_lang": {k: r.to_json() for k, r in self.by_lang.items()},
        }


def _rate(flags: Sequence[bool]) -> Rate:
    return Rate(sum(flags), len(flags))


async def logic_accuracy(
    engine: Engine,
    adapter: AdapterRef | None,
    problems: Sequence[Problem],
    *,
    persona: Persona,
    max_tokens: int = 256,
    seed: int = 0,
) -> LogicAccuracy:
    """Greedy answers to ``problems`` from ``adapter`` (None: the bare base) on ``engine``."""
    import asyncio

    if not problems:
        raise ConfigError("no problems to evaluate on", "ask for at least one held-out problem (--eval N)")
    if any(p.split != "test" for p in problems):
        raise ConfigError("held-out correctness is measured on test problems only", "generate them with split='test'")
    if adapter is not None:
        await engine.add_adapter(adapter)
    sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=seed)
    requests = [GenerationRequest(f"logic-{p.id}", ChatPrompt.of(messages(p, persona)), sampling, adapter) for p in problems]
    completions = await asyncio.gather(*(engine.generate(r) for r in requests))
    texts = [c.text for c in completions]
    right = [correctness(t, p.answer_type, p.expected, p.names) > 0 for p, t in zip(problems, texts, strict=True)]
    by_kind = {k: _rate([r for p, r in zip(problems, right, strict=True) if p.kind == k]) for k in sorted({p.kind for p in problems})}
    by_lang = {k: _rate([r for p, r in zip(problems, right, strict=True) if p.lang == k]) for k in sorted({p.lang for p in problems})}
    return LogicAccuracy(
        adapter=adapter.name if adapter is not None else "base",
        correct=_rate(right),
        strict_format=_rate([strict_format(t) > 0 for t in texts]),
        soft_format=_rate([soft_format(t) > 0 for t in texts]),
        by_kind=by_kind,
        by_lang=by_lang,
        samples=tuple((p.id, t, r) for p, t, r in zip(problems, texts, right, strict=True)),
    )
