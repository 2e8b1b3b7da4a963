"""Which version is current, and how it got there.

``current`` is one small file replaced with ``os.replace``; ``history.json`` remembers the promotions so
``rollback`` can step back. The pointer is the truth: the history is written after it, and a rollback
works from the history's view of what came before whatever ``current`` says now.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bonsai import atomic
from bonsai.errors import AdapterError
from bonsai.registry.layout import CURRENT, HISTORY, LOCK, current_version, persona_dir
from bonsai.registry.resolve import Version, open_version, resolve_version

log = logging.getLogger(__name__)


def history(home: Path, persona: str) -> list[dict[str, Any]]:
    path = persona_dir(home, persona) / HISTORY
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path} cannot be read ({exc})", "fix or delete it (the `current` file alone still works)") from exc
    return data if isinstance(data, list) else []


def promotion_stack(events: list[dict[str, Any]]) -> list[str]:
    """The versions that were current, oldest first, as promotions push and rollbacks pop them."""
    stack: list[str] = []
    for ev in events:
        if ev.get("action") == "promote":
            stack.append(ev["version"])
        elif ev.get("action") == "rollback" and stack:
            stack.pop()
            if ev.get("version") and (not stack or stack[-1] != ev["version"]):
                stack.append(ev["version"])
    return stack


def rollback_target(home: Path, persona: str) -> str:
    """The version promoted before the current one, by the history."""
    cur = current_version(home, persona)
    stack = promotion_stack(history(home, persona))
    # the pointer is the truth: if it moved without a history entry, what the history holds last
    # is what came before it
    earlier = stack[:-1] if stack and stack[-1] == cur else stack
    if not earlier:
        raise AdapterError(
            f"persona {persona!r} has no earlier version to roll back to (current: {cur or 'none'})",
            "name one with --to VERSION (see `bonsai adapters list`)",
        )
    return earlier[-1]


@contextlib.contextmanager
def _locked(home: Path, persona: str) -> Iterator[None]:
    """Hold the persona's history lock: two promotions or rollbacks at once would each read the
    history, append their event and write it back, and one event would be lost."""
    root = persona_dir(home, persona)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _record(home: Path, persona: str, event: dict[str, Any]) -> None:
    """Append to history.json; the caller holds :func:`_locked`."""
    events = [*history(home, persona), {**event, "at": time.time()}]
    atomic.write_text(persona_dir(home, persona) / HISTORY, json.dumps(events, indent=2) + "\n")


def set_current(home: Path, persona: str, version: str) -> None:
    """Point ``current`` at ``version`` in one atomic replace (temp file + ``os.replace``)."""
    atomic.write_text(persona_dir(home, persona) / CURRENT, version + "\n")


def promote(home: Path, persona: str, version: str | Version, *, reason: str = "", evaluation: dict[str, Any] | None = None) -> str | None:
    """Make ``version`` current; returns the version it replaced. A name is resolved and its files are
    checked here; a :class:`Version` was checked when it was opened."""
    target = version if isinstance(version, Version) else open_version(home, persona, version)
    with _locked(home, persona):
        previous = current_version(home, persona)
        if previous == target.version:
            log.info("%s@%s is already current", persona, target.version)
            return previous
        set_current(home, persona, target.version)
        _record(home, persona, {"action": "promote", "version": target.version, "previous": previous, "reason": reason, "evaluation": evaluation})
    return previous


def rollback(home: Path, persona: str, *, to: str | Version | None = None) -> tuple[str | None, str]:
    """Point ``current`` back to the version promoted before it (or ``to``); returns (from, to)."""
    with _locked(home, persona):
        cur = current_version(home, persona)
        if isinstance(to, Version):
            name = to.version
        else:
            name = resolve_version(home, persona, to) if to is not None else rollback_target(home, persona)
        if name == cur:
            raise AdapterError(f"{persona}@{name} is already current", "name another version with --to")
        target = to if isinstance(to, Version) else open_version(home, persona, name)
        set_current(home, persona, target.version)
        _record(home, persona, {"action": "rollback", "version": target.version, "previous": cur})
    return cur, target.version
