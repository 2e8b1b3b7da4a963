"""A persona's rubric: its checks applied to one speech, combined into one weighted score.

Which text each check reads: ``reasoning_format`` (and a pattern check with ``scope: raw``) the raw
completion, tags and all; ``repetition`` the reasoning and the answer with the markers taken out;
``language``, ``length``, ``on_motion`` (and pattern checks by default) the answer alone, split off
the way the debate does it (:func:`bonsai.reasoning.parse`), i.e. what opponents and the
judge read. An empty speech scores 0 on every check that measures content (a forbidden pattern
cannot be found in it, so that one check gives 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bonsai.reasoning import ReasoningFormat, parse
from bonsai.rubric import checks as C
from bonsai.rubric.config import (
    CheckConfig,
    ForbiddenCheck,
    Language,
    LanguageCheck,
    LengthCheck,
    OnMotionCheck,
    ReasoningFormatCheck,
    RepetitionCheck,
    RequiredCheck,
)


class RubricOwner(Protocol):
    """What :func:`rubric_for` reads of a persona; a protocol, so the rubric never imports the personas above it."""

    @property
    def rubric(self) -> Sequence[CheckConfig] | None: ...

    @property
    def reasoning(self) -> ReasoningFormat: ...

    @property
    def language(self) -> Language: ...


@dataclass(frozen=True)
class RubricContext:
    """What a speech is scored against besides its own text."""

    #: the debate's motion (on_motion)
    motion: str
    #: the language the speech should be in (a language check's own ``language`` wins)
    language: Language
    #: the other side's last answer before this speech, if any (on_motion)
    opponent_last: str | None = None


@dataclass(frozen=True)
class RubricScore:
    #: weighted mean of the checks, 0..1
    total: float
    #: check name -> score 0..1, in the rubric's order
    checks: dict[str, float] = field(default_factory=dict)


class Rubric:
    """Checks with weights, for speeches laid out in ``reasoning`` (the persona's format)."""

    def __init__(self, checks: Sequence[CheckConfig], reasoning: ReasoningFormat = ReasoningFormat.NONE, language: Language | None = None) -> None:
        if not checks:
            raise ValueError("a rubric needs at least one check")
        self.checks = tuple(checks)
        self.reasoning = ReasoningFormat(reasoning)
        #: the persona's language, only shown by :meth:`describe` (scoring takes it from the context)
        self.language = language

    @property
    def weights(self) -> dict[str, float]:
        return {c.key: c.weight for c in self.checks}

    def format_of(self, check: ReasoningFormatCheck) -> str:
        return check.format or self.reasoning.value

    def score(self, text: str, ctx: RubricContext) -> RubricScore:
        """Score one raw completion (reasoning and tags included) against the rubric.

        ``total`` is the weighted mean of every check's score (0..1); ``checks`` maps each check's
        name (its ``name``, or its type) to its score. Pure: no engine, same text, same score.
        """
        parsed = parse(text, self.reasoning)
        answer = parsed.answer
        body = "\n".join(x for x in (parsed.reasoning, answer) if x)
        scores = {c.key: min(1.0, max(0.0, self._one(c, text, answer, body, ctx))) for c in self.checks}
        weight = sum(c.weight for c in self.checks)
        total = sum(c.weight * scores[c.key] for c in self.checks) / weight
        return RubricScore(total=total, checks=scores)

    def _one(self, check: CheckConfig, raw: str, answer: str, body: str, ctx: RubricContext) -> float:
        if isinstance(check, LanguageCheck):
            return C.language_score(answer, check.language or ctx.language)
        if isinstance(check, ReasoningFormatCheck):
            return C.format_score(raw, self.format_of(check)).score
        if isinstance(check, LengthCheck):
            n = C.count_units(answer, ctx.language, check.unit)
            return C.length_score(n, check.budget, minimum=check.minimum, tolerance=check.tolerance)
        if isinstance(check, RequiredCheck | ForbiddenCheck):
            target = raw if check.scope == "raw" else answer
            found = C.pattern_share(target, check.patterns)
            return found if isinstance(check, RequiredCheck) else 1.0 - found
        if isinstance(check, RepetitionCheck):
            return C.repetition_score(body, ctx.language, check.n)
        if isinstance(check, OnMotionCheck):
            if not answer.strip():
                return 0.0
            return C.on_motion_score(answer, ctx.motion, ctx.opponent_last, shared=check.shared)
        raise AssertionError(f"unhandled check {check!r}")

    def describe(self) -> list[dict[str, Any]]:
        """The checks as plain data, defaults filled in (what ``bonsai personas show`` prints)."""
        out = []
        for c in self.checks:
            d = c.model_dump(mode="json", exclude_none=True)
            if isinstance(c, ReasoningFormatCheck):
                d["format"] = self.format_of(c)
            if isinstance(c, LanguageCheck) and self.language is not None:
                d["language"] = c.language or self.language
            out.append({"name": c.key, **{k: v for k, v in d.items() if k != "name"}})
        return out


def rubric_for(persona: RubricOwner) -> Rubric | None:
    """The persona's rubric, or None when its YAML declares none."""
    if not persona.rubric:
        return None
    return Rubric(persona.rubric, persona.reasoning, persona.language)


def last_opponent_answer(turns: Sequence[Any], turn_index: int, team: str) -> str | None:
    """The answer of the last debater turn before ``turn_index`` from a team other than ``team``.

    ``turns`` are stored turn records (anything with ``turn_index``, ``role``, ``team``, ``answer``).
    """
    last = None
    for t in sorted(turns, key=lambda t: t.turn_index):
        if t.turn_index >= turn_index:
            break
        if t.role == "debater" and t.team in ("A", "B") and t.team != team:
            last = t.answer
    return last
