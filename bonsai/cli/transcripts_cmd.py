"""``bonsai transcripts``: list, show and export the debates in the transcript store.

These commands only read: a missing store is an error, never a fresh empty database left behind.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from bonsai.cli.common import home_from
from bonsai.errors import BonsaiError
from bonsai.paths import store_path
from bonsai.store.records import CandidateRecord, DebateRecord, TurnRecord, VerdictRecord
from bonsai.store.transcripts import STATUSES, TranscriptStore
from bonsai.text import printable_all, terminal_json

MOTION_WIDTH = 60


def register(sub: argparse._SubParsersAction) -> None:
    store_opt = argparse.ArgumentParser(add_help=False)
    store_opt.add_argument("--store", type=Path, help="transcript database (default: transcripts.sqlite in the bonsai home)")

    parser = sub.add_parser("transcripts", help="list, show and export recorded debates", description=__doc__)
    actions = parser.add_subparsers(dest="transcripts_command", metavar="ACTION")
    actions.required = True

    ls = actions.add_parser("list", parents=[store_opt], help="the recorded debates, newest first")
    ls.add_argument("--persona", help="only debates with this persona in any seat")
    ls.add_argument("--status", choices=STATUSES, help="only debates with this status")
    ls.add_argument("--winner", choices=("A", "B", "tie"), help="only debates this team won (tie: only ties)")
    ls.add_argument("--sweep", help="only debates of this sweep")
    ls.add_argument("--limit", type=_positive_int, help="at most this many debates")
    ls.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    ls.set_defaults(func=run_list)

    show = actions.add_parser("show", parents=[store_opt], help="one debate with every turn, candidate and verdict")
    show.add_argument("debate_id", metavar="ID", help="the debate's id (a unique prefix is enough)")
    show.add_argument("--json", action="store_true", help="print the debate as one JSON object")
    show.add_argument("--scores", action="store_true", help="each debater turn's rubric score and checks (its persona's rubric, from the stored text)")
    show.add_argument("--personas-dir", type=Path, default=None, help="with --scores: folder of persona YAML files (default: the shipped personas)")
    show.set_defaults(func=run_show)

    export = actions.add_parser("export", parents=[store_opt], help="debater turns as a JSONL or Parquet dataset")
    export.add_argument("--format", dest="fmt", choices=("jsonl", "parquet"), help="file format (default: from the file's suffix)")
    export.add_argument("-o", "--output", type=Path, required=True, help="file to write (appears whole, or not at all)")
    export.add_argument("--force", action="store_true", help="replace OUTPUT if it exists (never the transcript store itself)")
    export.add_argument("--debate", dest="debates", action="append", metavar="ID", help="export only this debate (repeatable)")
    export.add_argument("--include-moderator", action="store_true", help="also export the moderator's lines")
    export.set_defaults(func=run_export)

    vac = actions.add_parser(
        "vacuum", parents=[store_opt], help="drop old finished debates' checkpoints and compact the databases",
        description="Drop the checkpoints of debates finished more than --older-than days ago, then VACUUM the transcript "
        "store and the checkpoint database. Unfinished debates stay resumable; transcripts are never deleted.",
    )
    vac.add_argument("--older-than", type=float, default=30.0, metavar="DAYS", help="drop all checkpoints of debates finished this long ago (default 30)")
    vac.add_argument("--checkpoints", type=Path, default=None, help="checkpoint database (default: checkpoints.sqlite in the bonsai home)")
    vac.set_defaults(func=run_vacuum)


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _open(args: argparse.Namespace) -> TranscriptStore:
    path = args.store.expanduser() if args.store else store_path(home_from(args))
    return TranscriptStore(path, read_only=True)


def _console() -> Console:
    # Bound to the current sys.stdout at call time (tests capture it); never wraps ids mid-way.
    return Console(file=sys.stdout, soft_wrap=False, highlight=False)


# -- list -------------------------------------------------------------------------------------------


def run_list(args: argparse.Namespace) -> int:
    with _open(args) as store:
        debates = store.list_debates(persona=args.persona, status=args.status, winner=args.winner, sweep=args.sweep, limit=args.limit)
        counts = store.turn_counts(d.debate_id for d in debates)
        path = store.path
    if args.json:
        for debate in debates:
            print(terminal_json({**debate.to_dict(), "turns": counts.get(debate.debate_id, 0)}))
        return 0
    if not debates:
        print(f"No debates{' match' if _any_filter(args) else ''} in {path}.", file=sys.stderr)
        return 0
    debates = printable_all(debates)  # motions and names are stored as typed: no escape sequences reach the terminal
    console = _console()
    seats = {d.debate_id: _seats_lines(d) for d in debates}
    # Every column but the motion keeps its full width; the motion gets what is left of the line.
    widths = {
        "id": max(len(d.debate_id) for d in debates),
        "created": 16,
        "seats": max(line.cell_len for s in seats.values() for line in s.split("\n")),
        "status": max(len(d.status) for d in debates),
        "winner": 6,
        "turns": 5,
    }
    motion_width = max(12, min(MOTION_WIDTH, console.width - sum(widths.values()) - 2 * len(widths)))
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold underline")
    for name in ("id", "created", "motion", "seats", "status", "winner", "turns"):
        if name == "motion":
            table.add_column(name, no_wrap=True, width=motion_width)
        else:
            table.add_column(name, no_wrap=True, min_width=widths[name], justify="right" if name == "turns" else "left")
    for debate in debates:
        table.add_row(
            debate.debate_id,
            _when(debate.created_at),
            # as many lines of motion as the row has lines of seats anyway
            _clip(console, debate.motion, motion_width, lines=len(seats[debate.debate_id].split("\n"))),
            seats[debate.debate_id],
            Text(debate.status, style=_STATUS_STYLE.get(debate.status, "")),
            debate.winner or "-",
            str(counts.get(debate.debate_id, 0)),
        )
    console.print(table)
    return 0


def _any_filter(args: argparse.Namespace) -> bool:
    return any(getattr(args, k) is not None for k in ("persona", "status", "winner", "sweep"))


_STATUS_STYLE = {"running": "yellow", "finished": "green", "failed": "red", "interrupted": "magenta"}


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _truncate(text: str, width: int) -> Text:
    """One line of at most ``width`` terminal cells (CJK characters take two)."""
    flat = Text(" ".join(text.split()))
    flat.truncate(width, overflow="ellipsis")
    return flat


def _clip(console: Console, text: str, width: int, *, lines: int) -> Text:
    """``text`` wrapped to ``width`` cells (CJK characters take two), cut to ``lines`` lines with an ellipsis."""
    wrapped = Text(" ".join(text.split())).wrap(console, width, overflow="fold")
    if len(wrapped) <= lines:
        return Text("\n").join(wrapped)
    kept = [line.copy() for line in wrapped[:lines]]
    last = kept[-1]
    if last.cell_len >= width:
        last.truncate(width - 1)
    last.rstrip()  # truncating a wide character may leave a pad space
    last.append("…")
    return Text("\n").join(kept)


def _seats_lines(debate: DebateRecord) -> Text:
    """One line per team ("A: advocate"); the judge and moderator are shown by `show`."""
    parts = [f"{seat}: {', '.join(names)}" for seat, names in debate.seats.items() if seat in ("A", "B")]
    return Text("\n".join(parts) or "-")


# -- show -------------------------------------------------------------------------------------------


def run_show(args: argparse.Namespace) -> int:
    with _open(args) as store:
        debate = store.get_debate(store.resolve_id(args.debate_id))
        turns = store.turns(debate.debate_id)
        candidates = store.candidates(debate.debate_id)
        verdicts = store.verdicts(debate.debate_id)
    by_turn: dict[int, list[CandidateRecord]] = {}
    for cand in candidates:
        by_turn.setdefault(cand.turn_index, []).append(cand)
    scores = _turn_scores(debate, turns, args.personas_dir) if args.scores else {}
    if args.json:
        doc = {
            "debate": debate.to_dict(),
            "turns": [
                {**t.to_dict(), "candidates": [c.to_dict() for c in by_turn.get(t.turn_index, [])], **({"scores": scores[t.turn_index]} if t.turn_index in scores else {})}
                for t in turns
            ],
            "verdicts": [v.to_dict() for v in verdicts],
        }
        print(terminal_json(doc, indent=2))
        return 0
    # stored text (motion, model output, names) may hold escape sequences: none reach the terminal
    debate, turns, verdicts = printable_all(debate), printable_all(turns), printable_all(verdicts)
    by_turn = printable_all(by_turn)
    console = _console()
    console.print(_header(debate))
    if not turns:
        console.print(Text("(no turns recorded)", style="dim"))
    for turn in turns:
        console.print(_turn_block(turn, by_turn.get(turn.turn_index, [])))
        if turn.turn_index in scores:
            console.print(_scores_line(scores[turn.turn_index]))
    for verdict in verdicts:
        console.print(_verdict_block(verdict))
    return 0


def _turn_scores(debate: DebateRecord, turns: list[TurnRecord], personas_dir: Path | None) -> dict[int, dict[str, Any]]:
    """Each debater turn's rubric score from its stored text: {"total", "checks"}, or {"error": why not}."""
    from bonsai.personas import PersonaBook
    from bonsai.rubric import RubricContext, last_opponent_answer, rubric_for

    book = PersonaBook.load(personas_dir)
    out: dict[int, dict[str, Any]] = {}
    for turn in turns:
        if turn.role != "debater":
            continue
        if turn.speaker not in book.names():
            out[turn.turn_index] = {"error": f"persona {turn.speaker!r} is not in {book.source}: no rubric to score with"}
            continue
        persona = book.get(turn.speaker)
        rubric = rubric_for(persona)
        if rubric is None:
            out[turn.turn_index] = {"error": f"persona {turn.speaker!r} declares no rubric"}
            continue
        ctx = RubricContext(debate.motion, persona.language, last_opponent_answer(turns, turn.turn_index, turn.team))
        score = rubric.score(turn.text, ctx)
        out[turn.turn_index] = {"total": score.total, "checks": score.checks}
    return out


