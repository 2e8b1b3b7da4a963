"""GRPO rewards for ``<reasoning>…</reasoning><answer>…</answer>`` completions: format and correctness.

The format rewards are the usual GRPO trio, each worth at most 0.5: a strict parse (the whole
completion is the two sections and nothing else), a soft parse (each tag once, in order, text
around them allowed) and a tag count (0.125 per tag present exactly once, less a little per
character after ``</answer>``, so rambling on after the answer costs). Correctness is worth 2: the
answer section read as a number, yes/no or name (see :mod:`training.logic.answers`) against the
problem's own. Each function is pure and scores one text; the ``*_reward`` wrappers take the batch
TRL's ``GRPOTrainer`` hands a reward function and are named as TRL logs them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from training.logic.answers import is_correct

TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
FORMAT_WEIGHT = 0.5
CORRECT_WEIGHT = 2.0
#: per character of text after the closing </answer> (as in the GRPO format reward it comes from)
TRAILING_COST = 0.001

_TAG = re.compile(r"</?(?:reasoning|answer)>")
_STRICT = re.compile(r"\s*<reasoning>(?P<reasoning>.*?)</reasoning>\s*<answer>(?P<answer>.*?)</answer>\s*", re.S)


def strict_format(text: str) -> float:
    """0.5 when the completion is exactly ``<reasoning>R</reasoning><answer>A</answer>`` (whitespace
    between), R and A non-empty and holding no tags of their own."""
    m = _STRICT.fullmatch(text)
    if not m:
        return 0.0
    parts = (m.group("reasoning"), m.group("answer"))
    return FORMAT_WEIGHT if all(p.strip() and not _TAG.search(p) for p in parts) else 0.0


def soft_format(text: str) -> float:
    """0.5 when each tag appears exactly once and in order; anything may stand around them."""
    if any(text.count(tag) != 1 for tag in TAGS):
        return 0.0
    positions = [text.index(tag) for tag in TAGS]
    return FORMAT_WEIGHT if positions == sorted(positions) else 0.0


def tag_count(text: str) -> float:
    """0.125 per tag present exactly once, less 0.001 per character after the last ``</answer>``."""
    score = sum(0.125 for tag in TAGS if text.count(tag) == 1)
    if "</answer>" in text:
        score -= TRAILING_COST * len(text.rsplit("</answer>", 1)[1].strip())
    return score


def extract_answer(text: str) -> str | None:
    """The answer section: after the last ``<answer>`` up to the next ``</answer>`` (or the end when
    the model stopped before closing it), any stray tags removed.

    Without an ``<answer>`` tag, what follows the last ``</reasoning>`` (or the whole text), as the GRPO
    correctness reward this comes from reads it: a base model that never writes the tags still gets a
    correctness signal while the format rewards teach it the tags. The readers stay strict (one number,
    one yes/no at the start, one name), so a rambling text rarely reads as an answer.
    """
    if "<answer>" in text:
        inner = text.rsplit("<answer>", 1)[1].split("</answer>", 1)[0]
    else:
        inner = text.rsplit("</reasoning>", 1)[-1]
    inner = _TAG.sub("", inner).strip()
    return inner or None


def correctness(text: str, answer_type: str, expected: str, names: Sequence[str] = ()) -> float:
    """2.0 when the answer section says the expected answer, else 0."""
    return CORRECT_WEIGHT if is_correct(answer_type, expected, extract_answer(text), names) else 0.0  # type: ignore[arg-type]


# --- TRL's reward-function signature ----------------------------------------------------------------


def completion_text(completion: Any) -> str:
    """TRL passes plain strings for text prompts and ``[{"role": "assistant", "content": ...}]`` for chats."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    raise TypeError(f"unexpected completion type {type(completion).__name__}")


def strict_format_reward(completions: list[Any], **_: Any) -> list[float]:
    return [strict_format(completion_text(c)) for c in completions]


def soft_format_reward(completions: list[Any], **_: Any) -> list[float]:
    return [soft_format(completion_text(c)) for c in completions]


def tag_count_reward(completions: list[Any], **_: Any) -> list[float]:
    return [tag_count(completion_text(c)) for c in completions]


def correctness_reward(completions: list[Any], check: list[str], **_: Any) -> list[float]:
    """``check`` is the dataset column of the same name: JSON with answer_type, expected and names."""
    out = []
    for completion, raw in zip(completions, check, strict=True):
        spec = json.loads(raw)
        out.append(correctness(completion_text(completion), spec["answer_type"], spec["expected"], spec.get("names") or ()))
    return out


#: what GRPO sums, in the order TRL logs them (``rewards/<name>/mean``)
REWARD_FUNCS = (correctness_reward, strict_format_reward, soft_format_reward, tag_count_reward)
