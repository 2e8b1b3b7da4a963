"""Training figures on this machine: seconds per ORPO step, and the two-generation closed loop.

    .venv/bin/python bench/train_bench.py [--steps 6] [--generations 2] [--promote gate|always] [--skip-steps] [--skip-loop] [--json-out FILE]

Part 1 trains the shipped ``orpo`` recipe (LoRA r=16 on every projection, batch 2, fp32 on CPU) for
``--steps`` steps on 16 synthetic pairs shaped like debate turns (a persona prompt of ~150 tokens, answers
of ~50), and reports the median step time from the trainer's own log times (the first step, which
includes warm-up, is left out) and the whole run (model load and saving included).

Part 2 runs exactly what ``bonsai loop --personas advocate,skeptic --generations 2 --max-steps 2`` runs
(the CLI's own defaults: 2 debates of the quick format with best-of-2 candidates, best-of-n + stance
pairs, 2 ORPO steps per persona, the gate on 2 held-out motions) on the in-process vLLM engine and
reports engine start-up and every step of every generation. The target on a 2-core CPU is <= 15 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bonsai.model.prepare import BaseModel, resolve_base
from bonsai.paths import bonsai_home

SYSTEM = (
    "You are Advocate, a debater on team A. You argue FOR the motion. Make one or two concrete, well-supported points "
    "per turn, answer the other side's strongest point directly, and stay under 120 words. Never argue against the motion."
)
MOTIONS = [
    "This house believes that cities should ban private cars from their centres",
    "This house would abolish homework in primary schools",
    "This house believes that social media does more harm than good",
    "This house would make voting compulsory",
]


def write_pairs(out: Path, base: BaseModel, n: int = 16) -> Path:
    """A dataset folder in `bonsai data build`'s layout, with debate-shaped synthetic pairs."""
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    from training.card import Counts, DatasetCard, Split, StrategyEntry, content_hash, hashed_settings, write_card
    from training.dataset import SPLITS, features

    rows = []
    for i in range(n):
        motion = MOTIONS[i % len(MOTIONS)]
        user = (
            f'Motion: "{motion}"\nYou are on team A, arguing for the motion.\n\n'
            "skeptic (team B, against the motion), Opening:\nThe proposal ignores the people it would hurt most, and the "
            "evidence from the cities that tried it is mixed at best. Costs fall on commuters and small shops.\n\n"
            "Your turn (Rebuttal): Rebut the other side's latest argument."
        )
        chosen = (
            "The evidence is not mixed: Oslo and Ghent cut traffic deaths and raised footfall in shops after closing their "
            "centres to cars. Commuters gained faster buses, and small shops gained customers who walk and linger."
        )
        rejected = "I think cars are fine and maybe the other side is right, I am not sure what to say about it."
        rows.append({
            "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
            "chosen": [{"role": "assistant", "content": f"{chosen} ({i})"}],
            "rejected": [{"role": "assistant", "content": f"{rejected} ({i})"}],
            "motion": motion, "strategy": "best-of-n", "debate_id": f"bench{i}", "turn_index": 1, "meta": "{}",
        })
    card = DatasetCard(
        persona="advocate", language="en", reasoning="none", format="conversational", base_model=base.name,
        base_hash=base.content_hash, source_store="(bench)", debate_ids=sorted(r["debate_id"] for r in rows),
        strategies=[StrategyEntry(name="best-of-n")], counts=Counts(kept=n, train=n, test=0), max_length=1024, min_room=16,
        split=Split(test_fraction=0.0, seed=0, train_motions=sorted(set(MOTIONS)), test_motions=[]), content_hash="", created_at=time.time(),
    )
    card.content_hash = content_hash(hashed_settings(card), rows, [])
    feats = features("conversational")
    dd = DatasetDict({
        "train": Dataset.from_list(rows, features=feats),
        "test": Dataset.from_dict({k: [] for k in feats}, features=feats),
    })
    out.mkdir(parents=True, exist_ok=True)
    dd.save_to_disk(str(out), num_shards={name: 1 for name in SPLITS})
    for name in SPLITS:
        pq.write_table(dd[name].data.table, str(out / f"{name}.parquet"))
    write_card(out, card)
    return out


