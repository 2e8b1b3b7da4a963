"""The status line: which debate, phase and turn, whether it runs or waits, and live tokens/s."""

from __future__ import annotations

from typing import Any

from textual.widgets import Static

from bonsai.text import printable_all

STATE_LABEL = {
    "idle": "○ idle",
    "starting": "… starting",
    "running": "● live",
    "pausing": "… pausing after this turn",
    "paused": "❚❚ paused",
    "finished": "✓ finished",
    "failed": "✗ failed",
    "stopped": "■ stopped (saved)",
    "interrupted": "■ interrupted (saved)",
    "replay": "↻ replay",
}


class StatusLine(Static):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("", markup=False, **kwargs)
        self.debate_id: str | None = None
        self.state = "idle"
        self.phase = ""
        self.turn: int | None = None
        self.total: int | None = None
        self.rate: float | None = None
        self.engine = ""
        self.waiting_for = ""
        self._redraw()

    def set(self, **fields: Any) -> None:
        for key, value in printable_all(fields).items():
            setattr(self, key, value)
        self._redraw()

    def _redraw(self) -> None:
        parts = []
        if self.debate_id:
            parts.append(f"debate {self.debate_id}")
        if self.phase:
            parts.append(self.phase)
        if self.turn is not None:
            parts.append(f"turn {self.turn + 1}/{self.total}" if self.total else f"turn {self.turn + 1}")
        label = STATE_LABEL.get(self.state, self.state)
        if self.state == "paused" and self.waiting_for:
            label += f" before {self.waiting_for}"
        parts.append(label)
        if self.engine:
            parts.append(self.engine)
        if self.rate is not None:
            parts.append(f"{self.rate:.1f} tok/s")
        self.update(" · ".join(parts))
