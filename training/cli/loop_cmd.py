"""``bonsai loop --personas A,B --generations N``: debate, build data, train, evaluate, promote; repeat."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bonsai.cli.common import add_engine_arguments, engine_options, home_from, json_text, judge_options, starting
from bonsai.errors import BonsaiError, ConfigError, describe_validation


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "loop",
        help="the closed loop: debates -> data -> train -> evaluate -> promote, for N generations",
        description=(
            "Each generation: debates with best-of-N candidates, a preference dataset per persona, a new adapter "
            "version per persona, the promotion gate on held-out motions, and promotion of what passes. Prints each "
            "generation's win rate against the previous version. Resumable: state in $BONSAI_HOME/loops/ID.json."
        ),
    )
    p.add_argument("--preset", default=None, help="start from a preset: a built-in name (cpu) or a YAML file of loop settings; flags given here override it")
    p.add_argument("--personas", help="comma-separated debaters to train (each with adapter: registry)")
    p.add_argument("--generations", type=int, default=None, help="generations to run (default 1)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="ID", help="continue an interrupted loop (default: the latest)")
    p.add_argument("--debates", type=int, default=None, help="debates per generation (default 2)")
    p.add_argument("--candidates", type=int, default=None, help="best-of-N candidates per turn (default 2; 1 for none)")
    p.add_argument("--motions", type=Path, default=None, help="motions to debate for data, one per line (default: built-in list)")
    p.add_argument("--eval-motions", type=Path, default=None, help="held-out motions for the gate, one per line (default: built-in list)")
    p.add_argument("--eval-max-motions", type=int, default=None, help="held-out motions the gate uses per generation (default 2)")
    p.add_argument("--strategy", default=None, help="pair strategies (default best-of-n,stance)")
    p.add_argument("--test-fraction", type=float, default=None, help="share of each dataset's pairs held out by motion, for held-out preference accuracy (default 0)")
    p.add_argument("--criteria", default=None, help="what promotion needs, comma-separated: win_rate (default), win_rate_not_worse, rubric, preference")
    p.add_argument("--eval-samples", type=int, default=None, help="speeches per held-out motion for the rubric, when --criteria measures it (default 4)")
    p.add_argument("--recipe", default=None, help="training recipe (default orpo)")
    p.add_argument("--max-steps", type=int, default=None, help="cap each training stage at N steps")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="TRL trainer override for every stage; repeatable")
    p.add_argument("--promote", choices=["gate", "always"], default=None, help="promote only candidates that pass the gate (default), or always")
    p.add_argument("--threshold", type=float, default=None, help="gate threshold on the win rate's 95%% lower bound (default 0.5)")
    p.add_argument("--format", default=None, help="debate format (default quick)")
    p.add_argument("--rounds", type=int, default=None, help="rebuttal rounds (default 1)")
    p.add_argument("--max-tokens", type=int, default=None, help="cap on every debater turn (default 48)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print events as JSON lines")
    add_engine_arguments(p)
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> Any:
    """The preset (if any), then every flag given on the command line, validated once as a LoopConfig."""
    from training.config import parse_set_options
    from training.gate import read_motions_file
    from training.loop import LoopConfig, load_preset
    from training.pairs import parse_strategy_list

    raw: dict[str, Any] = load_preset(args.preset) if args.preset else {}
    gate: dict[str, Any] = dict(raw.pop("gate", None) or {})
    evaluation: dict[str, Any] = dict(raw.pop("evaluation", None) or {})
    if args.personas:
        raw["personas"] = [n.strip() for n in args.personas.split(",") if n.strip()]
    if not raw.get("personas"):
        raise ConfigError("no personas given", "pass --personas advocate,skeptic (or --preset NAME, or --resume ID)")
    plain = {"generations": args.generations, "debates": args.debates, "candidates": args.candidates, "format": args.format,
             "rounds": args.rounds, "max_tokens": args.max_tokens, "recipe": args.recipe, "promote": args.promote, "seed": args.seed,
             "test_fraction": args.test_fraction}
    raw.update({k: v for k, v in plain.items() if v is not None})
    overrides = {**dict(raw.get("train_overrides") or {}), **parse_set_options(args.sets)}
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    raw["train_overrides"] = overrides
    if args.motions:
        raw["motions"] = read_motions_file(args.motions)
    if args.eval_motions:
        raw["eval_motions"] = read_motions_file(args.eval_motions)
    if args.strategy:
        raw["strategies"] = [{"name": n, "params": {"min_gap": 0.02} if n == "best-of-n" else {}} for n in parse_strategy_list(args.strategy)]
    endpoints = engine_options(args).endpoints
    if endpoints:
        raw["endpoints"] = list(endpoints)
    # the gate debates what the loop debates unless the preset says otherwise
    for key in ("format", "rounds", "max_tokens"):
        if key in raw and (key not in gate or getattr(args, key) is not None):
            gate[key] = raw[key]
    if args.threshold is not None:
        gate["threshold"] = args.threshold
    gate.setdefault("max_motions", 2)
    if args.eval_max_motions is not None:
        gate["max_motions"] = args.eval_max_motions
    if args.criteria:
        gate["criteria"] = [c.strip() for c in args.criteria.split(",") if c.strip()]
    if args.eval_samples is not None:
        evaluation["samples"] = args.eval_samples
    raw["gate"] = gate
    if evaluation:
        raw["evaluation"] = evaluation
    try:
        return LoopConfig.model_validate(raw)
    except ValidationError as exc:
        msg = "; ".join(describe_validation(exc))
        raise ConfigError(f"invalid loop settings: {msg}", "see `bonsai loop --help`" + (f" and the preset {args.preset}" if args.preset else "")) from None


def _print(ev: dict[str, Any]) -> None:
    kind = ev["event"]
    gen = ev.get("generation")
    if kind == "loop_start":
        what = "resuming" if ev["resumed"] else "starting"
        print(f"{what} loop {ev['loop']}: {', '.join(ev['personas'])}, {ev['generations']} generation(s)", flush=True)
    elif kind == "step_start":
        print(f"[gen {gen}] {ev['step']}...", flush=True)
    elif kind == "debate":
        outcome = "a tie" if ev["winner"] == "tie" else f"team {ev['winner']} won"
        print(f"[gen {gen}]   debate {ev['debate_id']}: {outcome}", flush=True)
    elif kind == "dataset":
        if ev.get("skipped"):
            print(f"[gen {gen}]   {ev['persona']}: no dataset ({ev['skipped']})", flush=True)
        else:
            print(f"[gen {gen}]   {ev['persona']}: {ev['pairs']} pairs in {ev['path']}", flush=True)
    elif kind == "trained":
        first, last = (f"{x:.3f}" if isinstance(x, (int, float)) else "?" for x in (ev.get("loss") or [None, None]))
        print(f"[gen {gen}]   {ev['persona']}@{ev['version']} trained in {ev['seconds']:.0f}s, loss {first} -> {last}", flush=True)
    elif kind == "evaluated":
        lo, hi = ev["ci"]
        if ev.get("n"):
            prev = "" if ev.get("vs_previous") is None else f"; vs previous ({ev['against'] or 'base'}) {ev['vs_previous']:.2f}"
            print(f"[gen {gen}]   {ev['persona']}@{ev['version']}: won {ev['wins']:g}/{ev['n']} ({ev['win_rate']:.2f}, 95% CI {lo:.2f}-{hi:.2f}){prev}", flush=True)
        for name, row in (ev.get("metrics") or {}).items():
            c, r, d = row["candidate"], row["reference"], row["delta"]
            if c.get("mean") is None:
                continue
            change = "" if d.get("mean") is None else f"  change {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
            print(f"[gen {gen}]     {name:<28} {c['mean']:.3f} [{c['low']:.3f}, {c['high']:.3f}] vs {ev['against'] or 'base'} {r['mean']:.3f}{change}", flush=True)
        for criterion, why in (ev.get("reasons") or {}).items():
            print(f"[gen {gen}]     gate {criterion}: {why}", flush=True)
    elif kind == "promoted":
        print(f"[gen {gen}]   {ev['persona']}: promoted {ev['version']}", flush=True)
    elif kind == "kept":
        print(f"[gen {gen}]   {ev['persona']}: kept the current version ({ev['reason']})", flush=True)
    elif kind == "generation_end":
        print(f"generation {gen}:", flush=True)
        for persona, s in ev["summary"].items():
            if s.get("skipped"):
                print(f"  {persona:<12} skipped: {s['skipped']}")
                continue
            vs = "-" if s.get("vs_previous") is None else f"{s['vs_previous']:.2f}"
            rate = "-" if s.get("win_rate") is None else f"{s['win_rate']:.2f}"
            promoted = "promoted" if s.get("promoted") else "not promoted"
            print(f"  {persona:<12} {s.get('version') or '-':<14} win rate vs previous {vs}, overall {rate}, {promoted}; current {s.get('current') or 'base'}", flush=True)
        if ev.get("plot"):
            print(f"  metrics across generations: {ev['plot']}", flush=True)
    elif kind == "loop_end":
        print(f"loop {ev['loop']} finished; state in {ev['state']}", flush=True)


async def _run_async(args: argparse.Namespace) -> int:
    from bonsai.engine.session import open_engine
    from bonsai.personas import PersonaBook
    from training.backend import preload_backend
    from training.config import load_recipe, with_overrides
    from training.loop import Loop, LoopConfig, check_personas, load_state, new_state, save_state

    home = home_from(args)
    book = PersonaBook.load(args.personas_dir)
    engine = engine_options(args)
    judge = judge_options(args)
    if args.resume:
        state = load_state(home, args.resume)
        config = LoopConfig.model_validate(state["config"])
    else:
        config = _config(args)
        state = new_state(config)
    check_personas(config, book)
    recipe = with_overrides(load_recipe(config.recipe), config.train_overrides)  # fail on a bad recipe now, not after the debates
    preload_backend(recipe.backend)  # before anything imports transformers, peft and trl (CUDA only)
    if engine.max_lora_rank is None:
        engine = engine.model_copy(update={"max_lora_rank": max(16, recipe.lora.r)})
    session = open_engine(engine, home, judge=judge, starting=starting(enabled=not args.json), need_base=True, min_loras=4)
    saved = bool(args.resume)
    try:
        async with session as opened:
            if not saved:
                save_state(home, state)  # once every engine (the judge's too) started: a bad flag leaves no loop behind
                saved = True
            assert opened.base is not None
            loop = Loop(state, engine=opened.engine, home=home, book=book, base=opened.base, progress=not args.json and sys.stderr.isatty(),
                        judge_engine=opened.judge, api_key=engine.secret())
            async for ev in loop.run():
                if args.json:
                    print(json_text(ev), flush=True)
                else:
                    _print(ev)
    except (KeyboardInterrupt, asyncio.CancelledError):
        if saved:
            print(f"\ninterrupted: continue with `bonsai loop --resume {state['id']}`", file=sys.stderr)
        raise KeyboardInterrupt from None
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run_async(args))
    except BonsaiError:
        raise
    except KeyboardInterrupt:
        return 130
