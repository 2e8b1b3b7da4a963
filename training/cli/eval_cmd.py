"""``bonsai eval PERSONA [VERSION] --against parent|base|VERSION``: is a version better, by how much, how sure."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from bonsai.cli.common import add_engine_arguments, engine_options, home_from, json_text, judge_options, starting
from bonsai.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure an adapter version against its parent, the base or another version on held-out motions",
        description=(
            "Measures a persona's adapter version against a reference on motions no version of the persona trained on: "
            "the persona's rubric on sampled speeches (every check), held-out preference accuracy and log-odds margin on "
            "the dataset's test split, the judge's win rate with sides swapped, and tokens per turn, each with a 95% "
            "interval. Saves the report and a plot beside the version (`bonsai adapters show` prints it)."
        ),
    )
    p.add_argument("persona")
    p.add_argument("version", nargs="?", default=None, help="version name or unique prefix (default: the current version)")
    p.add_argument("--against", default="parent", help="parent (default: the version it was trained from), base, or a version of the persona")
    p.add_argument("--motions", type=Path, default=None, help="held-out motions, one per line (default: the test motions of the version's dataset); a motion any version trained on is refused")
    p.add_argument("--dataset", type=Path, default=None, help="the dataset whose test split gives the motions and the preference pairs (default: the version's own)")
    p.add_argument("--max-motions", type=int, default=8, help="use at most N motions (default 8)")
    p.add_argument("--samples", type=int, default=4, help="speeches sampled per motion and adapter for the rubric (default 4)")
    p.add_argument("--turns", type=int, default=1, help="the persona's turns per sample; later turns answer the opponent (default 1)")
    p.add_argument("--format", default="quick", help="debate format of the speeches and judged debates (default quick)")
    p.add_argument("--max-tokens", type=int, default=None, help="cap on every speech (default: the persona's and the format's)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--no-judge", action="store_true", help="skip the judged debates (the slow part on a CPU)")
    p.add_argument("--no-preference", action="store_true", help="skip the held-out preference pairs")
    p.add_argument("--judge", default="judge", help="the judge persona for the judged debates (default judge)")
    p.add_argument("--store", type=Path, default=None, help="store for the judged debates (default: $BONSAI_HOME/evaluations.sqlite)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_engine_arguments(p)
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from bonsai.errors import describe_validation
    from training.evaluation.run import EvalConfig

    try:
        return EvalConfig(
            against=args.against, max_motions=args.max_motions, samples=args.samples, turns=args.turns, format=args.format,
            max_tokens=args.max_tokens, seed=args.seed, judge=not args.no_judge, preference=not args.no_preference,
        )
    except ValidationError as exc:
        raise ConfigError("invalid options: " + "; ".join(describe_validation(exc)), "see `bonsai eval --help`") from None


async def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from bonsai.registry import persona_dir
    from bonsai.debate.formats import load_format
    from bonsai.registry.identity import inspect_adapter
    from bonsai.engine.session import open_engine
    from bonsai.personas import PersonaBook
    from training.evaluation.heldout import check_held_out
    from training.evaluation.report import save_report
    from training.evaluation.run import current_or, default_motions, evaluate_version, resolve_reference
    from training.gate import GateConfig, read_motions_file

    home = home_from(args)
    config = _config(args)
    load_format(config.format)
    options, judge = engine_options(args), judge_options(args)
    book = PersonaBook.load(args.personas_dir)
    book.get(args.persona)
    version = current_or(home, args.persona, args.version)
    ref_label, ref_path = resolve_reference(home, args.persona, version, config.against)
    motions = read_motions_file(args.motions) if args.motions else default_motions(home, args.persona, version, args.dataset)
    motions = list(dict.fromkeys(motions))[: config.max_motions]
    check_held_out(home, args.persona, motions)  # before any engine starts
    refs = [inspect_adapter(persona_dir(home, args.persona) / version), *([inspect_adapter(ref_path)] if ref_path else [])]

    def say(msg: str) -> None:
        if not args.json:
            print(f"{msg}...", file=sys.stderr, flush=True)

    # the preference pairs are scored on the base itself, so it is needed even when an endpoint samples
    async with open_engine(options, home, refs, judge=judge, starting=starting(enabled=not args.json), need_base=True, min_loras=2) as session:
        assert session.base is not None
        report = await evaluate_version(
            session.engine, home=home, book=book, base=session.base, persona=args.persona, version=version, motions=motions,
            dataset=args.dataset, config=config, gate=GateConfig(judge=args.judge, max_motions=config.max_motions),
            store_path=args.store, on_progress=say, judge_engine=session.judge,
        )
    data = report.to_json()
    data["files"] = save_report(home, data, plot=not args.no_plot)
    return data


def run(args: argparse.Namespace) -> int:
    from training.evaluation.report import format_table

    try:
        data = asyncio.run(_evaluate(args))
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json_text({k: v for k, v in data.items() if k != "samples"}))
        return 0
    print(format_table(data), end="")
    for kind, path in data["files"].items():
        print(f"{kind}: {path}")
    return 0
