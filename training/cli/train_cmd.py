"""``bonsai train PERSONA``: a preference dataset and a recipe in, a new adapter version out."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bonsai.cli.common import home_from, json_text
from bonsai.errors import ConfigError

if TYPE_CHECKING:
    from bonsai.model.prepare import BaseModel
    from bonsai.personas import Persona
    from training.config import Recipe
    from training.logic.problems import Problem
    from training.train import TrainResult


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a new adapter version for a persona (ORPO, DPO, SFT, ORPO->SFT, GRPO on logic problems)",
        description=(
            "Train a LoRA adapter on a persona's preference dataset (from `bonsai data build`) with a recipe, "
            "and register it as a new version (named by content hash) under $BONSAI_HOME/adapters/PERSONA/. "
            "The version is not used until it is promoted (`bonsai adapters promote`)."
        ),
    )
    p.add_argument("persona", help="the persona whose adapter to train")
    p.add_argument("--dataset", type=Path, default=None, help="dataset folder (default: the persona's newest under $BONSAI_HOME/datasets/PERSONA/)")
    p.add_argument("--recipe", default="orpo", help="built-in recipe (orpo, dpo, sft, orpo-then-sft) or a YAML file (default orpo)")
    p.add_argument("--base", help="base model folder, prepared model name or cached hub id (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument(
        "--chat-template", type=Path, default=None, metavar="FILE",
        help="Jinja chat template for a base without one (the one it debates with: the trainer renders the same prompts)",
    )
    p.add_argument("--from", dest="init", choices=["parent", "base"], default=None, help="start from the current version's weights (parent) or a fresh LoRA (base); default: the recipe's")
    p.add_argument("--max-steps", type=int, default=None, help="stop each stage after N optimizer steps")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override a TRL trainer setting in every stage, e.g. --set learning_rate=1e-4; repeatable")
    g = p.add_argument_group("grpo (generated logic problems instead of a dataset)")
    g.add_argument("--problems", type=int, default=None, metavar="N", help="training problems to generate (default 256)")
    g.add_argument("--langs", default=None, help="problem languages, comma-separated (default en,ja,zh)")
    g.add_argument("--kinds", default=None, help="problem kinds: arithmetic,syllogism,ordering (default all)")
    g.add_argument("--problem-seed", type=int, default=None, help="seeds the problem generator (default 0)")
    g.add_argument("--eval", dest="eval_n", type=int, default=None, metavar="N", help="after training, held-out correctness on N test problems, before and after")
    g.add_argument("--eval-max-tokens", type=int, default=256, help="token budget of each evaluation answer (default 256)")
    g.add_argument("--eval-engine", choices=["hf", "vllm"], default=None, help="engine for --eval (default: vllm on CUDA, hf on CPU)")
    p.add_argument("--personas-dir", type=Path, default=None, help="folder of persona YAML files (default: the shipped personas)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def newest_dataset(home: Path, persona: str) -> Path:
    from training.card import read_card
    from bonsai.personas import check_persona_name
    from training.dataset import datasets_dir

    root = datasets_dir(home) / check_persona_name(persona)
    found = []
    if root.is_dir():
        for folder in root.iterdir():
            if (folder / "card.json").is_file():
                found.append((read_card(folder).created_at, folder))
    if not found:
        raise ConfigError(f"persona {persona!r} has no dataset under {root}", f"build one with `bonsai data build --persona {persona} --strategy best-of-n`, or pass --dataset DIR")
    return max(found)[1]


def run(args: argparse.Namespace) -> int:
    from training.backend import preload_backend
    from training.config import load_recipe, parse_set_options, with_overrides

    home = home_from(args)
    overrides = parse_set_options(args.sets)
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise ConfigError("--max-steps must be at least 1")
        overrides["max_steps"] = args.max_steps
    recipe = with_overrides(load_recipe(args.recipe), overrides)
    preload_backend(recipe.backend)  # before anything imports trl or transformers (CUDA only; a no-op here otherwise)

    from bonsai.model.prepare import resolve_templated_base
    from training.train import train_adapter

    if args.init:
        recipe = recipe.model_copy(update={"init": args.init})
    if recipe.is_grpo:
        return run_grpo(args, home, recipe)
    given = [flag for flag, value in _GRPO_FLAGS.items() if getattr(args, value) is not None]
    if given:
        raise ConfigError(f"{given[0]} only goes with a grpo recipe (generated logic problems)", f"drop {given[0]}, or train with --recipe grpo")
    dataset = args.dataset or newest_dataset(home, args.persona)
    base = resolve_templated_base(args.base, home, args.chat_template)
    if not args.json:
        print(f"training {args.persona} with {recipe.name} ({' -> '.join(recipe.methods)}) on {dataset}", file=sys.stderr, flush=True)
    result = train_adapter(args.persona, dataset, home=home, base=base, recipe=recipe, progress=not args.no_progress and not args.json)
    stages = result.metrics.get("stages", [])
    if args.json:
        print(json.dumps({
            "persona": result.persona, "version": result.version, "path": str(result.path), "parent": result.parent,
            "dataset_hash": result.dataset_hash, "backend": result.backend, "device": result.device,
            "seconds": round(result.seconds, 2), "metrics": result.metrics,
        }))
        return 0
    print(f"trained {result.persona}@{result.version} in {result.seconds:.0f}s ({result.backend} on {result.device}; parent {result.parent or 'none'})")
    for i, stage in enumerate(stages, 1):
        first, last = stage.get("first", {}), stage.get("last", {})
        line = f"  stage {i} {stage['method']}: {stage['steps']} steps, loss {first.get('loss', float('nan')):.4f} -> {last.get('loss', float('nan')):.4f}"
        if "rewards/margins" in last:
            line += f", reward margin {last['rewards/margins']:+.4f}"
        if stage.get("eval", {}).get("loss") is not None:
            line += f", test loss {stage['eval']['loss']:.4f}"
        print(line)
    print(f"  metrics: {result.path / 'metrics.jsonl'} and metrics.png")
    print(f"next: bonsai adapters evaluate {result.persona} --candidate {result.version}")
    return 0


_GRPO_FLAGS = {"--problems": "problems", "--langs": "langs", "--kinds": "kinds", "--problem-seed": "problem_seed", "--eval": "eval_n", "--eval-engine": "eval_engine"}


def run_grpo(args: argparse.Namespace, home: Path, recipe: Recipe) -> int:
    """GRPO on generated logic problems; with --eval, held-out correctness of the start and the result."""
    from pydantic import ValidationError

    from bonsai.errors import describe_validation
    from bonsai.model.prepare import resolve_templated_base
    from bonsai.personas import PersonaBook
    from training.logic.grpo import LogicSet, train_logician
    from training.logic.prompts import require_tag_format

    if args.dataset is not None:
        raise ConfigError("the grpo recipe trains on generated logic problems, not on a dataset", "drop --dataset (use --problems, --langs, --kinds, --problem-seed)")
    persona = PersonaBook.load(args.personas_dir).get(args.persona)
    require_tag_format(persona)
    settings = {k: v for k, v in {"n": args.problems, "languages": args.langs, "kinds": args.kinds, "seed": args.problem_seed}.items() if v is not None}
    try:
        logic = LogicSet.model_validate(settings)
    except ValidationError as exc:
        flags = {"n": "--problems", "languages": "--langs", "kinds": "--kinds", "seed": "--problem-seed"}
        problems = describe_validation(exc, name=lambda field: flags.get(field, field))
        raise ConfigError(f"invalid logic problem settings: {'; '.join(problems)}", "see `bonsai train --help`") from None
    if args.eval_n is not None and args.eval_n < 1:
        raise ConfigError("--eval must be at least 1")
    held_out = logic.problems("test", n=args.eval_n) if args.eval_n else []
    base = resolve_templated_base(args.base, home, args.chat_template)
    if not args.json:
        print(f"training {persona.name} with {recipe.name} (grpo) on {logic.n} logic problems ({','.join(logic.kinds)}; {','.join(logic.languages)}; seed {logic.seed})", file=sys.stderr, flush=True)
    result = train_logician(persona, home=home, base=base, recipe=recipe, logic=logic, progress=not args.no_progress and not args.json)
    evaluation = None
    if held_out:
        evaluation = _evaluate(args, home, base, persona, result, held_out, recipe.lora.r)
    stage = (result.metrics.get("stages") or [{}])[0]
    if args.json:
        out = {
            "persona": result.persona, "version": result.version, "path": str(result.path), "parent": result.parent,
            "dataset_hash": result.dataset_hash, "backend": result.backend, "device": result.device,
            "seconds": round(result.seconds, 2), "metrics": result.metrics,
        }
        if evaluation is not None:
            out["eval"] = {k: v.to_json() for k, v in evaluation.items()}
        print(json_text(out))
        return 0
    first, last = stage.get("first", {}), stage.get("last", {})
    print(f"trained {result.persona}@{result.version} in {result.seconds:.0f}s ({result.backend} on {result.device}; parent {result.parent or 'none'})")
    print(f"  grpo: {stage.get('steps', 0)} steps, reward {first.get('reward', float('nan')):.3f} -> {last.get('reward', float('nan')):.3f}"
          f" (correctness {first.get('rewards/correctness_reward/mean', float('nan')):.3f} -> {last.get('rewards/correctness_reward/mean', float('nan')):.3f})")
    print(f"  metrics: {result.path / 'metrics.jsonl'} and metrics.png")
    if evaluation is not None:
        print(f"  held-out ({len(held_out)} test problems, greedy)    correct                      strict format")
        for label, acc in evaluation.items():
            print(f"    {label:<7} {acc.adapter[:28]:<28} {acc.correct!s:<28} {acc.strict_format}")
    print(f"use it as a teacher: bonsai data build --persona PERSONA --strategy teacher --teacher-adapter {result.persona}@{result.version}")
    return 0


def _evaluate(args: argparse.Namespace, home: Path, base: BaseModel, persona: Persona, result: TrainResult, problems: list[Problem], rank: int) -> dict[str, Any]:
    import asyncio

    import torch

    from bonsai.registry import persona_dir
    from bonsai.engine import EngineConfig, create_engine
    from bonsai.registry.identity import inspect_adapter
    from training.logic.evaluate import logic_accuracy

    # "before" is what training started from: the parent's weights when it began from them, else the bare base
    start = persona_dir(home, result.persona) / result.parent if result.parent and _initialized_from_parent(result.path) else None
    before_ref = inspect_adapter(start) if start is not None else None
    after_ref = inspect_adapter(result.path)
    kind = args.eval_engine or ("vllm" if torch.cuda.is_available() else "hf")

    async def run() -> dict[str, Any]:
        config = EngineConfig(
            kind=kind, base_model=base.path, base_hash=base.content_hash, max_lora_rank=max(16, rank), max_model_len=2048, chat_template=base.chat_template,
        )
        engine = create_engine(config)
        await engine.start()
        try:
            before = await logic_accuracy(engine, before_ref, problems, persona=persona, max_tokens=args.eval_max_tokens)
            after = await logic_accuracy(engine, after_ref, problems, persona=persona, max_tokens=args.eval_max_tokens)
        finally:
            await engine.close()
        return {"before": before, "after": after}

    print(f"held-out correctness on {len(problems)} test problems ({kind} engine)...", file=sys.stderr, flush=True)
    return asyncio.run(run())


def _initialized_from_parent(version_dir: Path) -> bool:
    from bonsai.registry import read_manifest

    manifest = read_manifest(version_dir)
    return manifest is not None and manifest.extra("initialized_from") not in (None, "base")
