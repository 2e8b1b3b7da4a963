"""A verifiable repair: a speech rewritten, by rules only, into what its persona's rubric asks for.

The embedded base model almost never writes the reasoning tags, so among its samples no candidate
passes the format check and a preference pair alone cannot teach the format. The repair takes the
best candidate's own words and

1. strips every stray marker of any reasoning format, and drops repeated sentences (a small model loops);
2. keeps only the sentences written mostly in the persona's script, when there are any (language);
3. splits them into a reasoning part and an answer part (the model's own reasoning when it wrote one;
   otherwise the first one to three sentences reason and the rest answers, whichever scores best; a
   single sentence is cut at a clause or in half);
4. trims the answer to the length budget, at a sentence end where one fits;
5. lays the parts out in the persona's format (xml tags or Alpaca sections; the answer alone for a
   persona without one);
6. given a token budget (the turn's ``max_tokens``), shortens the parts until the whole layout fits it:
   the reasoning first, then both. A chosen answer longer than the turn teaches the model to open the
   tags and be cut off before it closes them (the loop's run 4: 16 of 16 opened ``<reasoning>``, 2 closed
   ``</answer>`` within the turn).

It is then scored again: :func:`repair` returns the best-scoring rewrite with both scores, and the
caller uses it only when it scores higher (ORPO's NLL term on the chosen answer then teaches the format).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from bonsai.reasoning import ReasoningFormat, parse
from bonsai.rubric.checks import count_units
from bonsai.rubric.config import LengthCheck
from bonsai.rubric.rubric import Rubric, RubricContext, RubricScore
from bonsai.rubric.scripts import characters, language_share, uses_characters

_SENTENCE = re.compile(r"[^.!?。！？\n]+(?:[.!?。！？]+[\"'”’」』)]*|\n|$)")
_CLAUSE = re.compile(r"[,，、;；:：]")
_MARKER = re.compile(r"</?(?:reasoning|answer)>|#{2,}\s*(?:Reasoning|Answer|Response|Instruction)\s*:?", re.I)


@dataclass(frozen=True)
class Repair:
    text: str
    before: RubricScore
    after: RubricScore

    @property
    def improved(self) -> bool:
        return self.after.total > self.before.total


def sentences(text: str) -> list[str]:
    """Sentences of any language (ends at . ! ? 。 ！ ？ or a line break), stripped; ones without a letter or digit dropped."""
    return [s.strip() for s in _SENTENCE.findall(text) if characters(s)]


def _unique(parts: list[str]) -> list[str]:
    """A small model loops: each sentence once, in first-seen order."""
    return list(dict.fromkeys(parts))


def _mostly_in(sentence: str, language: str) -> bool:
    ok, total = language_share(sentence, language)  # type: ignore[arg-type]
    return total > 0 and ok / total >= 0.5


def _join(parts: list[str], language: str) -> str:
    return ("" if uses_characters(language) else " ").join(parts)


def _halves(sentence: str, language: str) -> tuple[str, str]:
    """One sentence cut in two: at the clause mark nearest the middle, else at the middle word or character."""
    marks = [m.end() for m in _CLAUSE.finditer(sentence) if 0 < m.end() < len(sentence)]
    if marks:
        cut = min(marks, key=lambda i: abs(i - len(sentence) / 2))
    elif len(sentence.split()) < 2:
        cut = len(sentence) // 2
    else:
        ws = sentence.split()
        return " ".join(ws[: len(ws) // 2]), " ".join(ws[len(ws) // 2 :])
    return sentence[:cut].strip(), sentence[cut:].strip()


def _trim(parts: list[str], budget: int | None, language: str, unit: str) -> str:
    """Whole sentences while they fit the budget; a first sentence longer than the budget is cut."""
    if budget is None:
        return _join(parts, language)
    kept: list[str] = []
    for s in parts:
        if count_units(_join([*kept, s], language), language, unit) > budget:  # type: ignore[arg-type]
            break
        kept.append(s)
    if kept:
        return _join(kept, language)
    first = parts[0]
    if unit == "characters" or (unit == "auto" and uses_characters(language)):
        out, n = [], 0
        for ch in first:
            n += count_units(ch, language, unit) > 0  # type: ignore[arg-type]
            if n > budget:
                break
            out.append(ch)
        return "".join(out).strip()
    return " ".join(first.split()[:budget])


def layout(reasoning: str, answer: str, fmt: ReasoningFormat) -> str:
    """The two parts in ``fmt``, the layout the strict format check accepts."""
    if fmt == ReasoningFormat.XML:
        return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"
    if fmt == ReasoningFormat.ALPACA:
        return f"### Reasoning\n{reasoning}\n\n### Answer\n{answer}"
    return answer


#: does a rewrite fit the turn's token budget? (None: no budget)
Fits = Callable[[str], bool]


def _cut(text: str, ratio: float, language: str) -> str:
    """The first ``ratio`` of ``text``'s words (characters for a language written without spaces), at least one."""
    if uses_characters(language):
        return text[: max(1, round(len(text) * ratio))].strip()
    words = text.split()
    return " ".join(words[: max(1, round(len(words) * ratio))])


