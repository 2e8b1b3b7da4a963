"""What a screen asks of the app that shows it: a protocol, so a screen never imports the app (no import circle)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tui.runner import LiveRunner


class BonsaiHost(Protocol):
    """The part of :class:`tui.app.BonsaiApp` the screens use."""

    #: None while no transcript store is open
    runner: LiveRunner | None

    def open_debate(self, debate_id: str) -> None: ...

    def resume_debate(self, debate_id: str) -> None: ...

    def choose_fork(self, debate_id: str) -> None: ...
