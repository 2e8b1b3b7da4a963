"""The help screen: every key, by screen, and what steering does to a debate."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# bonsai: keys

**Anywhere**: `n` new debate · `t` transcripts · `w` sweep monitor · `?` this help ·
`ctrl+p` command palette · `q` quit (a running debate is saved and resumes later)

**Live debate**
- `space` pause after the current turn / go on
- `s` step: run exactly one more turn, then wait
- `m` moderator note: the debate waits before its next turn; both teams read the note
- `f` fork: a new debate that keeps the turns before the one you pick and redoes the rest

**Transcripts**: `enter` replay · `r` resume an unfinished debate · `f` fork · `g` reload ·
filters for persona, sweep, winner and status · `esc` back

**Sweep monitor**: pick a sweep for its progress and per-persona win rates (refreshes by itself) · `esc` back

The team-A column argues for the motion, team B against. A turn marked ▶ is speaking, ✓ is done;
its reasoning is folded under *reasoning*. Paused and interrupted debates are kept in the
checkpoint database: `bonsai debate --resume ID` finishes them too.
"""


class HelpScreen(ModalScreen[None]):
    CSS_PATH = "help.tcss"
    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-dialog"):
            yield Markdown(HELP)

    def action_close(self) -> None:
        self.dismiss(None)
