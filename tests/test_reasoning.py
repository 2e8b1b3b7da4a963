"""Reasoning formats: parse() on well-formed and broken outputs, and StreamSplitter agreeing with it
however the text is cut into deltas (every single split point, every pair for short texts, and many
random multi-way splits). hypothesis is not installed, so the split points are enumerated."""

from __future__ import annotations

import itertools
import random

import pytest

from bonsai.reasoning import _MARKERS, Parsed, ReasoningFormat, StreamSplitter, parse

XML, ALPACA, NONE = ReasoningFormat.XML, ReasoningFormat.ALPACA, ReasoningFormat.NONE


# --- parse --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<reasoning>They cite cost.</reasoning>\n<answer>Cost falls with scale.</answer>", Parsed("They cite cost.", "Cost falls with scale.")),
        ("  <reasoning>\n r \n</reasoning><answer>\n a \n</answer>\n", Parsed("r", "a")),
        # missing closing tags
        ("<reasoning>r</reasoning><answer>a", Parsed("r", "a")),
        ("<reasoning>r<answer>a</answer>", Parsed("r", "a")),
        ("<reasoning>r<answer>a", Parsed("r", "a")),
        # answer after reasoning but without its tag
        ("<reasoning>r</reasoning>\nThe answer itself.", Parsed("r", "The answer itself.")),
        # missing answer: fall back to the whole text, markers stripped
        ("<reasoning>only thoughts</reasoning>", Parsed("only thoughts", "only thoughts")),
        ("<reasoning>only thoughts, never closed", Parsed("only thoughts, never closed", "only thoughts, never closed")),
        ("<answer>just the answer</answer>", Parsed(None, "just the answer")),
        ("<answer>unclosed answer", Parsed(None, "unclosed answer")),
        # no tags at all, or empty
        ("Plain speech, no tags.", Parsed(None, "Plain speech, no tags.")),
        ("", Parsed(None, "")),
        ("   \n ", Parsed(None, "")),
        ("<reasoning></reasoning><answer></answer>", Parsed(None, "")),
        ("stray </reasoning> and </answer>", Parsed(None, "stray  and")),
        # text around the tags is not the answer when there is an answer section
        ("Sure. <reasoning>r</reasoning><answer>a</answer> Bye.", Parsed("r", "a")),
        # angle brackets that are not markers survive
        ("<reasoning>1 < 2</reasoning><answer>use <b>bold</b></answer>", Parsed("1 < 2", "use <b>bold</b>")),
    ],
)
def test_parse_xml(text: str, expected: Parsed) -> None:
    assert parse(text, XML) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("### Reasoning\nThey cite cost.\n### Answer\nCost falls with scale.", Parsed("They cite cost.", "Cost falls with scale.")),
        ("### Reasoning\nr1\n\nr2\n\n### Answer\n\na1\na2\n", Parsed("r1\n\nr2", "a1\na2")),
        ("### Answer\nonly the answer", Parsed(None, "only the answer")),
        # missing answer section: the reasoning doubles as the answer
        ("### Reasoning\nthoughts only", Parsed("thoughts only", "thoughts only")),
        ("### Reasoning\n", Parsed(None, "")),
        # empty answer section
        ("### Reasoning\nr\n### Answer\n  ", Parsed("r", "r")),
        ("No headers at all.", Parsed(None, "No headers at all.")),
        ("", Parsed(None, "")),
        ("### Reasoning\nr with ## subheading and #1\n### Answer\na #2", Parsed("r with ## subheading and #1", "a #2")),
    ],
)
def test_parse_alpaca(text: str, expected: Parsed) -> None:
    assert parse(text, ALPACA) == expected


@pytest.mark.parametrize("text", ["", "  plain  ", "<reasoning>kept verbatim</reasoning><answer>x</answer>", "### Reasoning\nr\n### Answer\na"])
def test_parse_none_keeps_everything(text: str) -> None:
    assert parse(text, NONE) == Parsed(None, text.strip())


@pytest.mark.parametrize("fmt", list(ReasoningFormat))
def test_parse_answer_never_contains_markers(fmt: ReasoningFormat) -> None:
    pieces = [*_MARKERS[fmt], "text ", "more\n", " ", "<", "#"]
    rng = random.Random(7)
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        parsed = parse(text, fmt)
        for marker in _MARKERS[fmt]:
            assert marker not in parsed.answer, (text, parsed)
            assert parsed.reasoning is None or marker not in parsed.reasoning, (text, parsed)
        assert parsed.reasoning != "" and parsed.answer == parsed.answer.strip(), (text, parsed)


# --- StreamSplitter -----------------------------------------------------------------------------


def stream(text: str, cuts: list[int], fmt: ReasoningFormat) -> list[tuple[str, str]]:
    splitter = StreamSplitter(fmt)
    out: list[tuple[str, str]] = []
    bounds = [0, *sorted(cuts), len(text)]
    for a, b in itertools.pairwise(bounds):
        out.extend(splitter.feed(text[a:b]))
    out.extend(splitter.flush())
    return out


