"""Reading a vLLM server's log: its last lines, and the lines that say why it failed to start.

vLLM's own last words on a failed start are "Engine core initialization failed. See root cause
above": the cause is the exception at the end of the first traceback above that line, often printed
by the engine-core process with a ``(EngineCore pid=N) ERROR <date> [file:line]`` prefix on every line.
"""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path

from bonsai.errors import EngineError

FAILURE_MARKER = "Engine core initialization failed"
#: "(EngineCore pid=123) " and "ERROR 12-07 00:04:26 [core.py:1510] " in front of a line
_PROCESS_PREFIX = re.compile(r"^\([\w.-]+ pid=\d+\)\s?")
_LOG_PREFIX = re.compile(r"^(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) \d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \[[^\]]*\]\s?")
#: the last line of a traceback: ``ValueError: ...``, ``torch.OutOfMemoryError: ...``, ``SystemExit``
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)\b(?::.*)?$")
MAX_LINE_CHARS = 600


def strip_prefix(line: str) -> str:
    """``line`` without vLLM's process and logging prefixes."""
    line = _PROCESS_PREFIX.sub("", line.rstrip("\n"))
    return _LOG_PREFIX.sub("", line)


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file, or ``(no log)``."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines)).rstrip()
    except OSError:
        return "(no log)"


def root_cause(text: str, *, limit: int = 3) -> list[str]:
    """The exception lines that explain a failed start, innermost cause first (at most ``limit``).

    Looks above the last "Engine core initialization failed" (or in the whole log when vLLM died
    before its engine core started): the exception ending each traceback, in order of appearance
    (the first is the root cause; chained ones follow). Without a traceback, the first lines that
    name an ``...Error``. Empty when the log says nothing of the kind.
    """
    lines = [strip_prefix(line) for line in text.splitlines()]
    end = next((i for i in range(len(lines) - 1, -1, -1) if FAILURE_MARKER in lines[i]), len(lines))
    above = lines[:end]
    causes: list[str] = []
    in_traceback = False
    for line in above:
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif in_traceback and _EXCEPTION_LINE.match(line):
            in_traceback = False
            if line not in causes:
                causes.append(line)
    if not causes:
        causes = list(dict.fromkeys(line.strip() for line in above if re.search(r"\w*Error\b", line) and "ulimit" not in line))
    return [c if len(c) <= MAX_LINE_CHARS else c[: MAX_LINE_CHARS - 1] + "…" for c in causes[:limit]]


def root_cause_of(path: Path, *, limit: int = 3) -> list[str]:
    try:
        return root_cause(path.read_text(encoding="utf-8", errors="replace"), limit=limit)
    except OSError:
        return []


def start_failure(log_path: Path, what: str, *, again: str = "bonsai serve") -> EngineError:
    """The error for a server that died or hung while starting: vLLM's root cause first, then the
    end of its log (which after a failed start is mostly the front-end's own traceback)."""
    causes = root_cause_of(log_path)
    cause = f": {causes[0]}" if causes else ""
    more = "".join(f"\n  {c}" for c in causes[1:])
    return EngineError(
        f"the vLLM server {what}{cause}{more}\nlast lines of {log_path}:\n{tail(log_path, 12)}",
        (f"vLLM says {causes[0]!r}; fix that and run `{again}` again" if causes else f"fix the cause in the log above (port in use, memory, a bad adapter) and run `{again}` again")
        + f" (full log: {log_path})",
    )
