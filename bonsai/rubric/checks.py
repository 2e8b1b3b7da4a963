"""The rubric's checks: pure functions from text to a score in [0, 1].

Each takes exactly what it needs (the answer or the raw completion, the language, its settings) so it
can be tested, and reused (GRPO rewards, ``bonsai eval``), without a persona or an engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bonsai.rubric.config import Language
from bonsai.rubric.scripts import characters, content_units, language_share, script, units, uses_characters, words

XML_TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
ALPACA_MARKERS = ("### Reasoning", "### Answer")

#: the parts of the format score, from the GRPO format rewards (strict 1.0, soft 0.5, tag count up to 0.5)
STRICT_REWARD, SOFT_REWARD, TAGS_REWARD = 1.0, 0.5, 0.5
FORMAT_MAX = STRICT_REWARD + SOFT_REWARD + TAGS_REWARD
#: the tag count loses this much per character written after the closing </answer> (as in the originals)
TRAILING_PENALTY = 0.001


#: Japanese prose is mostly kana (particles, endings, loanwords): below this share of its letters a
#: "Japanese" speech is Chinese, or Han characters strung together, and its score falls in proportion
JA_MIN_KANA = 0.2


def language_score(answer: str, language: Language) -> float:
    """Share of the answer's letters written in ``language``'s script; 0 when it has no letters at all.

    Digits, punctuation, whitespace and emoji are not letters and are ignored. ja accepts kana and
    kanji, zh only Han: a Japanese speech with kana scores lower as Chinese. A run of Han characters
    is not Japanese either: ja also needs kana to make up ``JA_MIN_KANA`` of the letters, and scores
    ``share x kana share / JA_MIN_KANA`` below that (measured: a tiny model trained on a Han-only
    language check learned to write strings of Han characters, which this stops from paying).
    """
    ok, total = language_share(answer, language)
    if not total:
        return 0.0
    share = ok / total
    if language == "ja":
        kana = sum(1 for ch in answer if script(ch) == "kana")
        share *= min(1.0, kana / (JA_MIN_KANA * total))
    return share


@dataclass(frozen=True)
class FormatScore:
    strict: bool
    soft: bool
    #: the tag-count reward, 0..TAGS_REWARD
    tags: float

    @property
    def score(self) -> float:
        """(strict x 1.0 + soft x 0.5 + tags) / 2.0, so a strictly formatted completion scores 1."""
        raw = STRICT_REWARD * self.strict + SOFT_REWARD * self.soft + self.tags
        return raw / FORMAT_MAX


_XML_STRICT = re.compile(r"\A\s*<reasoning>\s*(?P<r>.+?)\s*</reasoning>\s*<answer>\s*(?P<a>.+?)\s*</answer>\s*\Z", re.S)
_XML_SOFT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.S)
_ALPACA_STRICT = re.compile(r"\A\s*### Reasoning[ \t]*:?[ \t]*\n(?P<r>.+?)\n\s*### Answer[ \t]*:?[ \t]*\n(?P<a>.+?)\s*\Z", re.S)
_ALPACA_SOFT = re.compile(r"### Reasoning.*?### Answer", re.S)


def format_score(raw: str, fmt: str) -> FormatScore:
    """How well the raw completion follows ``fmt`` (``xml-tags`` or ``alpaca-reasoning``).

    * strict: the whole completion is the reasoning then the answer, each non-empty, every tag exactly
      once and none nested inside a part (whitespace around tags is free);
    * soft: the reasoning section is followed by an answer section somewhere in the text;
    * tags: 0.125 for each of the four xml tags present exactly once, minus 0.001 per character after
      ``</answer>`` (never below 0); for Alpaca 0.25 for each of the two headings present exactly once.

    score = (1.0 x strict + 0.5 x soft + tags) / 2.0.
    """
    if fmt == "xml-tags":
        markers, strict_re, soft_re = XML_TAGS, _XML_STRICT, _XML_SOFT
    elif fmt == "alpaca-reasoning":
        markers, strict_re, soft_re = ALPACA_MARKERS, _ALPACA_STRICT, _ALPACA_SOFT
    else:
        raise ValueError(f"no format score for reasoning format {fmt!r}")
    once = [raw.count(m) == 1 for m in markers]
    tags = TAGS_REWARD / len(markers) * sum(once)
    if fmt == "xml-tags" and once[3]:
        tags -= TRAILING_PENALTY * len(raw.split("</answer>", 1)[1].strip())
    m = strict_re.match(raw)
    strict = bool(m) and all(once) and not any(t in m.group("r") + m.group("a") for t in markers)  # type: ignore[union-attr]
    return FormatScore(strict=strict, soft=bool(soft_re.search(raw)), tags=max(0.0, tags))


def count_units(answer: str, language: Language, unit: str = "auto") -> int:
    """Words, or characters (letters and digits, no spaces or punctuation) for ja/zh when ``unit`` is auto."""
    chars = unit == "characters" or (unit == "auto" and uses_characters(language))
    return len(characters(answer)) if chars else len(words(answer))


def length_score(n: int, budget: int, *, minimum: int = 1, tolerance: float = 1.0) -> float:
    """1 for ``minimum`` <= n <= ``budget``; past the budget falling linearly to 0 at budget x (1 + tolerance); n / minimum below."""
    if n < minimum:
        return n / minimum
    if n <= budget:
        return 1.0
    return max(0.0, 1.0 - (n - budget) / (tolerance * budget))


def pattern_share(text: str, patterns: list[str]) -> float:
    """Share of ``patterns`` found anywhere in ``text`` (``re.search``)."""
    return sum(1 for p in patterns if re.search(p, text)) / len(patterns)


def repetition_score(text: str, language: Language, n: int = 3) -> float:
    """1 - repeated n-grams / all n-grams (words for en, characters for ja/zh); 0 for empty text.

    A text shorter than one n-gram repeats nothing and scores 1; "the the the the" scores near 0.
    """
    toks = units(text, language)
    if not toks:
        return 0.0
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    if not grams:
        return 1.0
    return len(set(grams)) / len(grams)


def on_motion_score(answer: str, motion: str, opponent_last: str | None = None, *, shared: int = 3) -> float:
    """min(1, distinct content units the answer shares with the motion and the opponent's last speech / ``shared``).

    Content units are stemmed English words outside a stop list and CJK character bigrams (see
    :func:`bonsai.rubric.scripts.content_units`), whatever the language, so a Japanese speech that
    quotes an English motion's words still counts them. 0 for an answer with none; with nothing to
    compare against (no content in the motion or the opponent's speech) the check cannot fail: 1.
    """
    reference = set(content_units(motion)) | set(content_units(opponent_last or ""))
    if not reference:
        return 1.0
    mine = set(content_units(answer))
    need = min(shared, len(reference))
    return min(1.0, len(mine & reference) / need)
