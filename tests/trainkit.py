"""Helpers the training tests share: preference datasets written in `bonsai data build`'s exact layout,
and a tiny recipe that trains a couple of steps on CPU."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bonsai.model.prepare import BaseModel
from training.card import Counts, DatasetCard, Split, StrategyEntry, content_hash, hashed_settings, write_card
from training.config import Recipe, parse_recipe
from training.dataset import SPLITS, features

SYSTEM = "You are Advocate, a debater on team A. You argue FOR the motion."

GOOD = [
    "Banning cars from city centres cuts air pollution and makes streets safe for children and cyclists.",
    "Car-free centres raise shop revenue, because people on foot linger and spend more.",
    "Fewer cars means quieter, cleaner streets, and buses run on time without traffic jams.",
    "Cities that removed cars, like Oslo, saw fewer road deaths and busier high streets.",
]
BAD = [
    "I don't know, cars are fine I guess.",
    "Whatever. Maybe. Cars.",
    "no",
    "I forgot what the motion was about.",
]


def chat_row(motion: str, i: int) -> dict[str, Any]:
    user = f'Motion: "{motion}"\nYou are on team A, arguing for the motion.\n\nYour turn (Opening): Give your opening statement.'
    return {
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        "chosen": [{"role": "assistant", "content": GOOD[i % len(GOOD)]}],
        "rejected": [{"role": "assistant", "content": BAD[i % len(BAD)]}],
        "motion": motion,
        "strategy": "best-of-n",
        "debate_id": f"d{i:03d}",
        "turn_index": 1,
        "meta": json.dumps({"scores": [0.9, 0.1]}),
    }


def alpaca_row(motion: str, i: int) -> dict[str, Any]:
    prompt = f'{SYSTEM}\n\n### Instruction:\nMotion: "{motion}"\nGive your opening statement.\n\n### Response:\n'
    return {
        "prompt": prompt,
        "chosen": f"### Reasoning\nThe other side ignores the costs.\n\n### Answer\n{GOOD[i % len(GOOD)]}",
        "rejected": BAD[i % len(BAD)],
        "motion": motion,
        "strategy": "best-of-n",
        "debate_id": f"d{i:03d}",
        "turn_index": 1,
        "meta": "{}",
    }


def write_dataset(
    out: Path,
    *,
    base: BaseModel,
    persona: str = "advocate",
    train_motions: tuple[str, ...] = ("Cities should ban cars", "Homework should be abolished"),
    test_motions: tuple[str, ...] = ("Zoos should close",),
    per_motion: int = 2,
    fmt: str = "conversational",
    base_hash: str | None = None,
    max_length: int = 256,
) -> Path:
    """A dataset folder exactly as `bonsai data build` writes it (loadable by training.dataset.load_pairs)."""
    from datasets import Dataset, DatasetDict

    make = chat_row if fmt == "conversational" else alpaca_row
    n = 0
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for name, motions in (("train", train_motions), ("test", test_motions)):
        for motion in motions:
            for _ in range(per_motion):
                splits[name].append(make(motion, n))
                n += 1
    card = DatasetCard(
        persona=persona,
        language="en",
        reasoning="none" if fmt == "conversational" else "alpaca-reasoning",
        format=fmt,  # type: ignore[arg-type]
        base_model=base.name,
        base_hash=base_hash if base_hash is not None else base.content_hash,
        source_store="(test fixture)",
        debate_ids=sorted({r["debate_id"] for rows in splits.values() for r in rows}),
        strategies=[StrategyEntry(name="best-of-n", params={})],
        counts=Counts(kept=n, train=len(splits["train"]), test=len(splits["test"])),
        max_length=max_length,
        min_room=16,
        split=Split(test_fraction=0.3, seed=0, train_motions=list(train_motions), test_motions=list(test_motions)),
        content_hash="",
        created_at=time.time(),
    )
    card.content_hash = content_hash(hashed_settings(card), splits["train"], splits["test"])
    feats = features(fmt)  # type: ignore[arg-type]
    dd = DatasetDict(
        {
            name: Dataset.from_list(rows, features=feats) if rows else Dataset.from_dict({k: [] for k in feats}, features=feats)
            for name, rows in splits.items()
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    dd.save_to_disk(str(out), num_shards={name: 1 for name in SPLITS})
    import pyarrow.parquet as pq

    for name in SPLITS:
        pq.write_table(dd[name].data.table, str(out / f"{name}.parquet"))
    write_card(out, card)
    return out


def tiny_recipe(method: str = "orpo", *, steps: int = 2, lr: float = 5e-4, extra_stage: dict[str, Any] | None = None, **top: Any) -> Recipe:
    """A recipe that trains ``steps`` steps of batch 2 (rank 8 keeps it quick); no test-split evaluation."""
    raw: dict[str, Any] = {
        "name": f"tiny-{method}",
        "lora": {"r": 8, "alpha": 16},
        "init": "base",
        "evaluate": False,
        "stages": [{"method": method, "trainer": {"max_steps": steps, "per_device_train_batch_size": 2, "learning_rate": lr}}],
        **top,
    }
    if extra_stage:
        raw["stages"].append(extra_stage)
    return parse_recipe(raw, where="tiny recipe")


# --- adapters and the CLI -------------------------------------------------------------------------


def small_adapter(folder: Path, *, seed: int, rank: int = 2) -> Path:
    """A PEFT-layout LoRA folder with tiny tensors: enough for the registry, which reads headers and hashes."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        f"base_model.model.model.layers.0.self_attn.q_proj.lora_{ab}.weight": torch.randn(shape, generator=gen)
        for ab, shape in (("A", (rank, 8)), ("B", (8, rank)))
    }
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def register_version(home: Path, persona: str, source: Path, **manifest: Any) -> str:
    """Copy the adapter files in ``source`` into a new registry version (as training does)."""
    import shutil

    from bonsai.registry import new_version

    with new_version(home, persona) as draft:
        for f in source.iterdir():
            if f.is_file() and f.name != "bonsai_adapter.json":
                shutil.copy(f, draft.path / f.name)
        draft.manifest.update(manifest)
    assert draft.version is not None
    return draft.version


def cli(argv: list[str], monkeypatch: Any) -> int:
    """``bonsai ARGV`` through the real entry point (training's commands come from its entry points)."""
    from bonsai.cli import main as cli_main

    return cli_main.main(argv)
