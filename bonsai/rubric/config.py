"""A persona's rubric as written in its YAML (``rubric:``): a list of checks, one model per check type.

Validated once, with the persona (``bonsai/personas.py``): an unknown check type or key, a weight of
0 or less, a pattern that does not compile or two checks under one name is refused there, naming it.
Example (``personas/ronri.yaml``)::

    rubric:
      - {type: language, weight: 2}
      - {type: reasoning_format, weight: 2}          # the persona's own format (xml-tags)
      - {type: length, budget: 150}                  # characters for ja/zh, words for en
      - {type: repetition}
      - {type: forbidden, name: no_english_tags, patterns: ['(?i)### (reasoning|answer)']}

This module imports nothing from the rest of bonsai: the persona model is built on it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: the languages personas speak (``Persona.language`` is this type)
Language = Literal["en", "ja", "zh"]


class _Check(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    name: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="Key of this check in scores (default: its type); two checks of one type need names."
    )
    weight: float = Field(1.0, gt=0.0, description="Share of this check in the rubric's weighted mean; more than 0.")

    # extra="forbid" alone says "unknown key" but not which keys exist: a YAML author needs those.
    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [str(k) for k in data if k not in cls.model_fields]
            if unknown:
                raise ValueError(f"unknown key {', '.join(map(repr, unknown))} for a {data.get('type')} check; valid keys: {', '.join(cls.model_fields)}")
        return data

    @property
    def key(self) -> str:
        return self.name or self.type


class LanguageCheck(_Check):
    """Share of the speech's letters in the language's script (Latin for en; kana or kanji for ja, with kana at least a fifth of the letters; Han for zh)."""

    type: Literal["language"]
    language: Language | None = Field(None, description="Default: the persona's language.")


class ReasoningFormatCheck(_Check):
    """The reasoning layout of the raw completion: strict parse, soft parse and tag count."""

    type: Literal["reasoning_format"]
    format: Literal["xml-tags", "alpaca-reasoning"] | None = Field(None, description="Default: the persona's reasoning format.")


class LengthCheck(_Check):
    """1 within the budget, falling linearly to 0 at budget x (1 + tolerance); below ``minimum``, n / minimum."""

    type: Literal["length"]
    budget: int = Field(gt=0, description="Most words (en) or characters (ja, zh) the answer should have.")
    unit: Literal["auto", "words", "characters"] = Field("auto", description="auto: characters for ja and zh, words otherwise.")
    minimum: int = Field(1, ge=0, description="Fewer units than this scores units / minimum (an empty answer scores 0).")
    tolerance: float = Field(1.0, gt=0.0, description="How far past the budget (as a share of it) the score reaches 0.")

    @model_validator(mode="after")
    def _minimum_below_budget(self) -> LengthCheck:
        if self.minimum > self.budget:
            raise ValueError(f"minimum {self.minimum} is above the budget {self.budget}")
        return self


class _PatternCheck(_Check):
    patterns: list[str] = Field(min_length=1, description="Python regular expressions, searched anywhere in the text.")
    scope: Literal["answer", "raw"] = Field("answer", description="answer: the speech only; raw: the completion with its reasoning and tags.")

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"pattern {p!r} does not compile: {exc}") from None
        return patterns


class RequiredCheck(_PatternCheck):
    """Share of the patterns found."""

    type: Literal["required"]


class ForbiddenCheck(_PatternCheck):
    """1 minus the share of the patterns found."""

    type: Literal["forbidden"]


class RepetitionCheck(_Check):
    """1 minus the share of repeated n-grams (words for en, characters for ja and zh)."""

    type: Literal["repetition"]
    n: int = Field(3, ge=1, le=12, description="n-gram length.")


class OnMotionCheck(_Check):
    """Content words (ja/zh: character bigrams) the speech shares with the motion and the opponent's last speech."""

    type: Literal["on_motion"]
    shared: int = Field(3, ge=1, description="Distinct shared content units that score 1; fewer score proportionally.")


CheckConfig = Annotated[
    LanguageCheck | ReasoningFormatCheck | LengthCheck | RequiredCheck | ForbiddenCheck | RepetitionCheck | OnMotionCheck,
    Field(discriminator="type"),
]

CHECK_TYPES = ("language", "reasoning_format", "length", "required", "forbidden", "repetition", "on_motion")


def require_types(raw: Any) -> Any:
    """Before validation: a check without a ``type`` is named, with the valid types (pydantic only says it found no tag)."""
    if isinstance(raw, list):
        for i, item in enumerate(raw):
            if isinstance(item, dict) and "type" not in item:
                raise ValueError(f"check {i} has no type: give it one of {', '.join(CHECK_TYPES)}")
    return raw


def check_rubric(checks: tuple[Any, ...], *, reasoning: str) -> None:
    """Rules that need the whole rubric and the persona: unique names, a format to check against."""
    seen: set[str] = set()
    for check in checks:
        if check.key in seen:
            raise ValueError(f"rubric: two checks are named {check.key!r}; give each one its own `name:`")
        seen.add(check.key)
        if isinstance(check, ReasoningFormatCheck) and check.format is None and reasoning == "none":
            raise ValueError(
                "rubric: a reasoning_format check needs a format (format: xml-tags or alpaca-reasoning) or a persona with a reasoning format"
            )
