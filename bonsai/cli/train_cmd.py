"""``bonsai train PERSONA``: a preference dataset and a recipe in, a new adapter version out."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bonsai.cli.common import home_from
from bonsai.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a new adapter version for a persona (ORPO, DPO, SFT, ORPO->SFT)",
        description=(
            "Train a LoRA adapter on a persona's preference dataset (from `bonsai data build`) with a recipe, "
            "and register it as a new version (named by content hash) under $BONSAI_HOME/adapters/PERSONA/. "
            "The version is not used until it is promoted (`bonsai adapters promote`)."
        ),
    )
    p.add_argument("persona", help="the persona whose adapter to train")
    p.add_argument("--dataset", type=Path, default=None, help="dataset folder (default: the persona's newest under $BONSAI_HOME/datasets/PERSONA/)")
    p.add_argument("--recipe", default="orpo", help="built-in recipe (orpo, dpo, sft, orpo-then-sft) or a YAML file (default orpo)")
    p.add_argument("--base", help="base model folder or cached hub id (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--from", dest="init", choices=["parent", "base"], default=None, help="start from the current version's weights (parent) or a fresh LoRA (base); default: the recipe's")
    p.add_argument("--max-steps", type=int, default=None, help="stop each stage after N optimizer steps")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override a TRL trainer setting in every stage, e.g. --set learning_rate=1e-4; repeatable")
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

    preload_backend()  # Unsloth must be imported before trl (CUDA only; a no-op here otherwise)

    from bonsai.model.prepare import resolve_base
    from training.config import load_recipe, parse_set_options, with_overrides
    from training.train import train_adapter

    home = home_from(args)
    overrides = parse_set_options(args.sets)
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise ConfigError("--max-steps must be at least 1")
        overrides["max_steps"] = args.max_steps
    recipe = with_overrides(load_recipe(args.recipe), overrides)
    if args.init:
        recipe = recipe.model_copy(update={"init": args.init})
    dataset = args.dataset or newest_dataset(home, args.persona)
    base = resolve_base(args.base, home)
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
