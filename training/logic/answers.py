"""Reading an answer the way a person marking it would: numbers by value, yes/no in en/ja/zh, names.

Each reader returns the canonical value it found ("9", "yes", "Alice") or ``None`` when the text
commits to no single one. An answer that names two candidates, or two different numbers, is not
an answer: that is what keeps "9 or 10" from scoring as 9.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Literal

AnswerType = Literal["number", "yesno", "name"]

#: longest match wins, so "不是" is read before "是" and "言えない" never as "言える"
YES_WORDS = ("yes", "true", "correct", "はい", "言える", "正しい", "是的", "是", "对", "能", "可以")
NO_WORDS = ("no", "false", "incorrect", "いいえ", "言えない", "正しくない", "不是", "不对", "不能", "不可以", "否", "不")

_LABEL = re.compile(r"^(?:the\s+)?(?:final\s+)?(?:answer|答え|答案|回答|答)\s*(?:is\s*)?[:：は是为]?\s*", re.I)
_LEAD = " \t\r\n\"'`「」『』“”‘’*_:：-—.。,、!！?？()（）[]【】"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_CJK_DIGITS = {"〇": 0, "零": 0, "一": 1, "二": 2, "两": 2, "兩": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_CJK_UNITS = {"十": 10, "百": 100, "千": 1000}
_CJK_RUN = re.compile(r"[〇零一二两兩三四五六七八九十百千万]+")


def normalize(text: str) -> str:
    """NFKC (full-width digits and letters become ASCII), trimmed of quotes, labels and punctuation."""
    text = unicodedata.normalize("NFKC", text).strip().strip(_LEAD)
    text = _LABEL.sub("", text).strip(_LEAD)
    return text


def _cjk_number(run: str) -> int | None:
    """一 -> 1, 十二 -> 12, 二十 -> 20, 三百零五 -> 305, 一万二千 -> 12000; None for what is not a numeral."""
    total, section, digit = 0, 0, None
    for ch in run:
        if ch in _CJK_DIGITS:
            if digit is not None and ch not in "〇零":
                return None  # "一二" is not a numeral
            digit = _CJK_DIGITS[ch] if ch not in "〇零" else digit
        elif ch in _CJK_UNITS:
            section += (1 if digit is None else digit) * _CJK_UNITS[ch]
            digit = None
        elif ch == "万":
            total += (section + (digit or 0)) * 10000
            section, digit = 0, None
    return total + section + (digit or 0)


def read_number(text: str) -> str | None:
    text = _THOUSANDS.sub("", normalize(text))
    values = {float(m) for m in _NUMBER.findall(text)}
    if not values:
        values = {float(v) for v in (_cjk_number(r) for r in _CJK_RUN.findall(text)) if v is not None}
    if len(values) != 1:
        return None
    value = values.pop()
    return str(int(value)) if value.is_integer() else repr(value)


def read_yesno(text: str) -> str | None:
    text = normalize(text).lower()
    best: tuple[int, str] | None = None
    for verdict, words in (("yes", YES_WORDS), ("no", NO_WORDS)):
        for word in words:
            if not text.startswith(word):
                continue
            after = text[len(word) : len(word) + 1]
            if word.isascii() and after.isalpha():
                continue  # "nothing" is not "no"
            if best is None or len(word) > best[0]:
                best = (len(word), verdict)
    return best[1] if best else None


def _mentions(name: str, text: str) -> bool:
    if name.isascii():
        return re.search(rf"(?<![A-Za-z]){re.escape(name.lower())}(?![A-Za-z])", text.lower()) is not None
    return name in text


def read_name(text: str, names: Sequence[str]) -> str | None:
    text = normalize(text)
    found = [n for n in names if _mentions(n, text)]
    return found[0] if len(found) == 1 else None


def read_answer(answer_type: AnswerType, text: str, names: Sequence[str] = ()) -> str | None:
    if answer_type == "number":
        return read_number(text)
    if answer_type == "yesno":
        return read_yesno(text)
    return read_name(text, names)


def is_correct(answer_type: AnswerType, expected: str, text: str | None, names: Sequence[str] = ()) -> bool:
    """Whether ``text`` (an extracted answer) says ``expected``; numbers compare by value."""
    if text is None:
        return False
    got = read_answer(answer_type, text, names)
    if got is None:
        return False
    if answer_type == "number":
        return abs(float(got) - float(expected)) < 1e-9
    return got == expected
