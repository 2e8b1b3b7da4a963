"""``bonsai data build``: turn stored debates into a persona's preference dataset (``training/``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bonsai.cli.common import add_engine_arguments, engine_options, home_from, json_text, judge_options, progress, starting
from bonsai.engine.session import open_judge, plan_engine, plan_judge
from bonsai.errors import ConfigError, as_flag, describe_validation
from bonsai.paths import store_path
from bonsai.personas import PersonaBook

#: flags that only one strategy reads, so giving them without it is a mistake worth saying
_STRATEGY_FLAGS = {
    "best-of-n": ("min_gap",),
    "stance": ("opponent",),
    "cross-lingual": ("translator", "translation_max_tokens"),
    "teacher": ("teacher_adapter", "teacher_endpoint", "teacher_model", "teacher_base", "teacher_temperature"),
    "rubric": ("rubric_min_gap", "judge_weight", "rubric_samples", "no_repair"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build preference datasets from stored debates; print logic problems", description="Preference datasets for training persona adapters, and the logic problems GRPO trains on.")
    actions = p.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True
    b = actions.add_parser(
        "build",
        help="build a persona's preference dataset",
        description=(
            "Turn a persona's stored turns into same-prompt preference pairs (TRL prompt/chosen/rejected), split "
            "by motion into train and test, saved with save_to_disk and as Parquet with a card.json. Strategies: "
            "best-of-n (judge's best vs worst stored candidate), stance (own answer vs the opposing side's adapter "
            "on the same prompt), cross-lingual (ja/zh: English answer translated vs native answer), teacher "
            "(a teacher's answer vs the persona's), rubric (the persona's rubric: best vs worst answer, the best repaired into "
            "the persona's format where that scores higher)."
        ),
    )
    b.add_argument("--persona", required=True, help="the persona whose turns become pairs")
    b.add_argument("--strategy", required=True, help="comma-separated: best-of-n, stance, cross-lingual, teacher, rubric")
    b.add_argument("--store", type=Path, default=None, help="transcript store (default: $BONSAI_HOME/transcripts.sqlite)")
    b.add_argument("--out", type=Path, default=None, help="dataset folder (default: $BONSAI_HOME/datasets/PERSONA/HASH12)")
    b.add_argument("--max-length", type=int, default=1024, help="prompt + completion tokens in training; longer prompts are dropped (default 1024)")
    b.add_argument("--min-room", type=int, default=16, help="completion tokens a prompt must leave room for (default 16)")
    b.add_argument("--test-fraction", type=float, default=0.2, help="share of pairs held out, by whole motions (default 0.2)")
    b.add_argument("--seed", type=int, default=0, help="seeds the split and generated answers (default 0)")
    b.add_argument("--min-pairs", type=int, default=4, help="fewer usable pairs than this is an error (default 4)")
    b.add_argument("--max-tokens", type=int, default=None, help="cap on generated answers (default: each turn's own budget)")
    b.add_argument("--concurrency", type=int, default=16, help="generation requests in flight at once (default 16)")
    g = b.add_argument_group("strategy options")
    g.add_argument("--min-gap", type=float, default=None, help="best-of-n: smallest judge-score gap (default 0.05)")
    g.add_argument("--opponent", choices=["side", "base"], default=None, help="stance: the opposing persona's adapter (side, default) or the bare base")
    g.add_argument("--translator", default=None, help="cross-lingual: translator persona (default: translator)")
    g.add_argument("--translation-max-tokens", type=int, default=None, help="cross-lingual: token budget per translation")
    g.add_argument("--teacher-adapter", default=None, metavar="DIR|PERSONA@VERSION", help="teacher: a LoRA adapter on the base, a folder or a registry version (logician@current)")
    g.add_argument("--teacher-endpoint", default=None, metavar="URL", help="teacher: an OpenAI-compatible server")
    g.add_argument("--teacher-model", default=None, metavar="NAME", help="teacher: model on --teacher-endpoint (default: its base)")
    g.add_argument("--teacher-base", type=Path, default=None, metavar="DIR", help="teacher: another local base model")
    g.add_argument("--teacher-temperature", type=float, default=None, help="teacher: sampling temperature (default: the turn's)")
    g.add_argument("--rubric-min-gap", type=float, default=None, help="rubric: smallest ranking gap between chosen and rejected (default 0.05)")
    g.add_argument("--judge-weight", type=float, default=None, help="rubric: share of the judge's score in the ranking, 0..1 (default 0: rubric only, judge breaks ties)")
    g.add_argument("--rubric-samples", type=int, default=None, metavar="K", help="rubric: K new samples for turns stored with one answer (default 0)")
    g.add_argument("--no-repair", action="store_const", const=True, default=None, help="rubric: never rewrite the best answer into the persona's format")
    b.add_argument("--json", action="store_true", help="print the dataset card as JSON")
    add_engine_arguments(b)
    b.set_defaults(func=run_build)

    g = actions.add_parser(
        "logic",
        help="print generated logic problems as JSONL (what `--recipe grpo` trains on)",
        description=(
            "Arithmetic word problems, syllogisms and orderings in en/ja/zh with checkable answers, as JSONL. "
            "The same seed gives the same problems; train and test never share a problem."
        ),
    )
    g.add_argument("--n", type=int, default=10, help="how many problems (default 10)")
    g.add_argument("--lang", default="en,ja,zh", help="languages, comma-separated (default en,ja,zh)")
    g.add_argument("--kinds", default="arithmetic,syllogism,ordering", help="kinds, comma-separated (default all three)")
    g.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    g.add_argument("--split", choices=["train", "test"], default="train", help="train (default) or held-out test problems")
    g.add_argument("-o", "--out", type=Path, default=None, help="write the JSONL to this file instead of stdout")
    g.set_defaults(func=run_logic)


def run_logic(args: argparse.Namespace) -> int:
    from bonsai import atomic
    from training.logic.problems import generate

    problems = generate(args.n, seed=args.seed, split=args.split, languages=args.lang, kinds=args.kinds)
    text = "".join(json_text(p.to_json()) + "\n" for p in problems)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    atomic.write_text(args.out, text)
    print(f"{len(problems)} {args.split} problems written to {args.out}", file=sys.stderr)
    return 0


def _strategy_params(args: argparse.Namespace, names: list[str]) -> list[dict[str, Any]]:
    for strategy, flags in _STRATEGY_FLAGS.items():
        if strategy in names:
            continue
        given = [f for f in flags if getattr(args, f) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ConfigError(f"{flag} is an option of the {strategy} strategy, which is not in --strategy", f"add {strategy} to --strategy or drop {flag}")

    def pick(**values: Any) -> dict[str, Any]:
        return {k: v for k, v in values.items() if v is not None}

    by_name = {
        "best-of-n": pick(min_gap=args.min_gap),
        "stance": pick(opponent=args.opponent),
        "cross-lingual": pick(translator=args.translator, translation_max_tokens=args.translation_max_tokens),
        "teacher": pick(
            adapter=args.teacher_adapter, endpoint=args.teacher_endpoint, model=args.teacher_model,
            base=args.teacher_base, temperature=args.teacher_temperature,
        ),
        "rubric": pick(
            min_gap=args.rubric_min_gap, judge_weight=args.judge_weight, samples=args.rubric_samples,
            repair=False if args.no_repair else None,
        ),
    }
    return [{"name": n, "params": by_name[n]} for n in names]


async def _build(args: argparse.Namespace) -> Any:
    from training.dataset import BuildOptions, build_dataset
    from training.pairs import Engines, parse_strategy_list

    home = home_from(args)
    names = parse_strategy_list(args.strategy)
    if args.teacher_adapter is not None:
        from bonsai.registry import adapter_folder

        args.teacher_adapter = adapter_folder(home, args.teacher_adapter)
    try:
        options = BuildOptions(
            persona=args.persona,
            strategies=_strategy_params(args, names),
            store=args.store or store_path(home),
            out=args.out,
            max_length=args.max_length,
            min_room=args.min_room,
            test_fraction=args.test_fraction,
            seed=args.seed,
            min_pairs=args.min_pairs,
            concurrency=args.concurrency,
            max_tokens=args.max_tokens,
        )
    except ValidationError as exc:
        problems = "; ".join(describe_validation(exc, name=as_flag))
        raise ConfigError(f"invalid dataset settings: {problems}", "see `bonsai data build --help`") from None
    book = PersonaBook.load(args.personas_dir)
    engine = engine_options(args)
    # the base is needed even when an endpoint generates: the dataset is tokenised for training on it;
    # the engine itself starts only if a strategy generates (see Engines)
    setup = plan_engine(engine, home, need_base=True, min_loras=4)
    assert setup.base is not None
    async with contextlib.AsyncExitStack() as stack:
        judge = plan_judge(judge_options(args), engine, home)
        # the judge's engine (if it has one) starts now, so a bad --judge-endpoint fails before anything is built
        judge_engine = await stack.enter_async_context(open_judge(judge, starting=starting(enabled=not args.json))) if judge else None
        engines = await stack.enter_async_context(Engines(setup.config, fixed_rank=engine.max_lora_rank is not None, judge_engine=judge_engine))
        with progress(f"building {args.persona}'s dataset", enabled=not args.json):
            return await build_dataset(options, base=setup.base, book=book, home=home, engines=engines)


def run_build(args: argparse.Namespace) -> int:
    if getattr(args, "verbose", 0) == 0:
        import datasets

        datasets.disable_progress_bars()  # the CLI reports counts itself
        logging.getLogger("datasets").setLevel(logging.ERROR)
    try:
        result = asyncio.run(_build(args))
    except KeyboardInterrupt:
        print("\ninterrupted: no dataset was written", file=sys.stderr)
        return 130
    card = result.card
    if args.json:
        print(json_text({"path": str(result.path), "reused": result.reused, **card.model_dump(mode="json")}))
        return 0
    counts = card.counts
    dropped = ", ".join(f"{reason.replace('_', ' ')} {n}" for reason, n in counts.dropped.items()) or "none"
    print(f"{card.persona}: {counts.kept} pairs ({counts.train} train, {counts.test} test) from {len(card.debate_ids)} debates, {card.format} format")
    mix = ", ".join(f"{s.name} {counts.by_strategy[s.name]}" if s.name in counts.by_strategy else s.name for s in card.strategies)
    print(f"  strategies: {mix}; dropped: {dropped}")
    if counts.truncated:
        print(f"  {counts.truncated} pairs have a completion longer than --max-length {card.max_length} allows: training will cut it")
    print(f"  {'already built' if result.reused else 'written to'} {result.path} (content hash {card.content_hash[:12]})")
    return 0