def joined(pieces: list[tuple[str, str]], kind: str | None = None) -> str:
    return "".join(t for k, t in pieces if kind is None or k == kind)


def norm(s: str | None) -> str:
    return " ".join((s or "").split())


def remove_markers(text: str, fmt: ReasoningFormat) -> str:
    for m in _MARKERS[fmt]:
        text = text.replace(m, "")
    return text


#: outputs in the persona's format (closing tags optional): the stream's kinds must match parse()
WELL_FORMED = {
    XML: [
        "<reasoning>They cite cost; costs fall.</reasoning>\n<answer>Costs fall with scale, so the motion stands.</answer>",
        "<reasoning>r1 < r2 > r3</reasoning><answer>a <b>b</b> c</answer>",
        "<reasoning>never closed<answer>the answer</answer>",
        "<reasoning>closed</reasoning><answer>answer never closed",
        "<answer>answer only</answer>",
        "<reasoning>思考：費用は下がる。</reasoning><answer>賛成です。費用は下がります。</answer>",
        "no tags at all, just a speech",
    ],
    ALPACA: [
        "### Reasoning\nThey cite cost.\nCosts fall.\n### Answer\nCosts fall with scale.",
        "### Reasoning\nr with ## sub and # hash\n\n### Answer\n\na #1 ##",
        "### Answer\nanswer only",
        "no headers at all, just a speech",
        "### Reasoning\n反対：理由\n### Answer\n我反对。",
    ],
    NONE: ["<reasoning>not a marker here</reasoning> ### Answer also plain", "plain"],
}


def _all_cut_sets(text: str) -> list[list[int]]:
    n = len(text)
    cuts: list[list[int]] = [[]] + [[i] for i in range(1, n)]
    if n <= 70:
        cuts += [[i, j] for i in range(1, n) for j in range(i + 1, n)]
    rng = random.Random(n)
    cuts += [sorted(rng.sample(range(1, n), rng.randint(2, min(n - 1, 12)))) for _ in range(200)]
    cuts.append(list(range(1, n)))  # one character at a time
    return cuts


@pytest.mark.parametrize(("fmt", "text"), [(f, t) for f, texts in WELL_FORMED.items() for t in texts])
def test_stream_agrees_with_parse_at_every_split(fmt: ReasoningFormat, text: str) -> None:
    expected = parse(text, fmt)
    for cuts in _all_cut_sets(text):
        pieces = stream(text, cuts, fmt)
        assert norm(joined(pieces, "reasoning")) == norm(expected.reasoning), (cuts, pieces)
        assert norm(joined(pieces, "answer")) == norm(expected.answer), (cuts, pieces)
        assert joined(pieces) == remove_markers(text, fmt), (cuts, pieces)
        for _, piece in pieces:
            assert piece, (cuts, pieces)  # no empty pieces
            for marker in _MARKERS[fmt]:
                assert marker not in piece, (cuts, pieces)


#: outputs with no answer section: parse() falls back to the whole text; the stream shows it as reasoning
FALLBACK = {
    XML: ["<reasoning>thoughts only</reasoning>", "<reasoning>thoughts, never closed"],
    ALPACA: ["### Reasoning\nthoughts only"],
}


@pytest.mark.parametrize(("fmt", "text"), [(f, t) for f, texts in FALLBACK.items() for t in texts])
def test_stream_without_answer_section_loses_nothing(fmt: ReasoningFormat, text: str) -> None:
    expected = parse(text, fmt)
    for cuts in _all_cut_sets(text):
        pieces = stream(text, cuts, fmt)
        assert norm(joined(pieces, "reasoning")) == norm(expected.reasoning)
        assert norm(joined(pieces)) == norm(expected.answer)
        assert not any(m in t for _, t in pieces for m in _MARKERS[fmt])


def test_stream_holds_back_a_partial_marker_until_decided() -> None:
    s = StreamSplitter(XML)
    assert list(s.feed("<reaso")) == []
    assert s.kind == "answer"
    assert list(s.feed("ning>think")) == [("reasoning", "think")]
    assert list(s.feed(" <")) == [("reasoning", " ")]  # "<" might open a tag
    assert list(s.feed("3 </reasoning")) == [("reasoning", "<3 ")]
    assert list(s.feed(">")) == []
    assert s.kind == "answer"
    assert list(s.feed("<answer>done")) == [("answer", "done")]
    assert list(s.flush()) == []


def test_stream_flush_releases_a_held_back_tail() -> None:
    s = StreamSplitter(ALPACA)
    assert list(s.feed("### Reasoning\nr\n###")) == [("reasoning", "\nr\n")]
    assert list(s.flush()) == [("reasoning", "###")]
    assert list(StreamSplitter(XML).flush()) == []


def test_stream_none_format_passes_everything_through() -> None:
    s = StreamSplitter(NONE)
    assert list(s.feed("<reasoning>")) == [("answer", "<reasoning>")]
    assert list(s.feed("### Answer")) == [("answer", "### Answer")]
    assert list(s.flush()) == []