def _bisect(make: Callable[[float], str | None], fits: Fits, steps: int = 12) -> str | None:
    """The longest ``make(ratio)`` that fits, ratio in (0, 1] (shorter is assumed to fit at least as well)."""
    lo, hi, best = 0.0, 1.0, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        out = make(mid)
        if out is not None and fits(out):
            best, lo = out, mid
        else:
            hi = mid
    return best


def fit_layout(reasoning: str, answer: str, fmt: ReasoningFormat, language: str, fits: Fits | None) -> str | None:
    """``layout(reasoning, answer)`` within the budget: as it is when it fits, else with the reasoning cut
    (the answer is what the length check reads), else both cut by the same share; None when not even a
    word of each fits."""
    whole = layout(reasoning, answer, fmt)
    if fits is None or fits(whole):
        return whole
    out = _bisect(lambda r: layout(_cut(reasoning, r, language), answer, fmt) if reasoning else None, fits)
    if out is None:
        out = _bisect(lambda r: layout(_cut(reasoning, r, language) if reasoning else "", _cut(answer, r, language), fmt), fits)
    return out


def rewrites(text: str, rubric: Rubric, language: str, fits: Fits | None = None) -> list[str]:
    """Every rewrite of ``text`` into ``rubric``'s format, language and budget (steps 1-6 above).

    Where the model wrote no reasoning, each way of splitting its first sentences off as the reasoning
    is one rewrite (up to three): :func:`repair` keeps the one that scores best.
    """
    fmt = rubric.reasoning
    parsed = parse(text, fmt)
    clean = lambda s: _MARKER.sub(" ", s or "").strip()  # noqa: E731
    answer_sents = _unique(sentences(clean(parsed.answer)))
    reasoning_sents = _unique(sentences(clean(parsed.reasoning)))
    if not answer_sents and reasoning_sents:
        answer_sents, reasoning_sents = reasoning_sents, []
    native = [s for s in answer_sents if _mostly_in(s, language)]
    answer_sents = native or answer_sents
    reasoning_sents = [s for s in reasoning_sents if _mostly_in(s, language)] or ([] if native else reasoning_sents)
    if not answer_sents:
        return []
    length = next((c for c in rubric.checks if isinstance(c, LengthCheck)), None)
    budget, unit = (length.budget, length.unit) if length else (None, "auto")
    if fmt == ReasoningFormat.NONE:
        only = fit_layout("", _trim(answer_sents, budget, language, unit), fmt, language, fits)
        return [only] if only else []
    if reasoning_sents:
        splits = [(reasoning_sents, answer_sents)]
    elif len(answer_sents) >= 2:
        splits = [(answer_sents[:k], answer_sents[k:]) for k in range(1, min(len(answer_sents), 4))]
    else:
        r, a = _halves(answer_sents[0], language)
        splits = [([r], [a])] if r and a else []
    out = []
    for r_sents, a_sents in splits:
        reasoning, answer = _join(r_sents, language), _trim(a_sents, budget, language, unit)
        if reasoning and answer:
            fitted = fit_layout(reasoning, answer, fmt, language, fits)
            if fitted is not None:
                out.append(fitted)
    return out


def repair(text: str, rubric: Rubric, ctx: RubricContext, fits: Fits | None = None) -> Repair:
    """The best-scoring rewrite of ``text`` with its score before and after (``improved`` says whether to use
    it); with ``fits``, only rewrites that fit the turn's token budget."""
    before = rubric.score(text, ctx)
    scored = [(rubric.score(t, ctx), t) for t in rewrites(text, rubric, ctx.language, fits)]
    if not scored:
        return Repair("", before, RubricScore(0.0, {k: 0.0 for k in before.checks}))
    after, fixed = max(scored, key=lambda st: st[0].total)  # max keeps the first of equals: fewest sentences reasoned
    return Repair(fixed, before, after)
