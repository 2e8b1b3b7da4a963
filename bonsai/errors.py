"""One exception family for everything a user can get wrong.

The CLI prints ``BonsaiError`` as a single clean message (what is wrong, then how to fix it) and exits
non-zero; anything else is a bug and keeps its traceback. Tests let every error propagate.
"""

from __future__ import annotations

from collections.abc import Callable


class BonsaiError(Exception):
    """A problem the user can fix; ``hint`` says how."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ConfigError(BonsaiError):
    """A YAML file (persona, format, sweep, recipe) that does not validate."""


class PersonaNotFound(BonsaiError):
    pass


class AdapterError(BonsaiError):
    """An adapter that is missing, broken, or does not fit the base model or the engine."""


class ModelError(BonsaiError):
    """The base model cannot be found or prepared."""


class EngineError(BonsaiError):
    """The engine cannot start, or a request to it failed."""

    exit_code = 3


class EndpointUnreachable(EngineError):
    pass


class PromptTooLong(BonsaiError):
    """A prompt that leaves no room for the completion in the model's context."""


class StoreError(BonsaiError):
    """The transcript store is missing, corrupt, or from a newer bonsai."""


class DebateNotFound(StoreError):
    pass


class StoreUnavailable(StoreError):
    """SQLite could not do what was asked, for a reason outside bonsai: the file is locked by another
    writer past the busy timeout (``kind`` "locked"), the disk is full ("full"), or an I/O error ("io").

    ``retryable``: the same write may succeed later (a lock is released, space is freed), so a sweep
    retries the debate with backoff instead of giving up on it at once."""

    exit_code = 5

    def __init__(self, message: str, hint: str | None = None, *, kind: str = "io") -> None:
        super().__init__(message, hint)
        self.kind = kind

    @property
    def retryable(self) -> bool:
        return self.kind in ("locked", "full")


class LockHeld(BonsaiError):
    """Another live bonsai process holds the lock on a sweep or a debate (see ``bonsai/locks.py``)."""

    exit_code = 6


class SweepIncomplete(BonsaiError):
    """A sweep stopped before every debate finished (budget reached, or debates failed); resumable."""

    exit_code = 4


def describe_validation(exc: object, *, name: Callable[[str], str] | None = None, top: str = "(top level)") -> list[str]:
    """One ``location: problem`` line per pydantic error, in words a YAML author can act on.

    ``name`` renames a location's first part (a field) as the user knows it: see :func:`as_flag` for a
    command's options; ``top`` names the whole input, for errors that are about no one field.
    """
    lines = []
    for e in exc.errors():  # type: ignore[attr-defined]
        parts = [str(p) for p in e["loc"]]
        if parts and name is not None:
            parts[0] = name(parts[0])
        loc = ".".join(parts) or top
        lines.append(f"{loc}: unknown key" if e["type"] == "extra_forbidden" else f"{loc}: {e['msg'].removeprefix('Value error, ')}")
    return lines


def as_flag(field: str) -> str:
    """A settings field as the command-line option that sets it: ``max_tokens`` -> ``--max-tokens``."""
    return "--" + field.replace("_", "-")