def _scores_line(scores: dict[str, Any]) -> Text:
    line = Text("rubric ", style="dim")
    if "error" in scores:
        line.append(scores["error"], style="yellow")
        return line
    line.append(f"{scores['total']:.3f}", style="bold")
    for name, value in scores["checks"].items():
        line.append(f"   {name} ", style="dim")
        line.append(f"{value:.2f}", style="green" if value >= 0.999 else ("red" if value < 0.5 else ""))
    return line


def _header(debate: DebateRecord) -> Panel:
    lines = Text()
    lines.append(debate.motion, style="bold")
    lines.append(f"\nid {debate.debate_id}   format {debate.format} ({debate.rounds} rounds)   {_when(debate.created_at)}")
    lines.append("\nstatus ")
    lines.append(debate.status, style=_STATUS_STYLE.get(debate.status, ""))
    lines.append(f"   winner {debate.winner or '-'}")
    if debate.sweep:
        lines.append(f"   sweep {debate.sweep}")
    seats = "   ".join(f"{seat}: {', '.join(names)}" for seat, names in debate.seats.items())
    lines.append(f"\n{seats}")
    lines.append(f"\nbase {debate.base_model} on {debate.engine}   seed {debate.seed}   candidates {debate.candidates}", style="dim")
    return Panel(lines, title="debate", title_align="left")


