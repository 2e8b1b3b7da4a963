"""``bonsai debate "MOTION"``: run (or ``--resume``) one debate, streamed with a colour per team."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from bonsai.cli.common import home_from, progress
from bonsai.debate import events as ev
from bonsai.debate.runner import DebateRunner, DebateSpec, adapter_refs, latest_unfinished, plan_debate
from bonsai.engine import Engine, EngineConfig, create_engine
from bonsai.engine.adapters import AdapterInspector, lora_rank_for, validate_adapter
from bonsai.errors import BonsaiError, ConfigError
from bonsai.model.prepare import BaseModel, resolve_base
from bonsai.paths import checkpoints_path, store_path
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore

TEAM_STYLE = {"A": "bold cyan", "B": "bold magenta", "none": "yellow"}


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """Engine flags shared by every command that runs debates."""
    p.add_argument("--engine", choices=["vllm", "openai", "hf"], default="vllm", help="in-process vLLM (default), a `bonsai serve` endpoint, or transformers+PEFT")
    p.add_argument("--endpoint", action="append", default=[], metavar="URL", help="OpenAI-compatible server (with --engine openai); repeatable")
    p.add_argument("--base", help="base model folder or cached hub id (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--max-model-len", type=int, default=4096, help="context window the engine serves (default 4096)")
    p.add_argument("--max-lora-rank", type=int, default=None, help="largest adapter rank the engine accepts (default: from the adapters in play, at least 16)")
    p.add_argument("--personas-dir", type=Path, default=None, help="folder of persona YAML files (default: the shipped personas)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("debate", help="run a debate (or resume one)", description="Run a live debate between team A and team B, judged and stored.")
    p.add_argument("motion", nargs="?", help="the motion: team A argues for it, team B against")
    p.add_argument("--resume", metavar="ID", nargs="?", const="latest", help="continue an interrupted debate (default: the latest unfinished one)")
    p.add_argument("--personas", help="comma-separated persona names to seat (debaters by their team, judges, a moderator)")
    p.add_argument("--format", default="standard", help="debate format: a built-in name (standard, quick) or a YAML file")
    p.add_argument("--rounds", type=int, default=2, help="rebuttal rounds (default 2)")
    p.add_argument("--candidates", type=int, default=1, help="best-of-N: sample N candidates per turn, keep the judge's favourite")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--max-tokens", type=int, default=None, help="cap on every debater turn's length in tokens")
    p.add_argument("--store", type=Path, default=None, help="transcript store (default: $BONSAI_HOME/transcripts.sqlite)")
    p.add_argument("--json", action="store_true", help="print one JSON summary at the end instead of the live stream")
    p.add_argument("--jsonl", action="store_true", help="print every event (tokens included) as a JSON line")
    p.add_argument("--no-color", action="store_true", help="plain text output")
    add_engine_options(p)
    p.set_defaults(func=run)


def build_engine_config(args: argparse.Namespace, base: BaseModel | None, refs: list[Any]) -> EngineConfig:
    rank = args.max_lora_rank or max(16, lora_rank_for([r for r in refs if r is not None]) if any(refs) else 16)
    return EngineConfig(
        kind=args.engine,
        base_model=base.path if base else None,
        base_hash=base.content_hash if base else None,
        endpoints=args.endpoint,
        max_model_len=args.max_model_len,
        max_loras=max(1, len({r.name for r in refs if r is not None})),
        max_lora_rank=rank,
    )


def _spec_from_args(args: argparse.Namespace) -> DebateSpec:
    if args.motion is None:
        raise ConfigError("no motion given", 'pass one: bonsai debate "This house believes ..." (or --resume ID)')
    personas = [n.strip() for n in args.personas.split(",") if n.strip()] if args.personas else None
    try:
        return DebateSpec(
            motion=args.motion, personas=personas, format=args.format, rounds=args.rounds,
            candidates=args.candidates, seed=args.seed, max_tokens=args.max_tokens,
        )
    except ValidationError as exc:
        msg = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise ConfigError(f"invalid debate settings: {msg}", "see `bonsai debate --help`") from None


def _preflight(
    args: argparse.Namespace, book: PersonaBook, home: Path, inspector: AdapterInspector
) -> tuple[DebateSpec | None, BaseModel | None, list[Any]]:
    """Everything that can be checked without the engine, so bad input fails in a second, not after start-up."""
    if args.engine == "openai" and not args.endpoint:
        raise ConfigError("--engine openai needs --endpoint URL", "start a server with `bonsai serve` and pass its URL")
    if args.endpoint and args.engine != "openai":
        args.engine = "openai"
    spec = _stored_spec(args, home) if args.resume else _spec_from_args(args)
    base = None if args.engine == "openai" else resolve_base(args.base, home)
    refs: list[Any] = []
    if spec is not None:
        prepared = plan_debate(spec, book, home)
        refs = list(adapter_refs(prepared, inspector).values())
        if base is not None:
            for ref in refs:
                if ref is not None:
                    validate_adapter(ref, base_dir=base.path, base_hash=base.content_hash, max_rank=args.max_lora_rank)
    return spec, base, refs


def _stored_spec(args: argparse.Namespace, home: Path) -> DebateSpec | None:
    """The settings a debate started with, so a resumed debate sizes the engine for its own adapters."""
    store_file = args.store or store_path(home)
    if not store_file.exists():
        raise ConfigError(f"there is no transcript store at {store_file}, so nothing to resume", "run a debate first, or pass --store")
    with TranscriptStore(store_file, create=False) as store:
        debate_id = args.resume
        if debate_id == "latest":
            unfinished = [d for d in store.list_debates(newest_first=True) if d.status != "finished"]
            if not unfinished:
                return None  # the runner says so with the right message
            debate_id = unfinished[0].debate_id
        data = store.get_debate(debate_id).config.get("spec")
    return DebateSpec.model_validate(data) if data else None


class Printer:
    """Renders the debate's event stream for a person at a terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, event: ev.DebateEvent) -> None:
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
                c.rule(Text(f"Judging ({', '.join(event.judges)}, labels both ways)", style="bold"))
            case ev.Verdict(panel=v):
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
    spec, base, refs = _preflight(args, book, home, inspector)
    quiet = args.json or args.jsonl
    console = Console(no_color=args.no_color, highlight=False, soft_wrap=True)
    store_file = args.store or store_path(home)
    engine: Engine = create_engine(build_engine_config(args, base, refs))
    with progress(f"starting the {args.engine} engine", enabled=not quiet):
        await engine.start()
    summary: dict[str, Any] = {}
    debate_id: str | None = None
    try:
        with TranscriptStore(store_file) as store:
            async with DebateRunner(engine, store, checkpoints_path(home), book, home, base.name if base else engine.info.base_model,
                                    inspector) as runner:
                if args.resume:
                    debate_id = await latest_unfinished(store) if args.resume == "latest" else args.resume
                    store.get_debate(debate_id)
                    events = runner.resume(debate_id)
                else:
                    assert spec is not None
                    events = runner.run(spec)
                printer = Printer(console)
                async for event in events:
                    debate_id = event.debate_id
                    if args.jsonl:
                        print(json.dumps(event.to_json(), ensure_ascii=False), flush=True)
                    elif not args.json:
                        printer(event)
                    if isinstance(event, ev.Verdict):
                        verdict = event.panel.to_dict()
                        summary["verdict"] = {k: verdict[k] for k in ("winner", "prob_a", "confidence", "scores", "rationale", "parsed")}
                    elif isinstance(event, ev.DebateEnd):
                        summary.update(debate_id=debate_id, status=event.status, winner=event.winner)
                assert debate_id is not None
                turns = store.turns(debate_id)
    except (KeyboardInterrupt, asyncio.CancelledError):
        if debate_id:
            print(f"\ninterrupted: debate {debate_id} is saved; continue it with `bonsai debate --resume {debate_id}`", file=sys.stderr)
        raise KeyboardInterrupt from None
    finally:
        await engine.close()
    summary.update(store=str(store_file), turns=len(turns), tokens=sum(t.output_tokens for t in turns))
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
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
