"""Reasoning formats: split a speaker's output into private reasoning and the public answer.

Opponents and the judge only ever see answers, so the split must be robust to a small model that
forgets a tag, never closes one, or skips the format entirely: whatever is not clearly reasoning is
the answer, and an output with no answer section falls back to its whole text without markers.

Pure text work on the ground floor: personas, the debate and the rubric all read it, and it reads none of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Literal


class ReasoningFormat(str, Enum):
    """How a persona lays out its private reasoning and its public answer (the persona YAML's ``reasoning``)."""

    NONE = "none"
    ALPACA = "alpaca-reasoning"
    XML = "xml-tags"


Kind = Literal["reasoning", "answer"]

#: marker -> the kind of text that follows it
_MARKERS: dict[ReasoningFormat, dict[str, Kind]] = {
    ReasoningFormat.XML: {"<reasoning>": "reasoning", "</reasoning>": "answer", "<answer>": "answer", "</answer>": "answer"},
    ReasoningFormat.ALPACA: {"### Reasoning": "reasoning", "### Answer": "answer"},
    ReasoningFormat.NONE: {},
}

FORMAT_INSTRUCTIONS: dict[ReasoningFormat, str] = {
    ReasoningFormat.NONE: "",
    ReasoningFormat.XML: "Write your private reasoning inside <reasoning>...</reasoning>, then your speech inside <answer>...</answer>.",
    ReasoningFormat.ALPACA: "Write your private reasoning under '### Reasoning', then your speech under '### Answer'.",
}


@dataclass(frozen=True)
class Parsed:
    reasoning: str | None
    answer: str


def _strip_markers(text: str, fmt: ReasoningFormat) -> str:
    for marker in _MARKERS[fmt]:
        text = text.replace(marker, "")
    return text.strip()


def parse(text: str, fmt: ReasoningFormat) -> Parsed:
    if fmt == ReasoningFormat.NONE:
        return Parsed(None, text.strip())
    reasoning, answer = _split(text, fmt)
    # A small model repeats or nests tags ("<answer>a<reasoning>..."): no marker may reach the
    # answer that opponents and the judge read.
    reasoning = _strip_markers(reasoning, fmt) if reasoning else ""
    return Parsed(reasoning or None, _strip_markers(answer, fmt))


def _split(text: str, fmt: ReasoningFormat) -> tuple[str | None, str]:
    if fmt == ReasoningFormat.XML:
        reasoning = re.search(r"<reasoning>(.*?)(?:</reasoning>|<answer>|$)", text, re.S)
        answer = re.search(r"<answer>(.*?)(?:</answer>|$)", text, re.S)
        r = reasoning.group(1).strip() if reasoning else None
        if answer and _strip_markers(answer.group(1), fmt):
            return r, answer.group(1)
        if reasoning:
            rest = (text[: reasoning.start()] + text[reasoning.end() :]).strip()
            rest = _strip_markers(rest, fmt)
            if rest:
                return r, rest
        return r, text
    # Alpaca: "### Reasoning ... ### Answer ..."
    head, sep, tail = text.partition("### Answer")
    if sep and _strip_markers(tail, fmt):
        return head.replace("### Reasoning", ""), tail
    if "### Reasoning" in text:
        # no (non-empty) answer section: the reasoning doubles as the answer
        r = _strip_markers(text.split("### Reasoning", 1)[1], fmt)
        return r, r or text
    return None, text


class StreamSplitter:
    """Incremental :func:`parse` for live display: feed deltas, get (kind, text) pieces.

    A marker may arrive split across deltas, so text that could still become a marker is held back
    until the next delta (or :meth:`flush`) decides.
    """

    def __init__(self, fmt: ReasoningFormat) -> None:
        self._markers = _MARKERS[fmt]
        self._kind: Kind = "answer"
        self._buf = ""

    @property
    def kind(self) -> Kind:
        return self._kind

    def feed(self, delta: str) -> Iterator[tuple[Kind, str]]:
        self._buf += delta
        yield from self._drain(final=False)

    def flush(self) -> Iterator[tuple[Kind, str]]:
        yield from self._drain(final=True)

    def _drain(self, *, final: bool) -> Iterator[tuple[Kind, str]]:
        while self._buf:
            hit = None
            for marker in self._markers:
                i = self._buf.find(marker)
                if i >= 0 and (hit is None or i < hit[0]):
                    hit = (i, marker)
            if hit is not None:
                i, marker = hit
                if i:
                    yield self._kind, self._buf[:i]
                self._kind = self._markers[marker]
                self._buf = self._buf[i + len(marker) :]
                continue
            keep = 0 if final else self._partial_marker_len()
            out, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
            if out:
                yield self._kind, out
            break

    def _partial_marker_len(self) -> int:
        best = 0
        for marker in self._markers:
            for n in range(min(len(marker) - 1, len(self._buf)), 0, -1):
                if self._buf.endswith(marker[:n]):
                    best = max(best, n)
                    break
        return best
