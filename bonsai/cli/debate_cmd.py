"""``bonsai debate "MOTION"``: run (or ``--resume``) one debate, streamed with a colour per team."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from bonsai.cli.common import add_engine_arguments, engine_options, home_from, json_text, judge_options, starting
from bonsai.debate import events as ev
from bonsai.debate.runner import DebateRunner, PreparedDebate, adapter_refs, latest_unfinished, plan_debate
from bonsai.debate.spec import USER_SETTINGS, DebateSpec
from bonsai.registry.identity import AdapterInspector
from bonsai.engine.session import add_option_arguments, open_engine, options_from_args
from bonsai.errors import BonsaiError, ConfigError
from bonsai.locks import Lock, debate_lock, sweep_lock
from bonsai.paths import checkpoints_path, store_path
from bonsai.personas import PersonaBook
from bonsai.store.records import DebateStatus
from bonsai.store.transcripts import TranscriptStore
from bonsai.text import printable_all

TEAM_STYLE = {"A": "bold cyan", "B": "bold magenta", "none": "yellow"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("debate", help="run a debate (or resume one)", description="Run a live debate between team A and team B, judged and stored.")
    p.add_argument("motion", nargs="?", help="the motion: team A argues for it, team B against")
    p.add_argument("--resume", metavar="ID", nargs="?", const="latest", help="continue an interrupted debate (default: the latest unfinished one)")
    add_option_arguments(p, DebateSpec, only=USER_SETTINGS)
    p.add_argument("--store", type=Path, default=None, help="transcript store (default: $BONSAI_HOME/transcripts.sqlite)")
    p.add_argument("--json", action="store_true", help="print one JSON summary at the end instead of the live stream")
    p.add_argument("--jsonl", action="store_true", help="print every event (tokens included) as a JSON line")
    p.add_argument("--no-color", action="store_true", help="plain text output")
    add_engine_arguments(p)
    p.set_defaults(func=run)


def _spec_from_args(args: argparse.Namespace) -> DebateSpec:
    if args.motion is None:
        raise ConfigError("no motion given", 'pass one: bonsai debate "This house believes ..." (or --resume ID)')
    return options_from_args(DebateSpec, args, what="debate settings", hint="see `bonsai debate --help`", motion=args.motion)


def _preflight(args: argparse.Namespace, book: PersonaBook, home: Path, inspector: AdapterInspector) -> tuple[PreparedDebate | None, list[Any]]:
    """Everything that can be checked without the engine, so bad input fails in a second, not after start-up."""
    engine_options(args).resolved_kind()  # --engine openai without --endpoint: say so before anything else
    spec = _stored_spec(args, home) if args.resume else _spec_from_args(args)
    if spec is None:
        return None, []
    prepared = plan_debate(spec, book, home)
    return prepared, list(adapter_refs(prepared, inspector).values())


def _stored_spec(args: argparse.Namespace, home: Path) -> DebateSpec | None:
    """The settings a debate started with, so a resumed debate sizes the engine for its own adapters."""
    store_file = args.store or store_path(home)
    if not store_file.exists():
        raise ConfigError(f"there is no transcript store at {store_file}, so nothing to resume", "run a debate first, or pass --store")
    with TranscriptStore(store_file, read_only=True) as store:
        debate_id = args.resume
        if debate_id == "latest":
            unfinished = [d for d in store.list_debates(newest_first=True) if d.status != DebateStatus.FINISHED]
            if not unfinished:
                return None  # the runner says so with the right message
            debate_id = unfinished[0].debate_id
        data = store.get_debate(debate_id).config.get("spec")
    return DebateSpec.model_validate(data) if data else None


def _resume_locks(args: argparse.Namespace, home: Path, store_file: Path) -> list[Lock]:
    """The locks a resume takes: the debate's, and its sweep's if it belongs to one (a sweep --resume would
    run it too). ``args.resume`` is pinned to the id so the run resumes the debate that was locked."""
    if args.resume == "latest":
        with TranscriptStore(store_file, read_only=True) as store:
            unfinished = [d for d in store.list_debates(newest_first=True) if d.status != "finished"]
        if not unfinished:
            return []
        args.resume = unfinished[0].debate_id
    with TranscriptStore(store_file, read_only=True) as store:
        record = store.get_debate(store.resolve_id(args.resume))
    args.resume = record.debate_id
    locks = [debate_lock(home, record.debate_id)]
    if record.sweep:
        locks.insert(0, sweep_lock(home, record.sweep))
    return locks


class Printer:
    """Renders the debate's event stream for a person at a terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, event: ev.DebateEvent) -> None:
        event = printable_all(event)  # motions, names and model output may hold terminal escape sequences
        c = self.console
        match event:
            case ev.DebateStart(seats=seats):
                c.rule(Text(f"Motion: {event.motion}", style="bold"))
                c.print(Text(f"team A: {', '.join(seats['A'])}", style=TEAM_STYLE["A"]), Text("  vs  "), Text(f"team B: {', '.join(seats['B'])}", style=TEAM_STYLE["B"]))
                c.print(Text(f"judge: {', '.join(seats['judge'])}  format: {event.format}, {event.rounds} rounds  debate {event.debate_id}", style="dim"))
                if event.resumed:
                    c.print(Text(f"resuming after {event.turns_done or 0} turns", style="yellow"))
            case ev.TurnStart():
                style = TEAM_STYLE.get(event.team, "")
                who = "Moderator" if event.role == "moderator" else f"{event.speaker} (team {event.team})"
                extra = f" · best of {event.candidates}" if event.candidates > 1 else ""
                adapter = f" · {event.adapter}" if event.adapter else ""
                c.print()
                c.print(Text(f"[{event.phase}] {who}{adapter}{extra}", style=style))
            case ev.Token():
                if event.candidate != 0:
                    return
                style = "dim italic" if event.kind == "reasoning" else TEAM_STYLE.get(event.team, "").replace("bold ", "")
                c.print(Text(event.text, style=style), end="")
            case ev.TurnEnd():
                c.print()
                if len(event.candidates) > 1:
                    scores = ", ".join(f"#{x['index']}: {x['score']:.2f}" for x in event.candidates)
                    c.print(Text(f"  candidates (P side wins): {scores}; kept #{event.chosen}", style="dim"))
                    if event.chosen != 0:
                        c.print(Text(event.answer, style=TEAM_STYLE.get(event.team, "").replace("bold ", "")))
            case ev.Judging():
                c.print()
                c.rule(Text(f"Judging ({', '.join(event.judges)}, both reading orders, labels both ways)", style="bold"))
            case ev.Verdict(panel=v):
                if v.winner == "tie":
                    from bonsai.debate.judge import tie_reason

                    c.print(Text("Tie: no side won", style="bold yellow"), Text(f"  P(A wins) = {v.prob_a:.2f}"))
                    c.print(Text(f"  {tie_reason(v.prob_a, v.tie_band)}", style="yellow"))
                else:
                    confidence = "no confidence (the judge's server returns no logprobs)" if v.confidence is None else f"confidence {v.confidence:.2f}"
                    c.print(Text(f"Winner: team {v.winner}", style=TEAM_STYLE.get(v.winner, "")), Text(f"  P(A wins) = {v.prob_a:.2f}, {confidence}"))
                for team in ("A", "B"):
                    scores = v.scores.get(team)
                    if scores:
                        c.print(Text(f"  team {team}: " + ", ".join(f"{k} {x:.1f}" for k, x in scores.items()), style=TEAM_STYLE[team]))
                if v.rationale:
                    c.print(Text(f"  {v.rationale}", style="dim"))
                if not v.parsed:
                    c.print(Text("  (the judge's JSON did not parse; the winner comes from its token probabilities)", style="dim"))
            case _:
                pass