_TEAM_STYLE = {"A": "cyan", "B": "magenta"}


def _turn_block(turn: TurnRecord, candidates: list[CandidateRecord]) -> Group:
    head = Text()
    head.append(f"[{turn.turn_index}] ", style="dim")
    head.append(turn.speaker, style=f"bold {_TEAM_STYLE.get(turn.team, '')}".strip())
    team = f"team {turn.team}" if turn.team in _TEAM_STYLE else turn.role
    head.append(f"  {team} · {turn.phase} · round {turn.round}", style="dim")
    head.append(f"  {turn.output_tokens} tok, {turn.latency_s:.1f}s, {turn.finish_reason}", style="dim")
    parts: list[Any] = [Text(""), head]
    if turn.reasoning:
        parts.append(Text(turn.reasoning.strip(), style="dim italic"))
    parts.append(Text(turn.answer.strip() or "(empty answer)"))
    if candidates:
        table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 1))
        table.add_column("", no_wrap=True)
        table.add_column("cand", justify="right", style="dim")
        table.add_column("score", justify="right")
        table.add_column("answer", overflow="ellipsis", no_wrap=True, max_width=72)
        for cand in candidates:
            table.add_row(
                Text("✓" if cand.chosen else " ", style="green"),
                str(cand.candidate_index),
                f"{cand.score:.3f}",
                _truncate(cand.answer, 72),
            )
        parts.append(table)
    return Group(*parts)


