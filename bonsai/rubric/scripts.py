"""Which script a character belongs to, and the units the checks count (words, characters, bigrams).

Only letters count towards a script: digits, punctuation, whitespace, symbols and emoji belong to no
language, so "2026!" or "👍" neither help nor hurt a speech's language share.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from itertools import groupby

from bonsai.rubric.config import Language
from bonsai.rubric.stopwords import STOPWORDS


def _in(cp: int, *ranges: tuple[int, int]) -> bool:
    return any(lo <= cp <= hi for lo, hi in ranges)


def script(ch: str) -> str | None:
    """'latin', 'kana', 'han', 'other' for a letter; None for anything that is not a letter."""
    cat = unicodedata.category(ch)
    cp = ord(ch)
    if cp == 0x3005 or cp == 0x3006:  # 々 〆: kanji iteration marks (category Lm/Lo), part of Japanese words
        return "han"
    if cp == 0x30FC or cp == 0xFF70:  # ー: the katakana long-vowel mark (category Lm)
        return "kana"
    if not cat.startswith("L"):
        return None
    if _in(cp, (0x3040, 0x309F), (0x30A0, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F)):
        return "kana"
    if _in(cp, (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2FA1F), (0xF900, 0xFAFF)):
        return "han"
    if _in(cp, (0x0041, 0x024F), (0x1E00, 0x1EFF), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A)):
        return "latin"
    return "other"


#: the scripts each language is written in
SCRIPTS: dict[str, frozenset[str]] = {
    "en": frozenset({"latin"}),
    "ja": frozenset({"kana", "han"}),
    "zh": frozenset({"han"}),
}


def uses_characters(language: str) -> bool:
    """ja and zh are written without spaces: budgets and n-grams count characters, not words."""
    return language in ("ja", "zh")


def is_cjk(ch: str) -> bool:
    return script(ch) in ("kana", "han")


_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*", re.UNICODE)


def words(text: str) -> list[str]:
    """Runs of letters (apostrophes inside kept: "don't"); CJK runs come out whole."""
    return _WORD.findall(text)


def characters(text: str) -> list[str]:
    """Every character that is not whitespace, punctuation or a symbol: what a ja/zh length budget counts."""
    return [ch for ch in text if not ch.isspace() and not unicodedata.category(ch).startswith(("P", "S", "Z", "C"))]


def units(text: str, language: str) -> list[str]:
    """The tokens n-grams are built from: lower-cased words for en, letters and digits for ja/zh."""
    if uses_characters(language):
        return characters(text)
    return [w.lower() for w in words(text)]


def _stem(word: str) -> str:
    """A crude English stem, enough for "cars" to meet "car" and "banning" to meet "ban"."""
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix) and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def content_units(text: str) -> Iterator[str]:
    """Content-bearing units of any text: stemmed non-stopwords for Latin runs, character bigrams for CJK runs.

    A speech may mix scripts (an English motion quoted in a Japanese speech), so every run is
    tokenized by its own script. CJK bigrams drop the ones in the stop list and the ones made only of
    hiragana (mostly grammar: "ている", "です").
    """
    for word in words(text):
        for cjk_run, group in groupby(word, key=is_cjk):
            yield from (_cjk_units(list(group)) if cjk_run else _latin_units("".join(group)))


def _latin_units(word: str) -> Iterator[str]:
    w = word.lower()
    if len(w) > 2 and w not in STOPWORDS["en"]:
        yield _stem(w)


#: single Han characters that are grammar ("的", "了", "是"): a bigram holding one is not a topic
_STOP_CHARS = frozenset(w for w in STOPWORDS["zh"] if len(w) == 1)


def _cjk_units(cjk: list[str]) -> Iterator[str]:
    if len(cjk) == 1:
        if script(cjk[0]) == "han" and cjk[0] not in STOPWORDS["zh"]:
            yield cjk[0]
        return
    for a, b in zip(cjk, cjk[1:], strict=False):
        bigram = a + b
        if bigram in STOPWORDS["ja"] or bigram in STOPWORDS["zh"] or a in _STOP_CHARS or b in _STOP_CHARS:
            continue
        if all(0x3040 <= ord(c) <= 0x309F for c in bigram):
            continue
        yield bigram


def language_share(text: str, language: Language) -> tuple[int, int]:
    """(letters in the language's script, all letters)."""
    wanted = SCRIPTS[language]
    ok = total = 0
    for ch in text:
        s = script(ch)
        if s is None:
            continue
        total += 1
        ok += s in wanted
    return ok, total
