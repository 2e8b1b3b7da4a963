"""Stored text made safe to show on a terminal.

Motions, persona names and model output come from users and from a model, and land in the store as
they were typed or generated. Printed raw, an escape sequence in them can retitle the terminal, clear
the screen, move the cursor over earlier lines or (with some terminals) do worse. Everything the CLI
and the TUI show from stored or generated data goes through :func:`printable` first; JSON output does
not need it (``json.dumps`` escapes control characters).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, TypeVar

T = TypeVar("T")

# Whole sequences first, so their printable tails ("[2J", "]0;title") go too, not just the ESC:
# CSI (ESC [ or 8-bit 0x9B) params/intermediates/final; OSC, DCS, SOS, PM, APC up to their terminator
# (BEL or ST, 7- or 8-bit) or the end of the text; then any other two-character ESC sequence.
_SEQUENCES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c|$)"
    r"|\x1b[ -/]*[0-~]",
    re.DOTALL,
)
# What is left of C0 (but newline and tab), DEL and C1, and a lone ESC cut off at the end of a token.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` without terminal escape sequences or control characters; newlines and tabs are kept.

    A carriage return is dropped too (``\\r\\n`` becomes ``\\n``): alone it returns the cursor and lets
    the rest of a line print over what came before.
    """
    if text.isprintable():
        return text  # the common case, no regex work
    return _CONTROLS.sub("", _SEQUENCES.sub("", text))


def printable_all(value: T) -> T:
    """:func:`printable` applied to every string inside ``value`` (dicts, lists, tuples, dataclasses)."""
    return _clean(value)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clean(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _clean(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init})
    return value


_RAW_IN_JSON = re.compile(r"[\x7f-\x9f\u2028\u2029]")


def terminal_json(value: Any, **kwargs: Any) -> str:
    """``json.dumps(value, ensure_ascii=False)`` that is also safe on a terminal.

    ``json.dumps`` escapes C0 controls but, with ``ensure_ascii=False``, writes DEL and the C1 controls
    (0x9B is an 8-bit CSI) raw; here they become ``\\u`` escapes, so the JSON decodes to the same text.
    """
    import json

    return _RAW_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False, **kwargs))


#: the longest motion accepted: a motion is a sentence or two, and it is repeated in every prompt of
#: the debate, so a pasted essay would crowd the speeches out of the context window
MAX_MOTION_CHARS = 1000


def check_motion(text: str) -> str:
    """The motion, stripped; ``ValueError`` (with a message a user can act on) if it cannot be one.

    Text that cannot be encoded as UTF-8 (a lone surrogate: undecodable bytes on the command line, or a
    ``\\ud800`` escape in a JSON file) would fail later inside hashing, the store or the tokenizer.
    """
    text = text.strip()
    if not text:
        raise ValueError("the motion is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"the motion is not valid Unicode text (character {exc.start + 1} is a lone surrogate, "
            "e.g. bytes that are not UTF-8); write it in UTF-8"
        ) from None
    if len(text) > MAX_MOTION_CHARS:
        raise ValueError(f"the motion is {len(text):,} characters long; the limit is {MAX_MOTION_CHARS:,}")
    return text
