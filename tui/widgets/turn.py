"""One spoken turn in a team's column: who speaks (persona, adapter, phase), the reasoning collapsed
and dimmed, and the answer streamed in as Markdown."""

from __future__ import annotations

import dataclasses

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Collapsible, Markdown, Static
from textual.widgets._markdown import MarkdownStream

from bonsai.text import printable
from tui.messages import TurnDone, TurnStarted


class TurnView(Vertical):
    """A turn; marked with a leading ▶ while it streams and ✓ when done, so no colour is needed."""

    def __init__(self, started: TurnStarted, version: str | None = None) -> None:
        super().__init__(id=f"turn-{started.turn}", classes=f"turn team-{started.team.lower()}")
        # names, phase and adapter reach the header as text: no escape sequences onto the terminal
        self.started = dataclasses.replace(started, speaker=printable(started.speaker), phase=printable(started.phase),
                                           adapter=printable(started.adapter) if started.adapter else started.adapter)
        self.version = printable(version) if version else version
        self.done: TurnDone | None = None
        self._reasoning = ""
        self._answer = ""
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Static(self.header(), classes="turn-header", markup=False)
        with Collapsible(title="reasoning", collapsed=True, collapsed_symbol="+", expanded_symbol="-", classes="reasoning"):
            yield Static("", classes="reasoning-text", markup=False)
        yield Markdown("", classes="answer")

    def header(self) -> str:
        s = self.started
        mark = "✓" if self.done else "▶"
        adapter = self.version or s.adapter or "base model"
        parts = [f"{mark} {s.phase}", s.speaker, adapter]
        if s.candidates > 1:
            if self.done is not None and self.done.candidates:
                parts.append(f"best of {s.candidates}, kept #{self.done.chosen}")
            else:
                parts.append(f"best of {s.candidates}")
        if self.done is not None and self.done.output_tokens:
            parts.append(f"{self.done.output_tokens} tok")
        return " · ".join(parts)

    def on_mount(self) -> None:
        self.query_one(Collapsible).display = False

    @property
    def answer_text(self) -> str:
        return self.done.answer if self.done is not None else self._answer

    async def add(self, kind: str, text: str) -> None:
        text = printable(text)  # model output, a token at a time: a sequence split over tokens loses its ESC here
        if kind == "reasoning":
            self._reasoning += text
            self._show_reasoning(self._reasoning)
            return
        self._answer += text
        if self._stream is None:
            self._stream = Markdown.get_stream(self.query_one(".answer", Markdown))
        await self._stream.write(text)

    def _show_reasoning(self, text: str) -> None:
        box = self.query_one(Collapsible)
        box.display = True
        box.title = f"reasoning ({len(text.split())} words)"
        self.query_one(".reasoning-text", Static).update(text.strip())

    async def finish(self, done: TurnDone) -> None:
        """The turn's final text (the kept candidate's, with best-of-N) replaces what was streamed."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.done = done = dataclasses.replace(done, answer=printable(done.answer),
                                               reasoning=printable(done.reasoning) if done.reasoning else done.reasoning)
        self.query_one(".turn-header", Static).update(self.header())
        if done.reasoning:
            self._show_reasoning(done.reasoning)
        await self.query_one(".answer", Markdown).update(done.answer)
        self.add_class("done")
