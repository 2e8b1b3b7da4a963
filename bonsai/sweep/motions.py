"""Motions for a sweep from files: plain text, JSON lines or CSV, in any language, strictly UTF-8.

Strict decoding on purpose: a file saved in Shift-JIS or GBK would otherwise turn into mojibake motions
that the debaters argue about in earnest; naming the byte and line lets the user re-save the file.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from bonsai.errors import ConfigError

log = logging.getLogger(__name__)

FORMATS = (".txt", ".jsonl", ".csv")
_HINT = "one motion per line (.txt, # starts a comment), JSON lines with a \"motion\" field (.jsonl), or a CSV with a \"motion\" column (.csv)"


def read_motions(path: Path, *, field: str = "motion") -> list[str]:
    """The motions in ``path`` in file order (blank lines and ``#`` comments of a .txt skipped)."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"motions file {path} has the suffix {suffix or '(none)'!r}, which bonsai does not read", _HINT)
    if not path.is_file():
        raise ConfigError(f"motions file {path} does not exist", "check the path (relative paths start at the sweep file's folder)")
    text = _decode(path)
    if suffix == ".txt":
        motions = [line.strip() for line in text.splitlines()]
        motions = [m for m in motions if m and not m.startswith("#")]
    elif suffix == ".jsonl":
        motions = _from_jsonl(path, text, field)
    else:
        motions = _from_csv(path, text, field)
    if not motions:
        raise ConfigError(f"motions file {path} holds no motion", _HINT)
    return motions


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"motions file {path} is not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line} (offset {exc.start}) cannot be decoded",
            "save the file as UTF-8 (Japanese and Chinese motions are fine in UTF-8; Shift-JIS and GBK are not read)",
        ) from None


def _from_jsonl(path: Path, text: str, field: str) -> list[str]:
    motions = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"motions file {path}, line {number}: not JSON ({exc.msg})", _HINT) from None
        value = item.get(field) if isinstance(item, dict) else item
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"motions file {path}, line {number}: no text in a {field!r} field", _HINT)
        motions.append(value.strip())
    return motions


def _from_csv(path: Path, text: str, field: str) -> list[str]:
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        return []
    header = [c.strip() for c in rows[0]]
    if field in header:
        column = header.index(field)
        body = rows[1:]
    elif len(header) == 1:
        column, body = 0, rows  # a one-column file without a header: every row is a motion
    else:
        raise ConfigError(f"motions file {path} has no {field!r} column (columns: {', '.join(header)})", _HINT)
    return [r[column].strip() for r in body if len(r) > column and r[column].strip()]


def unique(motions: list[str]) -> list[str]:
    """Drop repeats (keeping the first): a motion listed twice would only double its weight in the ratings."""
    seen: dict[str, None] = {}
    for m in motions:
        if m in seen:
            log.warning("motion listed more than once, kept once: %s", m[:80])
        seen.setdefault(m, None)
    return list(seen)
