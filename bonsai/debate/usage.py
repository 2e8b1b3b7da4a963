"""One count of generated tokens: every token the engine produced for a debate.

That is each best-of-N candidate (kept or not), the judge's probes that score them, the moderator's
lines, and every judge reading (its JSON verdict and its label probes). The graph's nodes measure it
with :class:`Metered` and store it with the records they write (``TurnRecord.generated_tokens``,
``VerdictRecord.output_tokens``); events carry the same numbers, and :func:`tokens_of` /
:func:`bundle_tokens` read them back, so a local run, a resumed one and a Ray worker's bundle all add up
the same way (budgets, ratings and benchmarks included).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from bonsai.engine import Engine, GenerationRequest, StreamEvent
from bonsai.engine.types import Completion


class Metered:
    """An engine seen through a counter: ``tokens`` adds up the output tokens of every completion asked
    through it. Everything else is the wrapped engine's own (one per node call: engines are shared)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.tokens = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def generate(self, request: GenerationRequest) -> Completion:
        result = await self._engine.generate(request)
        self.tokens += result.output_tokens
        return result

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        async for event in self._engine.stream(request):
            if isinstance(event, Completion):
                self.tokens += event.output_tokens
            yield event


def turn_tokens(turn: dict[str, Any] | Any) -> int:
    """A stored turn's generated tokens; a turn stored before the count existed counts its own text."""
    get = turn.get if isinstance(turn, dict) else lambda k: getattr(turn, k, None)
    generated = get("generated_tokens")
    return int(generated if generated is not None else (get("output_tokens") or 0))


def bundle_tokens(bundle: dict[str, Any]) -> int:
    """Generated tokens of a debate as a Ray worker ships it (see ``TranscriptStore.export_bundle``)."""
    return sum(turn_tokens(t) for t in bundle.get("turns", [])) + sum(int(v.get("output_tokens") or 0) for v in bundle.get("verdicts", []))


def verdict_tokens(verdicts: Iterable[Any]) -> int:
    return sum(int(getattr(v, "output_tokens", 0) or 0) for v in verdicts)