def bench_steps(base: BaseModel, steps: int, work: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from training.config import load_recipe, with_overrides
    from training.train import train_adapter

    dataset = write_pairs(work / "pairs", base)
    recipe = with_overrides(load_recipe("orpo"), {"max_steps": steps}).model_copy(update={"evaluate": False, "init": "base"})
    t0 = time.monotonic()
    result = train_adapter("advocate", dataset, home=work / "home", base=base, recipe=recipe)
    total = time.monotonic() - t0
    times = [r["time"] for r in result.records if "loss" in r]
    per_step = [b - a for a, b in zip(times, times[1:], strict=False)]
    tok = AutoTokenizer.from_pretrained(str(base.path))
    from datasets import load_from_disk

    row = load_from_disk(str(dataset))["train"][0]
    rendered = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    prompt_tokens = len(tok(rendered, add_special_tokens=False).input_ids)
    completion_tokens = len(tok(row["chosen"][0]["content"], add_special_tokens=False).input_ids)
    return {
        "what": "orpo step, LoRA r=16 all projections, batch 2, fp32, CPU",
        "steps": steps,
        "seconds_per_step_median": round(statistics.median(per_step), 2) if per_step else None,
        "seconds_per_step": [round(x, 2) for x in per_step],
        "run_seconds_with_load_and_save": round(total, 1),
        "prompt_tokens": prompt_tokens,
        "chosen_tokens": completion_tokens,
        "loss": [round(r["loss"], 4) for r in result.records if "loss" in r],
    }


async def bench_loop(base: BaseModel, generations: int, work: Path, promote: str = "gate") -> dict[str, Any]:
    from training.cli import loop_cmd
    from bonsai.cli.common import engine_options
    from bonsai.engine import create_engine
    from bonsai.engine.session import plan_engine
    from bonsai.personas import PersonaBook
    from training.loop import Loop, new_state, save_state

    parser = argparse.ArgumentParser(prog="bonsai")
    loop_cmd.register(parser.add_subparsers(dest="command"))
    argv = ["loop", "--personas", "advocate,skeptic", "--generations", str(generations), "--max-steps", "2"]
    if promote != "gate":
        argv += ["--promote", promote]
    args = parser.parse_args(argv)
    config = loop_cmd._config(args)
    home = work / "loop-home"
    home.mkdir(parents=True)
    options = engine_options(args, max_lora_rank=16, base=str(base.path))
    engine = create_engine(plan_engine(options, home, min_loras=4).config)
    t0 = time.monotonic()
    await engine.start()
    started = time.monotonic() - t0
    state = new_state(config)
    save_state(home, state)
    events = []
    t1 = time.monotonic()
    try:
        async for ev in Loop(state, engine=engine, home=home, book=PersonaBook.load(), base=base).run():
            events.append({**ev, "t": round(time.monotonic() - t1, 1)})
            print(json.dumps(events[-1]), flush=True)
    finally:
        await engine.close()
    total = time.monotonic() - t1
    steps = []
    prev = state["created_at"]
    final = json.loads((home / "loops" / f"{state['id']}.json").read_text())
    for g in final["generations"]:
        for name in ("debates", "data", "train", "evaluate", "promote"):
            done = g["steps"][name]["finished_at"]
            steps.append({"generation": g["generation"], "step": name, "seconds": round(done - prev, 1)})
            prev = done
    return {
        "command": "bonsai " + " ".join(argv),
        "engine_start_seconds": round(started, 1),
        "loop_seconds": round(total, 1),
        "with_engine_start_seconds": round(total + started, 1),
        "steps": steps,
        "summaries": {g["generation"]: g["summary"] for g in final["generations"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--promote", choices=["gate", "always"], default="gate", help="the loop's --promote (always: generation 2 is gated against generation 1)")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    base = resolve_base(None, bonsai_home())
    work = Path(tempfile.mkdtemp(prefix="bonsai-train-bench-"))
    import os

    out: dict[str, Any] = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    if not args.skip_steps:
        out["orpo_steps"] = bench_steps(base, args.steps, work)
        print(json.dumps({"orpo_steps": out["orpo_steps"]}), flush=True)
    if not args.skip_loop:
        out["loop"] = asyncio.run(bench_loop(base, args.generations, work, args.promote))
    out["load_average_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