def _verdict_block(verdict: VerdictRecord) -> Panel:
    body: list[Any] = []
    line = Text()
    if verdict.winner == "tie":
        from bonsai.debate.judge import tie_reason

        line.append("tie", style="bold yellow")
        line.append(f" ({tie_reason(verdict.prob_a, verdict.tie_band)})", style="yellow")
    else:
        line.append(f"winner {verdict.winner}", style=f"bold {_TEAM_STYLE.get(verdict.winner, '')}".strip())
    line.append(f"   P(A wins) {verdict.prob_a:.3f}   " + ("no confidence (no logprobs)" if verdict.confidence is None else f"confidence {verdict.confidence:.3f}"))
    if not verdict.parsed:
        line.append("   (judge's JSON did not parse: winner from label probabilities)", style="yellow")
    body.append(line)
    criteria = list(dict.fromkeys(c for team in verdict.scores.values() for c in team))
    if criteria:
        table = Table(show_edge=False, pad_edge=False)
        table.add_column("team")
        for criterion in criteria:
            table.add_column(criterion, justify="right")
        for team, scores in verdict.scores.items():
            table.add_row(team, *(_score(scores.get(c)) for c in criteria))
        body.append(table)
    if verdict.rationale:
        body.append(Text(verdict.rationale.strip(), style="dim"))
    return Panel(Group(*body), title=f"verdict: {verdict.judge}", title_align="left")


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


# -- export -----------------------------------------------------------------------------------------


def run_export(args: argparse.Namespace) -> int:
    from bonsai.store.export import check_target, export_turns

    with _open(args) as store:
        check_target(args.output, store.path, force=args.force)  # the store itself is refused first, whatever its suffix
        fmt = args.fmt or _format_from_suffix(args.output)
        count = export_turns(store, args.output, fmt, args.debates, include_moderator=args.include_moderator, force=args.force)
    print(f"wrote {count} turns to {args.output}", file=sys.stderr)
    return 0


def run_vacuum(args: argparse.Namespace) -> int:
    from bonsai.debate.checkpoints import vacuum
    from bonsai.paths import checkpoints_path

    if not args.older_than >= 0:
        raise BonsaiError(f"--older-than must be 0 days or more, not {args.older_than}", hint="for example --older-than 30")
    home = home_from(args)
    store = args.store.expanduser() if args.store else store_path(home)
    checkpoints = args.checkpoints.expanduser() if args.checkpoints else checkpoints_path(home)
    report = vacuum(store, checkpoints, older_than_days=args.older_than)
    print(f"checkpoints: dropped those of {report.debates_dropped} debates finished more than {args.older_than:g} days ago "
          f"({report.rows_deleted} rows); unfinished debates keep theirs")
    print(f"vacuum: {report.bytes_before:,} -> {report.bytes_after:,} bytes ({report.bytes_saved:,} bytes saved)")
    return 0


def _format_from_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise BonsaiError(f"Cannot tell the export format from the file name {path.name!r}.", hint="pass --format jsonl or --format parquet")
