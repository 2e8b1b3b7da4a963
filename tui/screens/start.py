"""The new-debate form: motion, personas per seat, format, rounds, best-of-N, length and seed.

It hands back a validated :class:`~bonsai.debate.runner.DebateSpec` (the same one `bonsai debate`
builds), or None when cancelled; bad values are shown next to the form, which stays open.
"""

from __future__ import annotations

from pydantic import ValidationError
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select

from bonsai.debate.formats import builtin_formats_dir
from bonsai.debate.runner import DebateSpec
from bonsai.errors import describe_validation
from bonsai.personas import PersonaBook, Role, Team
from tui.options import FormDefaults


def spec_errors(exc: ValidationError) -> str:
    return "; ".join(describe_validation(exc, top="input"))


class StartScreen(ModalScreen[DebateSpec | None]):
    CSS_PATH = "start.tcss"
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Start"),
    ]

    def __init__(self, book: PersonaBook, defaults: FormDefaults) -> None:
        super().__init__(id="start")
        self.book = book
        self.defaults = defaults

    def compose(self) -> ComposeResult:
        d = self.defaults
        chosen = list(d.personas or [])
        team_a = sorted(self.book.by_role(Role.DEBATER, Team.A), key=lambda p: p.name)
        team_b = sorted(self.book.by_role(Role.DEBATER, Team.B), key=lambda p: p.name)
        judges = sorted(self.book.by_role(Role.JUDGE), key=lambda p: p.name)
        seats_a = self._seats(team_a, chosen, "advocate")
        seats_b = self._seats(team_b, chosen, "skeptic")
        judge = (self._seats(judges, chosen, "judge") or [None])[0]
        formats = sorted(f.stem for f in builtin_formats_dir().glob("*.yaml"))
        if d.format not in formats:
            formats.append(d.format)
        with VerticalScroll(id="dialog"):
            yield Label("New debate", id="title")
            yield Label("Motion (team A argues for it, team B against)")
            yield Input(d.motion, placeholder="This house believes ...", id="motion")
            with Horizontal(classes="row"):
                fields = (
                    ("Format", Select([(f, f) for f in formats], value=d.format, allow_blank=False, id="format")),
                    ("Rounds", Input(str(d.rounds), type="integer", id="rounds")),
                    ("Best of", Input(str(d.candidates), type="integer", id="candidates")),
                    ("Max tokens", Input("" if d.max_tokens is None else str(d.max_tokens), placeholder="auto", type="integer", id="max-tokens")),
                    ("Seed", Input("" if d.seed is None else str(d.seed), placeholder="none", type="integer", id="seed")),
                )
                for label, widget in fields:
                    with Vertical(classes="field"):
                        yield Label(label)
                        yield widget
            with Horizontal(classes="row seats"):
                for team, pool, seats in (("a", team_a, seats_a), ("b", team_b, seats_b)):
                    with Vertical(classes="field"):
                        yield Label(f"Team {team.upper()} ({'for' if team == 'a' else 'against'})")
                        options = [(p.name, p.name) for p in pool]
                        yield Select(options, value=seats[0] if seats else Select.NULL, prompt="(default)", id=f"team-{team}")
                        yield Select(options, value=seats[1] if len(seats) > 1 else Select.NULL, prompt="(none)", id=f"team-{team}-2",
                                     tooltip="a second speaker: the team's speakers take turns")
                with Vertical(classes="field"):
                    yield Label("Judge")
                    yield Select([(p.name, p.name) for p in judges], value=judge if judge else Select.NULL, prompt="(default)", id="judge")
            with Horizontal(id="buttons"):
                yield Button("Start", variant="primary", id="start-button")
                yield Button("Cancel", id="cancel-button")

    @staticmethod
    def _seats(pool: list, chosen: list[str], preferred: str) -> list[str]:  # type: ignore[type-arg]
        """The named personas that fit this seat, else the one the CLI would seat by default."""
        names = [p.name for p in pool]
        picked = [n for n in chosen if n in names]
        if picked:
            return picked[:2]
        return [preferred] if preferred in names else names[:1]

    def on_mount(self) -> None:
        self.query_one("#motion", Input).focus()

    def _int(self, widget_id: str) -> int | None:
        raw = self.query_one(widget_id, Input).value.strip()
        return int(raw) if raw else None

    def build_spec(self) -> DebateSpec:
        names: list[str] = []
        for seat in ("#team-a", "#team-a-2", "#team-b", "#team-b-2", "#judge"):
            value = self.query_one(seat, Select).value
            if isinstance(value, str) and value not in names:
                names.append(value)
        rounds = self._int("#rounds")
        candidates = self._int("#candidates")
        return DebateSpec(
            motion=self.query_one("#motion", Input).value,
            personas=names or None,
            format=str(self.query_one("#format", Select).value),
            rounds=rounds if rounds is not None else 2,
            candidates=candidates if candidates is not None else 1,
            max_tokens=self._int("#max-tokens"),
            seed=self._int("#seed"),
        )

    def action_submit(self) -> None:
        try:
            spec = self.build_spec()
        except ValidationError as exc:
            self.notify(f"Invalid debate settings: {spec_errors(exc)}", title="New debate", severity="error", markup=False)
            return
        except ValueError:
            self.notify("Rounds, best of, max tokens and seed must be whole numbers.", title="New debate", severity="error", markup=False)
            return
        self.dismiss(spec)

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_submit()

    @on(Button.Pressed, "#start-button")
    def _start(self) -> None:
        self.action_submit()

    @on(Button.Pressed, "#cancel-button")
    def _cancel(self) -> None:
        self.action_cancel()