async def _run_async(args: argparse.Namespace) -> int:
    home = home_from(args)
    book = PersonaBook.load(args.personas_dir)
    inspector = AdapterInspector()
    prepared, refs = _preflight(args, book, home, inspector)
    quiet = args.json or args.jsonl
    console = Console(no_color=args.no_color, highlight=False, soft_wrap=True)
    store_file = args.store or store_path(home)
    summary: dict[str, Any] = {}
    debate_id: str | None = None
    locks = contextlib.ExitStack()
    try:
        if args.resume:
            # before the engine starts: a debate another process is resuming (or its sweep is running) is refused
            for lock in _resume_locks(args, home, store_file):
                locks.enter_context(lock)
        async with open_engine(engine_options(args), home, refs, judge=judge_options(args), starting=starting(enabled=not quiet)) as session:
            with TranscriptStore(store_file) as store:
                async with DebateRunner(session.engine, store, checkpoints_path(home), book, home, session.base_name, inspector,
                                        judge_engine=session.judge) as runner:
                    if args.resume:
                        debate_id = await latest_unfinished(store) if args.resume == "latest" else args.resume
                        store.get_debate(debate_id)
                        events = runner.resume(debate_id)
                    else:
                        assert prepared is not None
                        events = runner.run(prepared.spec, prepared=prepared)
                    printer = Printer(console)
                    async for event in events:
                        debate_id = event.debate_id
                        if args.jsonl:
                            print(json_text(event.to_json()), flush=True)
                        elif not args.json:
                            printer(event)
                        if isinstance(event, ev.Verdict):
                            verdict = event.panel.to_dict()
                            summary["verdict"] = {k: verdict[k] for k in ("winner", "prob_a", "confidence", "scores", "rationale", "parsed")}
                        elif isinstance(event, ev.DebateEnd):
                            summary.update(debate_id=debate_id, status=event.status, winner=event.winner)
                    assert debate_id is not None
                    turns = store.turns(debate_id)
                    tokens = store.debate_tokens(debate_id)
    except (KeyboardInterrupt, asyncio.CancelledError):
        if debate_id:
            print(f"\ninterrupted: debate {debate_id} is saved; continue it with `bonsai debate --resume {debate_id}`", file=sys.stderr)
        raise KeyboardInterrupt from None
    finally:
        locks.close()
    summary.update(store=str(store_file), turns=len(turns), tokens=tokens)
    if args.json:
        print(json_text(summary))
    elif not args.jsonl:
        console.print(Text(f"\ndebate {debate_id} stored in {store_file}", style="dim"))
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run_async(args))
    except BonsaiError:
        raise
    except KeyboardInterrupt:
        return 130
