"""What holds a TUI debate between turns: a pause, a note being typed or waiting, a single step."""

from __future__ import annotations


class Control:
    """The debate's gate: hold before the next turn while the user pauses, types a note, has a note to
    deliver (it travels with the resume that ends the hold), or has stepped."""

    def __init__(self) -> None:
        self.holds: set[str] = set()
        self.until: int | None = None
        self.note: str | None = None

    def gate(self, step: int) -> bool:
        return bool(self.holds) or self.note is not None or (self.until is not None and step >= self.until)

    def take_note(self) -> str | None:
        note, self.note = self.note, None
        return note

    def reset(self) -> None:
        self.holds.clear()
        self.until = None
        self.note = None
